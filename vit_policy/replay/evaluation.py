"""Offline replay of checkpoints on recorded bags: pre-flight checks, both modes per bag, metrics.json, report.

``replay_checkpoints`` loads checkpoint directories and hands them to ``replay_policies``, which runs
each policy on each bag in the configured modes (``modes.py``), scores them (``metrics.py``) and writes
``metrics.json`` and ``report.html`` (``vit_policy.report``). Ground truth are the labels of the
extracted episodes (the recorded command topic or the future EE poses, per ``data.labels``), so both
modes and training share one definition. ``load_replay_config`` recovers the bag's topics from a YAML
or from what training recorded beside the checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vit_policy.config import ConfigError
from vit_policy.data.configuration import DataConfig
from vit_policy.replay.configuration import ReplayConfig
from vit_policy.inputs import TIMING_FIELDS, InputSpec
from vit_policy.replay.metrics import Predictions, chunk_metrics, latency_summary, stream_metrics
from vit_policy.replay.modes import BagResult, RecordedTrack, attention_samples, run_batch, run_faithful

if TYPE_CHECKING:
    from vit_policy.model.policy import Policy

log = logging.getLogger(__name__)


@dataclass
class CheckpointResult:
    """Every bag of one checkpoint, and its metrics per mode."""

    name: str
    path: str
    results: list[BagResult]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def latencies_ms(self) -> np.ndarray:
        lat = [r.latencies_ms for r in self.results if r.latencies_ms.size]
        return np.concatenate(lat) if lat else np.zeros(0)

    def preferred(self, bag: str) -> BagResult:
        """The faithful result of ``bag`` if there is one, else the batch result."""
        hits = [r for r in self.results if r.bag == bag]
        return next((r for r in hits if r.mode == "faithful"), hits[0])


# --------------------------------------------------------------------------------------------------
# Checkpoints and bags: fail early, with the fix
# --------------------------------------------------------------------------------------------------


def check_checkpoints(paths: list[str | Path], model_file: str | None = None) -> None:
    """Every checkpoint directory exists and holds its three files (``model_file``: the backend's instead of
    model.safetensors); one error lists every problem."""
    from vit_policy.model.checkpoint import CONFIG_FILE, STATS_FILE, WEIGHTS_FILE, incomplete

    problems = []
    for p in map(Path, paths):
        if not p.is_dir():
            problems.append(f"checkpoint directory {str(p)!r} does not exist")
            continue
        missing = [n for n in (CONFIG_FILE, model_file or WEIGHTS_FILE, STATS_FILE) if not (p / n).is_file()]
        if missing:
            problems.append(incomplete(p, missing) + " (a checkpoint is the directory written by save_checkpoint / vit-policy train"
                            + (", and vit-policy export for runtime.backend: onnxruntime)" if model_file else ")"))
    if problems:
        raise FileNotFoundError("; ".join(problems))


def check_bag(path: str | Path, data: DataConfig) -> dict[str, str]:
    """The bag exists and records every configured topic with a supported type (the extraction's check).

    Run on every bag before any checkpoint is replayed, so a wrong topic map fails in seconds.
    """
    from vit_policy.data.bags import bag_topics, check_topics

    return check_topics(path, data, bag_topics(path))


# --------------------------------------------------------------------------------------------------
# Several checkpoints on the same bags
# --------------------------------------------------------------------------------------------------


def _mode_metrics(results: list[BagResult], cfg: ReplayConfig, monitor: Any = None) -> dict[str, Any]:
    """Metrics of one checkpoint in one mode over all bags (``monitor``: its OOD monitor, or None)."""
    from vit_policy.ood import replay_metrics

    preds = Predictions.concat([r.predictions for r in results])
    m = chunk_metrics(preds, cfg.tolerance_mm, cfg.tolerance_deg)
    m["ood"] = replay_metrics(monitor, preds.ood_score, cfg.safety.ood_margin)
    seconds = sum(r.seconds for r in results)
    bag_seconds = sum(r.bag_seconds for r in results)
    m["wall_seconds"] = seconds
    m["frames_per_second"] = len(preds) / seconds if seconds > 0 else None
    if bag_seconds > 0 and seconds > 0:
        m["speed_vs_real_time"] = bag_seconds / seconds
    lat = np.concatenate([r.latencies_ms for r in results]) if results else np.zeros(0)
    m["latency_ms"] = latency_summary(lat)
    faithful = [r for r in results if r.commands is not None]
    if faithful:
        lost: dict[str, int] = {}
        for r in results:
            for k, v in r.frames_lost.items():
                lost[k] = lost.get(k, 0) + int(v)
        m["frames_lost"] = lost
        m["executed"] = stream_metrics([(r.commands, r.episodes) for r in faithful], cfg.runtime.control_period_ns)  # type: ignore[misc]
        m["executed"]["latency_used_ms"] = float(np.mean([r.latency_used_ms for r in faithful]))
    return m


def _check_policy(name: str, policy: "Policy", data: DataConfig) -> None:
    """The data config feeds this policy as its demonstrations did (cameras, frame, gripper range; its ObservationSpec)
    and its chunk period is the label period."""
    try:
        InputSpec.from_data(data).check(policy.spec)
        policy.spec.check_period(data.dt_ns, "data.control_rate_hz")  # labels and chunk steps share the period
    except ConfigError as exc:
        raise ConfigError(f"checkpoint {name!r}: {exc}") from None


def replay_settings(bags: list[str | Path], cfg: ReplayConfig) -> dict[str, str]:
    """The settings a replay ran with, as metrics.json and the report list them."""
    latency = cfg.runtime.inference_latency_s
    return {"bags": ", ".join(map(str, bags)), "modes": ", ".join(cfg.modes), "labels": cfg.data.labels,
            "latency (faithful)": "measured" if latency is None else f"{latency * 1e3:g} ms",
            "strategy": cfg.runtime.strategy, "backend": cfg.runtime.backend, "tolerance": f"{cfg.tolerance_mm:g} mm and {cfg.tolerance_deg:g} deg"}


def replay_policies(
    policies: dict[str, "Policy"],
    bags: list[str | Path],
    out_dir: str | Path,
    cfg: ReplayConfig,
    paths: dict[str, str] | None = None,
    report: bool = True,
) -> list[CheckpointResult]:
    """Replay every policy on every bag in the configured modes; write metrics.json and report.html."""
    from vit_policy.data.bags import extract_episodes

    if not policies:
        raise ConfigError("checkpoint: give at least one checkpoint directory")
    if not bags:
        raise ConfigError("bags: give at least one rosbag2 recording")
    for bag in bags:
        check_bag(bag, cfg.data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    episode_cache: dict[tuple, list] = {}
    results = []
    for name, policy in policies.items():
        policy.eval()
        _check_policy(name, policy, cfg.data)
        per_bag = []
        for bag in bags:
            key = (str(bag), policy.cfg.chunk_size, tuple(policy.image_size))
            if key not in episode_cache:
                episode_cache[key] = extract_episodes(bag, cfg.data, policy.cfg.chunk_size, tuple(policy.image_size))
            episodes = episode_cache[key]
            recorded = [RecordedTrack(np.asarray(e.stamps_ns, np.int64), np.asarray(e.position, np.float64)) for e in episodes]
            span = sum((int(e.stamps_ns[-1]) - int(e.stamps_ns[0])) / 1e9 for e in episodes if len(e.stamps_ns))
            attn = attention_samples(policy, episodes, cfg.attention_frames) if report else []
            if "batch" in cfg.modes:
                preds, secs = run_batch(policy, episodes, cfg.batch_size)
                per_bag.append(BagResult(str(bag), "batch", preds, recorded, attention=attn, seconds=secs, bag_seconds=span))
                attn = []
            if "faithful" in cfg.modes:
                res = run_faithful(policy, bag, episodes, cfg)
                res.recorded, res.attention = recorded, attn
                per_bag.append(res)
            log.info("%s on %s: %d frames", name, bag, sum(len(e.stamps_ns) for e in episodes))
        ckpt = CheckpointResult(name, (paths or {}).get(name, name), per_bag)
        for mode in cfg.modes:
            ckpt.metrics[mode] = _mode_metrics([r for r in per_bag if r.mode == mode], cfg, getattr(policy, "ood", None))
        results.append(ckpt)
    settings = replay_settings(bags, cfg)
    doc = {"settings": settings, "checkpoints": {c.name: {"path": c.path, "metrics": c.metrics} for c in results}}
    (out / "metrics.json").write_text(json.dumps(doc, indent=2, default=_json_default))
    if report:
        from vit_policy.report import write_report

        write_report(out, results, settings)
    return results


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# --------------------------------------------------------------------------------------------------
# Settings and checkpoints from disk
# --------------------------------------------------------------------------------------------------


def load_replay_config(path: str | Path | None, checkpoints: list[str | Path], overrides: list[str] | None = None) -> ReplayConfig:
    """The replay settings: ``data`` from a YAML (a train config's ``data:`` or a replay config), or the checkpoint.

    Without ``path``: the ``data`` section recorded with the first checkpoint that has one (its
    ``metadata.json``, or the ``train_config.yaml`` that ``vit-policy train`` writes beside it).
    """
    from vit_policy.config import apply_overrides, from_dict, read_yaml
    from vit_policy.model.checkpoint import run_folder

    raw: dict[str, Any] = {}
    if path is not None:
        doc = read_yaml(path)
        if "data" in doc:  # a train or replay config: keep the sections a replay understands
            raw = {k: v for k, v in doc.items() if k in ReplayConfig.__dataclass_fields__}
        else:
            raw = {"data": doc}
    else:
        for ckpt in map(Path, checkpoints):
            if (wrong := run_folder(ckpt)) is not None:  # named as such, not as a missing data config
                raise FileNotFoundError(wrong)
            meta = ckpt / "metadata.json"
            data = json.loads(meta.read_text()).get("data") if meta.is_file() else None
            train_cfg = ckpt.parent / "train_config.yaml"  # vit-policy train writes it next to last/ and best/
            if not isinstance(data, dict) and train_cfg.is_file():
                data = read_yaml(train_cfg).get("data")
            if isinstance(data, dict):
                raw = {"data": data}
                break
        if not raw:
            raise ConfigError("data: found no data config in the checkpoints' metadata.json or ../train_config.yaml; "
                              "pass --data-config <train or data YAML> naming the bag's camera, pose and gripper topics")
    raw = apply_overrides(raw, overrides)
    # unless runtime.* is set (in the file or by an override), the replayed node samples and synchronises like
    # the extraction (same control grid); after the overrides, so that --set data.sync_tolerance_s=... reaches both
    runtime = raw.setdefault("runtime", {})
    if isinstance(runtime, dict) and isinstance(raw.get("data"), dict):
        for key in ("control_rate_hz", *TIMING_FIELDS):
            if key in raw["data"]:
                runtime.setdefault(key, raw["data"][key])
    try:
        return from_dict(ReplayConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path or 'checkpoint metadata'}: {exc}") from None


def replay_checkpoints(checkpoints: list[str | Path], bags: list[str | Path], out_dir: str | Path, cfg: ReplayConfig) -> list[CheckpointResult]:
    """Check every checkpoint directory and that every bag would extract, then load the checkpoints and replay them.

    The checks come before any checkpoint is loaded, so a missing file or a wrong topic map fails in
    seconds with its fix.
    """
    from vit_policy.data.inspect import check_bags
    from vit_policy.deploy import load_policy

    check_checkpoints(checkpoints, cfg.runtime.onnx_file if cfg.runtime.backend == "onnxruntime" else None)
    check_bags(bags, cfg.data)
    names: dict[str, str] = {}
    for p in map(Path, checkpoints):
        name = p.resolve().name
        while name in names:
            name = f"{p.resolve().parent.name}/{name}"
        names[name] = str(p)
    policies = {n: load_policy(p, cfg.runtime) for n, p in names.items()}
    return replay_policies(policies, bags, out_dir, cfg, paths=names)
