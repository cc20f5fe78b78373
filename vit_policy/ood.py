"""Out-of-distribution monitor: how far each camera's frame lies from the frames the policy was trained on.

Features: the image encoder's final tokens of every forward, pooled per camera into the mean and the
standard deviation over the patch tokens (2 x embed_dim). They are read from the policy's own forward
(a forward hook on ``ImageEncoder.tap``), so scoring adds no encoder pass. The backbone's tokens are
used rather than the policy's read-out (pooled / cls tokens): the read-out is trained to keep only what
the task needs, and drops exactly the changes (an occluder, a lighting change) the monitor must see.

Fit (end of training, or ``vit-policy fit-ood`` on an existing checkpoint): per camera, the mean and a
Ledoit-Wolf shrinkage covariance of the standardised features over the training split; the score of a
frame is its Mahalanobis distance. The threshold is a quantile (default 0.99) of the scores of the
validation split: frames the fit never saw, so the threshold carries the fit's own optimism. Energy
scores need class logits, and this policy regresses actions: it has none.

The statistics live in the checkpoint directory as ``ood.safetensors`` (float64 tensors, metadata with
the method, quantile, frame counts and a fingerprint of the encoder weights they were fitted with). A
checkpoint without the file loads and runs with the monitor off (saved and loaded with the checkpoint by
:mod:`vit_policy.model.checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from vit_policy.config import ConfigError
from vit_policy.model.encoders import WeightsError, weights_error

if TYPE_CHECKING:
    from vit_policy.data.configuration import DataConfig
    from vit_policy.data.bags import Episode
    from vit_policy.model.policy import VisuomotorPolicy

log = logging.getLogger(__name__)

OOD_FILE = "ood.safetensors"
METHOD = "mahalanobis"
DEFAULT_QUANTILE = 0.99
FIT_FIX = "fit them again: vit-policy fit-ood --checkpoint DIR --bags <training bags> (or delete the file: monitor off)"
CORRUPTIONS = ("blacked_out", "occluded", "brighter", "darker", "colour_swapped", "shifted", "noise")


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


def pooled_features(tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Encoder tokens (B, prefix + N, D) -> (B, 2D) float64: mean and std over the N patch tokens."""
    var, mean = torch.var_mean(tokens[:, num_prefix_tokens:].float(), dim=1, unbiased=False)
    return torch.cat([mean, var.sqrt()], dim=1).double()


class FeatureCapture:
    """Pooled features per camera of the policy forwards this thread runs inside ``with capture(policy) as cap``."""

    def __init__(self, policy: "VisuomotorPolicy") -> None:
        self.cameras = list(policy.cfg.cameras)
        self._thread = threading.get_ident()  # a forward of another thread (another capture) is not ours
        self._got: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        for key, enc in policy.encoders.items():
            self._handles.append(enc.tap.register_forward_hook(self._hook(key, enc.num_prefix_tokens)))

    def _hook(self, key: str, prefix: int) -> Any:
        def hook(module: torch.nn.Module, args: Any, out: torch.Tensor) -> None:
            if threading.get_ident() == self._thread:
                self._got[key] = pooled_features(out.detach(), prefix)
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def features(self) -> dict[str, torch.Tensor]:
        """{camera: (B, 2D)} of the last forward; a shared encoder saw the cameras concatenated in cfg order."""
        if "shared" not in self._got:
            missing = [c for c in self.cameras if c not in self._got]
            if missing:
                raise RuntimeError(f"OOD monitor: no encoder output was seen for camera(s) {missing}")
            return {c: self._got[c] for c in self.cameras}
        shared = self._got["shared"]
        if shared.shape[0] % len(self.cameras):
            raise RuntimeError(f"OOD monitor: the shared encoder saw {shared.shape[0]} frames, not a multiple of {len(self.cameras)} cameras")
        return dict(zip(self.cameras, shared.chunk(len(self.cameras))))


@contextlib.contextmanager
def capture(policy: "VisuomotorPolicy") -> Iterator[FeatureCapture]:
    """Record the pooled encoder features of the forwards inside the block (hooks removed after)."""
    cap = FeatureCapture(policy)
    try:
        yield cap
    finally:
        cap.close()


@torch.inference_mode()
def encode_features(policy: "VisuomotorPolicy", images: Mapping[str, np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Pooled features {camera: (N, 2D)} of uint8 frames {camera: (N, H, W, 3)} (all cameras N frames), eval mode."""
    n = {len(v) for v in images.values()}
    if len(n) != 1:
        raise ValueError(f"encode_features: every camera needs the same number of frames, got {({c: len(v) for c, v in images.items()})}")
    total = n.pop()
    was_training = policy.training
    policy.eval()
    parts: dict[str, list[np.ndarray]] = {c: [] for c in policy.cfg.cameras}
    try:
        for s in range(0, total, batch_size):
            batch = {c: torch.from_numpy(np.ascontiguousarray(images[c][s : s + batch_size])) for c in policy.cfg.cameras}
            with capture(policy) as cap:
                policy._encode_images(batch, False)
            for c, f in cap.features().items():
                parts[c].append(f.cpu().numpy())
    finally:
        policy.train(was_training)
    return {c: np.concatenate(v) if v else np.zeros((0, 0)) for c, v in parts.items()}


def episode_images(episodes: Sequence["Episode"], cameras: Sequence[str]) -> dict[str, np.ndarray]:
    """Every frame of the episodes per camera, concatenated (N, H, W, 3)."""
    missing = sorted({c for ep in episodes for c in cameras if c not in ep.images})
    if missing:
        raise ConfigError(f"data.cameras: the policy needs camera(s) {missing}; the episodes have {sorted(episodes[0].images)}")
    return {c: np.concatenate([np.asarray(ep.images[c]) for ep in episodes]) for c in cameras}


def encoder_fingerprint(policy: "VisuomotorPolicy") -> float:
    """Sum of |w| over the encoders' weights (float64): tells whether statistics were fitted with these weights."""
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum().item() for p in policy.encoders.parameters()))


# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrunk covariance (p, p) of centred rows x (n, p) and its shrinkage in [0, 1] (Ledoit & Wolf 2004)."""
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    x2 = x**2
    beta = ((x2.T @ x2).sum() / n - (s**2).sum()) / (p * n)
    delta = ((s - mu * np.eye(p)) ** 2).sum() / p
    shrink = 0.0 if delta <= 0 else float(np.clip(beta / delta, 0.0, 1.0))
    return (1.0 - shrink) * s + shrink * mu * np.eye(p), shrink


@dataclass
class CameraStats:
    """One camera's Gaussian of pooled features and its calibrated threshold."""

    mean: np.ndarray  # (F,)
    precision: np.ndarray  # (F, F): inverse of the shrunk covariance
    threshold: float  # Mahalanobis distance; above it a frame is out of distribution
    shrinkage: float
    val_scores: np.ndarray  # (n_val,) the calibration scores (kept for reports)
    n_train: int

    def score(self, features: np.ndarray) -> np.ndarray:
        d = np.asarray(features, np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ni,ni->n", d @ self.precision, d), 0.0))  # d @ P: one BLAS call


def fit_camera(train: np.ndarray, val: np.ndarray, quantile: float) -> CameraStats:
    """Mean and shrunk covariance of standardised ``train`` features; threshold = ``quantile`` of ``val`` scores."""
    train, val = np.asarray(train, np.float64), np.asarray(val, np.float64)
    if len(train) < 2 or len(val) < 1:
        raise ValueError(f"OOD fit: needs at least 2 training and 1 validation frames, got {len(train)} and {len(val)}")
    mean = train.mean(0)
    sd = np.maximum(train.std(0), 1e-6 * max(float(train.std(0).max()), 1e-12))  # a constant feature must not divide by 0
    cov, shrink = ledoit_wolf((train - mean) / sd)
    precision = np.linalg.pinv(cov, hermitian=True) / sd[:, None] / sd[None, :]
    stats = CameraStats(mean, precision, 0.0, shrink, np.zeros(0), len(train))
    stats.val_scores = stats.score(val)
    stats.threshold = float(np.quantile(stats.val_scores, quantile))
    return stats


class OODMonitor:
    """Per-camera Mahalanobis scores of pooled encoder features against thresholds calibrated on validation frames."""

    def __init__(self, cameras: dict[str, CameraStats], quantile: float, fingerprint: float, info: dict[str, Any] | None = None) -> None:
        self.cameras, self.quantile, self.fingerprint = cameras, quantile, fingerprint
        self.info = dict(info or {})

    @property
    def thresholds(self) -> dict[str, float]:
        return {c: s.threshold for c, s in self.cameras.items()}

    def score(self, features: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
        """{camera: (B, 2D) features} -> {camera: (B,) Mahalanobis distances}."""
        out = {}
        for cam, st in self.cameras.items():
            f = features[cam]
            out[cam] = st.score(f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else f)
        return out

    def describe(self) -> str:
        n_val = {len(s.val_scores) for s in self.cameras.values()}
        return (f"on: {METHOD} distance of pooled encoder features, fitted on {next(iter(self.cameras.values())).n_train} "
                f"training frames, threshold = quantile {self.quantile:g} of {n_val.pop() if len(n_val) == 1 else n_val} validation frames")

    # ---- files ------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        tensors = {}
        for cam, st in self.cameras.items():
            for name in ("mean", "precision", "val_scores"):
                tensors[f"{cam}.{name}"] = torch.from_numpy(np.ascontiguousarray(getattr(st, name), np.float64))
        meta = {"method": METHOD, "quantile": repr(self.quantile), "fingerprint": repr(self.fingerprint),
                "cameras": json.dumps({c: {"threshold": s.threshold, "shrinkage": s.shrinkage, "n_train": s.n_train} for c, s in self.cameras.items()}),
                "info": json.dumps(self.info, default=str)}
        save_file(tensors, str(path), metadata=meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "OODMonitor":
        """Read ``ood.safetensors``; a file that cannot be read raises WeightsError naming it and the fix."""
        from safetensors import safe_open

        src = str(path)
        try:
            with safe_open(src, "pt") as f:
                meta = dict(f.metadata() or {})
                raw = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise weights_error(path, exc, FIT_FIX) from exc
        try:
            if meta.get("method") != METHOD:
                raise ValueError(f"method {meta.get('method')!r}, this version scores {METHOD!r}")
            cams = json.loads(meta["cameras"])
            stats = {c: CameraStats(raw[f"{c}.mean"].numpy(), raw[f"{c}.precision"].numpy(), float(v["threshold"]),
                                    float(v["shrinkage"]), raw[f"{c}.val_scores"].numpy(), int(v["n_train"])) for c, v in cams.items()}
            return cls(stats, float(meta["quantile"]), float(meta["fingerprint"]), json.loads(meta.get("info", "{}")))
        except (KeyError, ValueError, TypeError) as exc:
            raise WeightsError(f"OOD statistics {src!r} are incomplete or of another version ({type(exc).__name__}: {exc}); {FIT_FIX}") from None

    def check(self, policy: "VisuomotorPolicy", src: str) -> None:
        """The statistics belong to this policy: same cameras, feature size and encoder weights."""
        cams = list(policy.cfg.cameras)
        if sorted(self.cameras) != sorted(cams):
            raise WeightsError(f"OOD statistics {src!r} are for cameras {sorted(self.cameras)}, the policy has {cams}; {FIT_FIX}")
        dim = 2 * policy.encoder_for(cams[0]).embed_dim
        if any(s.mean.shape != (dim,) for s in self.cameras.values()):
            raise WeightsError(f"OOD statistics {src!r} hold features of another size than this encoder's {dim}; {FIT_FIX}")
        if not self.fitted_with(policy):
            raise WeightsError(f"OOD statistics {src!r} were fitted with other encoder weights (fingerprint {self.fingerprint:.9g}, "
                               f"these weights {encoder_fingerprint(policy):.9g}); {FIT_FIX}")

    def fitted_with(self, policy: "VisuomotorPolicy") -> bool:
        """Whether the statistics were fitted with ``policy``'s encoder weights (their fingerprint)."""
        return bool(np.isclose(encoder_fingerprint(policy), self.fingerprint, rtol=1e-9, atol=0.0))


def fit_monitor(policy: "VisuomotorPolicy", train: Sequence["Episode"], val: Sequence["Episode"],
                quantile: float = DEFAULT_QUANTILE, batch_size: int = 64) -> OODMonitor:
    """Fit per-camera statistics on the ``train`` episodes' frames and calibrate thresholds on ``val``'s."""
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"ood quantile: {quantile} must be in (0, 1] (e.g. 0.99)")
    if not train or not val:
        raise ValueError(f"OOD fit: needs training and validation episodes (got {len(train)} and {len(val)}); "
                         "give validation bags or a validation fraction > 0")
    cams = list(policy.cfg.cameras)
    ftr = encode_features(policy, episode_images(train, cams), batch_size)
    fva = encode_features(policy, episode_images(val, cams), batch_size)
    stats = {c: fit_camera(ftr[c], fva[c], quantile) for c in cams}
    info = {"train_episodes": [e.source for e in train], "val_episodes": [e.source for e in val]}
    return OODMonitor(stats, quantile, encoder_fingerprint(policy), info)


# --------------------------------------------------------------------------------------------------
# Run time (PolicyRunner): the last score per camera, and the stop of safety.ood_stop
# --------------------------------------------------------------------------------------------------


class OODState:
    """The runner's view of the monitor: the scores of the newest inferred frame, counts, and whether to stop.

    The score comes with each chunk (``ActionChunk.ood``, computed in ``policy.predict`` from the same
    forward), so every frame the policy infers on is scored: every control period with the ``ensemble``
    strategy, every ``execute_steps`` with ``receding``.
    """

    def __init__(self, monitor: OODMonitor | None, safety: Any, cameras: Sequence[str]) -> None:
        if safety.ood_stop and monitor is None:
            raise ConfigError("safety.ood_stop: true, but the checkpoint has no OOD statistics (ood.safetensors); fit them with "
                              "vit-policy fit-ood --checkpoint DIR --bags <training bags>, or set safety.ood_stop: false")
        self.monitor, self.stop, self.margin, self.cameras = monitor, bool(safety.ood_stop), float(safety.ood_margin), list(cameras)
        self.scores: dict[str, float] = {}
        self.frames = 0  # frames scored
        self.frames_out: dict[str, int] = {c: 0 for c in self.cameras}
        self.reason = ""  # non-empty while the newest scored frame is out of distribution

    @property
    def thresholds(self) -> dict[str, float]:
        return {c: t * self.margin for c, t in self.monitor.thresholds.items()} if self.monitor is not None else {}

    @property
    def stopping(self) -> bool:
        return self.stop and bool(self.reason)

    def update(self, chunk: Any) -> bool:
        """Take the scores of a new chunk; True when ``safety.ood_stop`` must drop it (a camera out of distribution)."""
        scores = getattr(chunk, "ood", None)
        if self.monitor is None or not scores:
            return False
        thr = self.thresholds
        self.scores = {c: float(scores[c]) for c in self.cameras}
        self.frames += 1
        out = [c for c in self.cameras if not self.scores[c] <= thr[c]]  # NaN counts as out
        for c in out:
            self.frames_out[c] += 1
        self.reason = "; ".join(f"camera {c!r} out of distribution: OOD score {self.scores[c]:.1f} > threshold {thr[c]:.1f}"
                                for c in out)
        if self.reason and self.stop:
            self.reason += " (safety.ood_stop)"
        return self.stopping

    def clear(self) -> None:
        self.reason, self.scores = "", {}

    def diagnostics(self) -> dict[str, Any]:
        if self.monitor is None:
            return {"monitor": "off: the checkpoint has no OOD statistics (vit-policy fit-ood fits them)", "stop": False}
        thr = self.thresholds
        return {"monitor": self.monitor.describe(), "stop": self.stop, "out": self.reason, "frames_scored": self.frames,
                "cameras": {c: {"score": self.scores.get(c), "threshold": thr[c], "frames_out": self.frames_out[c]} for c in self.cameras}}


# --------------------------------------------------------------------------------------------------
# Corrupted frames: what the monitor must flag (the self-check of fit-ood, the tests and the benchmark)
# --------------------------------------------------------------------------------------------------


def corrupt(images: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Corrupted copies of uint8 frames (N, H, W, 3): a lens cap, an occluder, lighting or colour changes, a
    camera knocked aside, noise. ``kind`` is one of CORRUPTIONS."""
    x = np.asarray(images)
    n, h, w, _ = x.shape
    if kind == "blacked_out":  # near-black with sensor offset
        return np.broadcast_to(rng.integers(0, 12, (n, 1, 1, 1)), x.shape).astype(np.uint8)
    if kind == "occluded":  # an object of one colour over 36% of the frame (a hand, a cable, a lens smudge)
        out = x.copy()
        sh, sw = int(0.6 * h), int(0.6 * w)
        for i in range(n):
            y0, x0 = rng.integers(0, h - sh + 1), rng.integers(0, w - sw + 1)
            out[i, y0 : y0 + sh, x0 : x0 + sw] = rng.integers(0, 256, 3)
        return out
    if kind == "brighter":
        return np.clip(x.astype(np.float32) * 2.2 + 30, 0, 255).astype(np.uint8)
    if kind == "darker":
        return (x.astype(np.float32) * 0.35).astype(np.uint8)
    if kind == "colour_swapped":  # RGB read as BGR
        return np.ascontiguousarray(x[..., ::-1])
    if kind == "shifted":  # the view moved by a third of the frame (wrapped around)
        return np.roll(x, (h // 3, w // 3), axis=(1, 2))
    if kind == "noise":
        return rng.integers(0, 256, x.shape, dtype=np.uint8)
    raise ValueError(f"corruption {kind!r} is not one of {list(CORRUPTIONS)}")


def detection_rates(policy: "VisuomotorPolicy", monitor: OODMonitor, images: Mapping[str, np.ndarray], seed: int = 0,
                    batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Fraction of frames above the threshold per case and camera: 'in_distribution' (the frames as they are),
    each corruption, and 'foreign' (another camera's frames, with two or more cameras)."""
    rng = np.random.default_rng(seed)
    cams = list(policy.cfg.cameras)
    cases: dict[str, dict[str, np.ndarray]] = {"in_distribution": dict(images)}
    for kind in CORRUPTIONS:
        cases[kind] = {c: corrupt(images[c], kind, rng) for c in cams}
    if len(cams) > 1:
        cases["foreign"] = {c: images[cams[(i + 1) % len(cams)]] for i, c in enumerate(cams)}
    out = {}
    for case, imgs in cases.items():
        scores = monitor.score(encode_features(policy, imgs, batch_size))
        out[case] = {c: float((scores[c] > monitor.cameras[c].threshold).mean()) for c in cams}
    return out


def format_rates(rates: dict[str, dict[str, float]]) -> str:
    """A table: one row per case, one column per camera, percent of frames above the threshold."""
    cams = list(next(iter(rates.values())))
    lines = [f"{'frames above threshold (%)':<28}" + "".join(f"{c:>12}" for c in cams)]
    lines += [f"{case:<28}" + "".join(f"{100 * r[c]:>12.1f}" for c in cams) for case, r in rates.items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def fit_checkpoint(directory: str | Path, train: Sequence["Episode"], val: Sequence["Episode"],
                   quantile: float = DEFAULT_QUANTILE, batch_size: int = 64) -> tuple[OODMonitor, "VisuomotorPolicy"]:
    """Fit the monitor of a checkpoint directory with its own weights and write ``ood.safetensors`` into it."""
    from vit_policy.model.checkpoint import load_checkpoint

    policy = load_checkpoint(directory, map_location="cpu", ood=False)
    monitor = fit_monitor(policy, train, val, quantile, batch_size)
    monitor.save(Path(directory) / OOD_FILE)
    policy.ood = monitor
    return monitor, policy


def replay_metrics(monitor: OODMonitor | None, scores: np.ndarray, margin: float = 1.0) -> dict[str, Any]:
    """OOD metrics of replayed frames: per camera the score summary, threshold and fraction above; any camera above."""
    if monitor is None:
        return {"monitor": "off: the checkpoint has no OOD statistics (vit-policy fit-ood)"}
    cams = list(monitor.cameras)
    scores = np.asarray(scores, np.float64).reshape(-1, len(cams))
    thr = np.array([monitor.cameras[c].threshold * margin for c in cams])
    above = scores > thr
    per = {}
    for i, c in enumerate(cams):
        s = scores[:, i]
        per[c] = {"threshold": float(thr[i]), "p50": float(np.percentile(s, 50)) if s.size else None,
                  "p99": float(np.percentile(s, 99)) if s.size else None, "max": float(s.max()) if s.size else None,
                  "fraction_out": float(above[:, i].mean()) if s.size else None}
    ratio = [per[c]["p99"] / per[c]["threshold"] for c in cams if per[c]["p99"] is not None and per[c]["threshold"] > 0]
    return {"monitor": monitor.describe(), "cameras": per, "fraction_out": float(above.any(1).mean()) if len(scores) else None,
            "p99_over_threshold": max(ratio) if ratio else None}


@dataclass
class RefitReport:
    """One checkpoint's refitted monitor, and its self-check on the validation frames (``detection_rates``)."""

    checkpoint: str
    replaced: bool  # an ood.safetensors was there before
    monitor: OODMonitor
    rates: dict[str, dict[str, float]]

    def format(self) -> str:
        """What was written, each camera's threshold and the self-check table."""
        lines = [f"{self.checkpoint}: wrote {OOD_FILE}{' (replaced)' if self.replaced else ''}: {self.monitor.describe()}"]
        lines += [f"  {cam}: threshold {st.threshold:.2f} (validation p50 {np.percentile(st.val_scores, 50):.2f}), shrinkage {st.shrinkage:.3f}"
                  for cam, st in self.monitor.cameras.items()]
        lines += ["self-check on the validation frames, as they are and corrupted:", format_rates(self.rates)]
        return "\n".join(lines)


def refit_checkpoints(
    checkpoints: Sequence[str | Path],
    bags: Sequence[str],
    val_bags: Sequence[str] = (),
    val_fraction: float = 0.2,
    quantile: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    data_config: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> Iterator[RefitReport]:
    """Fit (or refit) the OOD statistics of existing checkpoints on bags (``vit-policy fit-ood``).

    ``bags`` and ``val_bags`` may be globs. Without ``val_bags`` a ``val_fraction`` of the episodes
    (split by ``seed``) sets the threshold, the ``quantile`` (default DEFAULT_QUANTILE) of their
    scores. The arguments, checkpoints and bags are checked before this returns; each checkpoint is
    fitted, and its ``ood.safetensors`` written, as the returned iterator reaches it.
    """
    from vit_policy.data.inspect import check_bags
    from vit_policy.replay import check_checkpoints, load_replay_config
    from vit_policy.train import expand_bags

    quantile = DEFAULT_QUANTILE if quantile is None else quantile
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"--quantile: {quantile} must be in (0, 1] (e.g. 0.99)")
    if not val_bags and not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"--val-fraction: {val_fraction} must be in (0, 1), or give --val-bags")
    check_checkpoints(list(checkpoints))
    data = load_replay_config(data_config, list(checkpoints), list(overrides)).data
    paths, val_paths = expand_bags(list(bags)), expand_bags(list(val_bags), "--val-bags")
    check_bags(paths + val_paths, data)
    return (_refit(ckpt, paths, val_paths, data, val_fraction, quantile, seed, batch_size) for ckpt in checkpoints)


def _refit(ckpt: str | Path, bags: Sequence[Path], val_bags: Sequence[Path], data: "DataConfig", val_fraction: float,
           quantile: float, seed: int, batch_size: int) -> RefitReport:
    """One checkpoint of ``refit_checkpoints``: extract at its chunk size and image size, split, fit, self-check."""
    from vit_policy.data.bags import extract_episodes
    from vit_policy.data.dataset import split_episodes
    from vit_policy.model.checkpoint import load_checkpoint

    policy = load_checkpoint(ckpt, ood=False)
    size, k = tuple(policy.image_size), policy.cfg.chunk_size
    eps = [e for b in bags for e in extract_episodes(b, data, k, size)]
    val = [e for b in val_bags for e in extract_episodes(b, data, k, size)]
    train = eps
    if not val_bags:
        if len(eps) < 2:
            raise ConfigError(f"--bags: {len(eps)} episode(s); splitting off validation frames needs 2 or more, or give --val-bags")
        train, val = split_episodes(eps, val_fraction, seed)
    replaced = (Path(ckpt) / OOD_FILE).is_file()
    monitor, policy = fit_checkpoint(ckpt, train, val, quantile, batch_size)
    rates = detection_rates(policy, monitor, episode_images(val, list(policy.cfg.cameras)), batch_size=batch_size)
    return RefitReport(str(ckpt), replaced, monitor, rates)
