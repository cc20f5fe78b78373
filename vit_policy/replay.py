"""Offline replay evaluation of checkpoints on recorded rosbag2 bags: metrics, ``metrics.json``, report.

Two modes, one set of metrics:

* **faithful**: the bag's messages are fed in bag-time order through the same decoding
  (``vit_policy.messages``) and the same ``PolicyRunner`` as the live node, on a simulated clock that
  ticks at the control rate in bag time. Inference runs inline (``runtime.synchronous``) and a chunk
  becomes available ``latency`` after its observation (the configured value, or the measured one).
  The commands the node would have published are recorded: tracking error, jerk across chunk seams,
  latency and ticks lost to synchronisation or staleness come from them.
* **batch**: the synchronised frames of ``data.bags.extract_episodes`` (the training path) go through
  ``policy.predict`` in batches, for throughput.

Ground truth are the labels of the extracted episodes (the recorded command topic or the future EE
poses, per ``data.labels``), so both modes and training share one definition. A chunk is scored
against the labels of the frame with the same observation stamp.
"""

from __future__ import annotations

import bisect
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from vit_policy import messages as M
from vit_policy.config import ConfigError, DataConfig, ReplayConfig
from vit_policy.geometry import apply_delta, geodesic_deg, rot6d_to_rotvec
from vit_policy.inputs import TIMING_FIELDS, InputSpec
from vit_policy.observation import ActionChunk

if TYPE_CHECKING:
    from vit_policy.data.bags import Episode
    from vit_policy.model.policy import Policy

log = logging.getLogger(__name__)

MODES = ("faithful", "batch")


# --------------------------------------------------------------------------------------------------
# Result containers
# --------------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Predicted and recorded chunks of N frames, as deltas to the observed pose (ARCHITECTURE.md)."""

    stamps_ns: np.ndarray  # (N,) observation stamps
    dt_ns: int
    origin_position: np.ndarray  # (N, 3)
    origin_quaternion: np.ndarray  # (N, 4)
    origin_gripper: np.ndarray  # (N,)
    pred_dp: np.ndarray  # (N, K, 3) metres, base frame
    pred_dr: np.ndarray  # (N, K, 3) rotation vectors, applied on the left
    pred_gripper: np.ndarray  # (N, K)
    true_dp: np.ndarray
    true_dr: np.ndarray
    true_gripper: np.ndarray
    mask: np.ndarray  # (N, K) bool, False past the episode end
    ood_score: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (N, cameras) OOD scores; (N, 0) without a monitor

    def __len__(self) -> int:
        return int(self.stamps_ns.shape[0])

    @classmethod
    def from_chunks(cls, chunks: list[ActionChunk], episode: "Episode", index: np.ndarray) -> "Predictions":
        """Chunks predicted for frames ``index`` of ``episode``, next to that episode's labels."""
        index = np.asarray(index, np.int64)
        k = episode.action.shape[1]
        if chunks and len(chunks[0]) != k:
            raise ConfigError(f"chunk_size: the policy predicts {len(chunks[0])} steps but the labels have {k}; "
                              "extract the bags with the policy's chunk_size")
        action = episode.action[index]
        empty = np.zeros((0, k, 3))
        return cls(
            stamps_ns=np.asarray(episode.stamps_ns, np.int64)[index],
            dt_ns=chunks[0].dt_ns if chunks else 0,
            origin_position=np.asarray(episode.position, np.float64)[index],
            origin_quaternion=np.asarray(episode.quaternion, np.float64)[index],
            origin_gripper=np.asarray(episode.gripper, np.float64)[index],
            pred_dp=np.stack([c.delta_position for c in chunks]) if chunks else empty,
            pred_dr=np.stack([c.delta_rotation for c in chunks]) if chunks else empty,
            pred_gripper=np.stack([c.gripper for c in chunks]) if chunks else np.zeros((0, k)),
            true_dp=action[..., :3].astype(np.float64),
            true_dr=rot6d_to_rotvec(action[..., 3:9]) if len(index) else empty,
            true_gripper=action[..., 9].astype(np.float64),
            mask=np.asarray(episode.action_mask, bool)[index],
            ood_score=np.array([list(c.ood.values()) for c in chunks], np.float64).reshape(len(index), -1)
            if chunks and chunks[0].ood else np.zeros((len(index), 0)),
        )

    @classmethod
    def concat(cls, parts: list["Predictions"]) -> "Predictions":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no frame could be evaluated: every bag gave zero synchronised frames")
        names = [f for f in cls.__dataclass_fields__ if f != "dt_ns"]
        return cls(dt_ns=parts[0].dt_ns, **{n: np.concatenate([getattr(p, n) for p in parts]) for n in names})


@dataclass
class CommandStream:
    """What the node would have published at each control tick of a faithful replay."""

    stamps_ns: np.ndarray  # (M,) tick times
    target_position: np.ndarray  # (M, 3)
    target_quaternion: np.ndarray  # (M, 4)
    gripper: np.ndarray  # (M,)
    is_stop: np.ndarray  # (M,) bool
    chunk_id: np.ndarray  # (M,) how many chunks had been released by this tick (a change = a seam)
    status: list[str]
    reason: list[str]

    @classmethod
    def from_commands(cls, commands: list[Any], chunk_id: list[int]) -> "CommandStream":
        m = len(commands)
        return cls(
            stamps_ns=np.array([c.stamp_ns for c in commands], np.int64),
            target_position=np.array([c.target_position if c.has_target else [np.nan] * 3 for c in commands], np.float64).reshape(m, 3),
            target_quaternion=np.array([c.target_quaternion if c.has_target else [np.nan] * 4 for c in commands], np.float64).reshape(m, 4),
            gripper=np.array([np.nan if c.gripper is None else c.gripper for c in commands], np.float64),
            is_stop=np.array([bool(c.is_stop) for c in commands], bool),
            chunk_id=np.asarray(chunk_id, np.int64),
            status=[str(c.status) for c in commands],
            reason=[str(c.reason) for c in commands],
        )


@dataclass
class RecordedTrack:
    """One extracted episode's EE positions over time, for the plots."""

    stamps_ns: np.ndarray
    position: np.ndarray


@dataclass
class BagResult:
    """One checkpoint on one bag in one mode."""

    bag: str
    mode: str
    predictions: Predictions
    recorded: list[RecordedTrack]
    commands: CommandStream | None = None
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    frames_lost: dict[str, int] = field(default_factory=dict)
    attention: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the replay
    bag_seconds: float = 0.0  # bag time covered
    episodes: list["Episode"] = field(default_factory=list, repr=False)  # the labels (faithful: for the stream)
    latency_used_ms: float | None = None  # faithful: the delay each chunk was released after

    @property
    def t0_ns(self) -> int:
        starts = [int(r.stamps_ns[0]) for r in self.recorded if len(r.stamps_ns)]
        return min(starts) if starts else 0


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
# Metrics on arrays
# --------------------------------------------------------------------------------------------------


def _quat_from_rotvec(dr: np.ndarray) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(dr, np.float64).reshape(-1, 3)).as_quat().reshape(*np.shape(dr)[:-1], 4)


def _summary(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)), "p95": float(np.percentile(x, 95)), "max": float(x.max())}


def chunk_metrics(pred: Predictions, tolerance_mm: float, tolerance_deg: float) -> dict[str, Any]:
    """Errors of predicted chunks against the labels, over the valid (unpadded) steps.

    Translation per axis (MAE, RMSE in mm), rotation geodesic angle (deg), gripper accuracy over all
    steps and over open/close events (steps whose recorded target differs from the gripper state at
    observation time: the policy has to predict the change), error per horizon step, and the fraction
    of steps within both tolerances.
    """
    m = np.asarray(pred.mask, bool)
    if not m.any():
        raise ValueError("no labelled step to score: every chunk step is padding (episodes shorter than one step?)")
    err = (pred.pred_dp - pred.true_dp) * 1e3  # (N, K, 3) mm
    dist = np.linalg.norm(err, axis=-1)
    rot = geodesic_deg(_quat_from_rotvec(pred.pred_dr), _quat_from_rotvec(pred.true_dr))
    true_closed = pred.true_gripper < 0.5
    pred_closed = pred.pred_gripper < 0.5
    state_closed = (pred.origin_gripper < 0.5)[:, None]
    events = m & (true_closed != state_closed)
    n_valid = m.sum(0)
    with np.errstate(invalid="ignore"):
        horizon_t = np.where(n_valid > 0, (dist * m).sum(0) / np.maximum(n_valid, 1), np.nan)
        horizon_r = np.where(n_valid > 0, (rot * m).sum(0) / np.maximum(n_valid, 1), np.nan)
    ev = int(events.sum())
    return {
        "frames": int(len(pred)),
        "steps": int(m.sum()),
        "translation_mae_mm": {a: float(np.abs(err[..., i][m]).mean()) for i, a in enumerate("xyz")},
        "translation_rmse_mm": {a: float(np.sqrt((err[..., i][m] ** 2).mean())) for i, a in enumerate("xyz")},
        "translation_error_mm": _summary(dist[m]),
        "rotation_error_deg": _summary(rot[m]),
        "gripper_accuracy": float((true_closed == pred_closed)[m].mean()),
        "gripper_event_accuracy": float((true_closed == pred_closed)[events].mean()) if ev else None,
        "gripper_events": ev,
        "within_tolerance": float(((dist <= tolerance_mm) & (rot <= tolerance_deg))[m].mean()),
        "tolerance": {"mm": tolerance_mm, "deg": tolerance_deg},
        "horizon": {"translation_mm": horizon_t.tolist(), "rotation_deg": horizon_r.tolist()},
    }


def jerk(positions: np.ndarray, dt_s: float) -> np.ndarray:
    """Norm of the third finite difference of a position stream sampled every ``dt_s``: (M,) -> (M - 3,) m/s^3."""
    p = np.asarray(positions, np.float64)
    if len(p) < 4:
        return np.zeros(0)
    d3 = p[3:] - 3 * p[2:-1] + 3 * p[1:-2] - p[:-3]
    return np.linalg.norm(d3, axis=-1) / dt_s**3


def _rms(x: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean(np.square(x)))) if np.size(x) else None


def recorded_target_at(episodes: list["Episode"], times_ns: np.ndarray, dt_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recorded target pose at arbitrary times: (positions, quaternions, valid).

    The label of frame t, step 1 is the recorded target for ``stamp_t + dt`` (the definition chunks are
    scored against); between two consecutive labelled frames of an episode the target is interpolated
    (linear / slerp). Times outside every episode, or next to a padded step, are not valid.
    """
    from scipy.spatial.transform import Slerp

    times_ns = np.asarray(times_ns, np.int64)
    pos, quat = np.zeros((len(times_ns), 3)), np.tile([0.0, 0.0, 0.0, 1.0], (len(times_ns), 1))
    valid = np.zeros(len(times_ns), bool)
    for ep in episodes:
        if len(ep.stamps_ns) < 2:
            continue
        a = ep.action[:, 0]
        p, q = apply_delta(ep.position, ep.quaternion, a[:, :3], rot6d_to_rotvec(a[:, 3:9]))
        t = np.asarray(ep.stamps_ns, np.int64) + dt_ns  # step 1 of each frame's label
        ok = np.asarray(ep.action_mask, bool)[:, 0]
        inside = (times_ns >= t[0]) & (times_ns <= t[-1]) & ~valid
        if not inside.any():
            continue
        q_times = times_ns[inside]
        j = np.clip(np.searchsorted(t, q_times, side="left"), 1, len(t) - 1)
        good = ok[j] & ok[j - 1] & (t[j] - t[j - 1] <= max(2 * _frame_spacing(ep), dt_ns))
        frac = (q_times - t[j - 1]) / np.maximum(t[j] - t[j - 1], 1)
        pos[inside] = p[j - 1] + frac[:, None] * (p[j] - p[j - 1])
        quat[inside] = Slerp(t.astype(np.float64), Rotation.from_quat(q))(q_times.astype(np.float64)).as_quat()
        valid[np.flatnonzero(inside)[good]] = True
    return pos, quat, valid


def _frame_spacing(ep: "Episode") -> int:
    s = np.asarray(ep.stamps_ns, np.int64)
    return int(np.median(np.diff(s))) if len(s) > 1 else 0


def stream_metrics(streams: list[tuple[CommandStream, list["Episode"]]], period_ns: int) -> dict[str, Any]:
    """Executed command streams (one per bag, with its episodes): error against the recorded target, and jerk.

    The command of the tick at ``now`` is the target for ``now + period`` (PolicyRunner), so it is
    compared with the recorded target at that time. A seam is a tick at which a newly released chunk
    takes over; jerk windows (4 consecutive ticks) that contain a seam count as seam jerk, and the
    recording's own jerk on the same ticks is the reference for what smooth looks like.
    """
    dt_s = period_ns / 1e9
    err, rot, run_j, seam_j, within_j, rec_j = [], [], [], [], [], []
    ticks = seams = 0
    for commands, episodes in streams:
        active = ~commands.is_stop
        ticks += int(active.sum())
        tpos, tquat, tvalid = recorded_target_at(episodes, commands.stamps_ns + period_ns, period_ns)
        hit = active & tvalid
        err.append(np.linalg.norm(commands.target_position[hit] - tpos[hit], axis=-1) * 1e3)
        rot.append(geodesic_deg(commands.target_quaternion[hit], tquat[hit]))
        seam = np.zeros(len(active), bool)
        seam[1:] = (commands.chunk_id[1:] != commands.chunk_id[:-1]) & active[1:] & active[:-1]
        seams += int(seam.sum())
        for run in _runs(active, commands.stamps_ns, period_ns):
            j = jerk(commands.target_position[run], dt_s)
            at_seam = np.array([seam[run][i + 1 : i + 4].any() for i in range(len(j))], bool)
            run_j.append(j)
            seam_j.append(j[at_seam])
            within_j.append(j[~at_seam])
        for run in _runs(hit, commands.stamps_ns, period_ns):  # the recording on the ticks it was commanding
            rec_j.append(jerk(tpos[run], dt_s))
    cat = (lambda xs: np.concatenate(xs) if xs else np.zeros(0))
    out: dict[str, Any] = {"ticks_commanding": ticks, "ticks_scored": int(cat(err).size), "seams": seams}
    if cat(err).size:
        out["translation_error_mm"] = _summary(cat(err))
        out["rotation_error_deg"] = _summary(cat(rot))
    out.update({
        "jerk_rms": _rms(cat(run_j)),
        "jerk_rms_seams": _rms(cat(seam_j)),
        "jerk_rms_within": _rms(cat(within_j)),
        "jerk_max": float(cat(run_j).max()) if cat(run_j).size else None,
        "jerk_rms_recorded": _rms(cat(rec_j)),
    })
    return out


def _runs(flags: np.ndarray, stamps_ns: np.ndarray, period_ns: int) -> list[np.ndarray]:
    """Index arrays of maximal runs of consecutive ticks (one period apart) where ``flags`` holds."""
    runs, cur = [], []
    for i, f in enumerate(flags):
        if f and cur and stamps_ns[i] - stamps_ns[cur[-1]] == period_ns:
            cur.append(i)
            continue
        if len(cur) >= 4:
            runs.append(np.array(cur))
        cur = [i] if f else []
    if len(cur) >= 4:
        runs.append(np.array(cur))
    return runs


def latency_summary(ms: np.ndarray) -> dict[str, float] | None:
    ms = np.asarray(ms, np.float64)
    if ms.size == 0:
        return None
    return {"n": int(ms.size), "mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)),
            "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)), "max": float(ms.max())}


# --------------------------------------------------------------------------------------------------
# Checkpoints and bags: fail early, with the fix
# --------------------------------------------------------------------------------------------------


def check_checkpoints(paths: list[str | Path], model_file: str | None = None) -> None:
    """Every checkpoint directory exists and holds its three files (``model_file``: the backend's instead of
    model.safetensors); one error lists every problem."""
    from vit_policy.model.checkpoint import CONFIG_FILE, STATS_FILE, WEIGHTS_FILE

    problems = []
    for p in map(Path, paths):
        if not p.is_dir():
            problems.append(f"checkpoint directory {str(p)!r} does not exist")
            continue
        missing = [n for n in (CONFIG_FILE, model_file or WEIGHTS_FILE, STATS_FILE) if not (p / n).is_file()]
        if missing:
            problems.append(f"checkpoint {str(p)!r} is incomplete: {', '.join(missing)} missing "
                            "(a checkpoint is the directory written by save_checkpoint / vit-policy train"
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
# Batch mode
# --------------------------------------------------------------------------------------------------


def episode_batch(policy: "Policy", ep: "Episode", index: np.ndarray) -> dict[str, Any]:
    """Frames ``index`` of an episode in the model's batch format."""
    cams = policy.cfg.cameras
    missing = [c for c in cams if c not in ep.images]
    if missing:
        raise ConfigError(f"data.cameras: the policy needs camera(s) {missing}; the data config extracts {sorted(ep.images)}")
    batch: dict[str, Any] = {
        "images": {c: torch.from_numpy(np.ascontiguousarray(ep.images[c][index])) for c in cams},
        "position": torch.as_tensor(ep.position[index], dtype=torch.float32),
        "quaternion": torch.as_tensor(ep.quaternion[index], dtype=torch.float32),
        "gripper": torch.as_tensor(ep.gripper[index], dtype=torch.float32),
        "stamp_ns": torch.as_tensor(np.asarray(ep.stamps_ns)[index], dtype=torch.int64),
    }
    if policy.cfg.pose.history:  # the training dataset's history: the previous H samples, oldest first
        from vit_policy.data.dataset import episode_history

        hist = np.stack([episode_history(ep, int(t), policy.cfg.pose.history) for t in index])
        batch["history"] = torch.as_tensor(hist, dtype=torch.float32)
    return batch


def run_batch(policy: "Policy", episodes: list["Episode"], batch_size: int) -> tuple[Predictions, float]:
    """Batched ``policy.predict`` over every synchronised frame; returns predictions and wall seconds."""
    parts = []
    t0 = time.perf_counter()
    for ep in episodes:
        n = len(ep.stamps_ns)
        chunks: list[ActionChunk] = []
        for s in range(0, n, batch_size):
            chunks += policy.predict(episode_batch(policy, ep, np.arange(s, min(n, s + batch_size))))  # type: ignore[operator]
        parts.append(Predictions.from_chunks(chunks, ep, np.arange(n)))
    return Predictions.concat(parts), time.perf_counter() - t0


def attention_samples(policy: "Policy", episodes: list["Episode"], n: int) -> list[dict[str, Any]]:
    """Attention of the action queries on ``n`` frames spread evenly over the episodes."""
    frames = [(e, i) for e, ep in enumerate(episodes) for i in range(len(ep.stamps_ns))]
    if n <= 0 or not frames:
        return []
    t0 = min(int(ep.stamps_ns[0]) for ep in episodes if len(ep.stamps_ns))
    out = []
    for j in np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int):
        e, i = frames[j]
        ep = episodes[e]
        chunk = policy.predict(episode_batch(policy, ep, np.array([i])), return_attention=True)[0]  # type: ignore[index]
        out.append({"bag": ep.source, "time_s": (int(ep.stamps_ns[i]) - t0) / 1e9, "images": {c: ep.images[c][i] for c in policy.cfg.cameras},
                    "attention": dict(chunk.attention or {})})
    return out


# --------------------------------------------------------------------------------------------------
# Faithful mode: the bag through the node's decoding and PolicyRunner on a simulated clock
# --------------------------------------------------------------------------------------------------


class _RecordingPolicy:
    """What the runner sees as its policy: forwards ``predict`` and records each chunk with its inference time.

    ``latency_ms`` is the wall time of each call (this machine's inference latency).
    """

    def __init__(self, policy: "Policy", clock: list[int]) -> None:
        self.policy, self.cfg, self._clock = policy, policy.cfg, clock
        self.ood = getattr(policy, "ood", None)  # the runner scores (and with safety.ood_stop, stops) like the node's
        self.chunks: list[tuple[int, ActionChunk]] = []  # (simulated time of the inference, chunk)
        self.latency_ms: list[float] = []

    def predict(self, obs: Any, return_attention: bool = False) -> Any:
        t0 = time.perf_counter()
        chunk = self.policy.predict(obs, return_attention=return_attention)
        self.latency_ms.append((time.perf_counter() - t0) * 1e3)
        self.chunks.append((self._clock[0], chunk))  # type: ignore[arg-type]
        return chunk


def measure_latency(policy: "Policy", episodes: list["Episode"], repeats: int = 5) -> float:
    """Median wall time (s) of one single-observation ``predict`` on this machine, after a warm-up."""
    ep = next(e for e in episodes if len(e.stamps_ns))
    batch = episode_batch(policy, ep, np.array([0]))
    policy.predict(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        policy.predict(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_faithful(policy: "Policy", bag: str | Path, episodes: list["Episode"], cfg: ReplayConfig) -> BagResult:
    """Replay one bag through PolicyRunner on bag time; score its chunks and its command stream.

    The clock ticks every control period from the bag's first message (the extraction's grid); a tick
    sees the messages that arrived up to its time. Inference runs inline; its chunk is released
    ``latency`` later (runtime.inference_latency_s, or the latency measured here when null).
    """
    import dataclasses

    from vit_policy.data.bags import iter_bag_messages, with_control_ticks
    from vit_policy.runtime import PolicyRunner

    latency_s = cfg.runtime.inference_latency_s
    if latency_s is None:
        latency_s = measure_latency(policy, episodes)
    runtime = dataclasses.replace(cfg.runtime, synchronous=True, inference_latency_s=latency_s)
    period = runtime.control_period_ns
    clock = [0]
    recorder = _RecordingPolicy(policy, clock)
    runner = PolicyRunner(recorder, runtime, cfg.safety, clock=lambda: clock[0], inputs=InputSpec.from_data(cfg.data))
    runner.set_enabled(True)
    assert runner.router is not None
    # the node's inputs, plus the command topics: the extraction reads them too, so the clock starts alike
    topics = runner.router.topics | {t for t in (cfg.data.command_topic, cfg.data.command_gripper_topic) if t}
    commands, chunk_ids = [], []
    release: list[int] = []  # simulated time each chunk becomes available
    first: int | None = None
    last = 0
    delay = int(round(latency_s * 1e9))

    def tick(now: int) -> None:
        clock[0] = now
        n = len(recorder.chunks)
        commands.append(runner.tick(now))
        release.extend(now + delay for _ in range(len(recorder.chunks) - n))
        chunk_ids.append(bisect.bisect_right(release, now))  # chunks released by now (release times increase)

    t_wall = time.perf_counter()
    for t_bag, item in with_control_ticks(iter_bag_messages(bag, topics), period):
        if item is None:
            tick(t_bag)
            continue
        first = t_bag if first is None else first
        clock[0] = last = t_bag
        if item[0] in runner.router.topics:
            runner.on_message(item[0], item[1], arrival_ns=t_bag)
    seconds = time.perf_counter() - t_wall

    stream = CommandStream.from_commands(commands, chunk_ids)
    preds, unmatched = _match_chunks([c for _, c in recorder.chunks], episodes)
    lost = {"ticks": len(commands), "commanding": int((~stream.is_stop).sum()),
            "waiting": stream.status.count("waiting"), "stale": stream.status.count("stale"),
            "fault": stream.status.count("fault"), "ood": stream.status.count("ood"), "rejected_inputs": int(sum(runner.rejected.values())),
            "inferences": len(recorder.chunks), "unmatched_chunks": unmatched}
    result = BagResult(str(bag), "faithful", preds, [], commands=stream, latencies_ms=np.asarray(recorder.latency_ms),
                       frames_lost=lost, seconds=seconds, bag_seconds=(last - (first or last)) / 1e9)
    result.episodes, result.latency_used_ms = episodes, latency_s * 1e3
    return result


def _match_chunks(chunks: list[ActionChunk], episodes: list["Episode"]) -> tuple[Predictions, int]:
    """Pair each chunk with the extracted frame of the same observation stamp; count those without one."""
    where = {int(s): (e, i) for e, ep in enumerate(episodes) for i, s in enumerate(ep.stamps_ns)}
    by_ep: dict[int, list[tuple[int, ActionChunk]]] = {}
    unmatched = 0
    for c in chunks:
        hit = where.get(int(c.stamp_ns))
        if hit is None:
            unmatched += 1
            continue
        by_ep.setdefault(hit[0], []).append((hit[1], c))
    parts = [Predictions.from_chunks([c for _, c in items], episodes[e], np.array([i for i, _ in items]))
             for e, items in sorted(by_ep.items())]
    if not parts:
        raise ValueError("faithful replay: no chunk matches an extracted frame (is the runtime's sync rule the data config's?)")
    return Predictions.concat(parts), unmatched


# --------------------------------------------------------------------------------------------------
# Evaluation of several checkpoints on the same bags
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
    if any(r.commands is not None for r in results):
        lost: dict[str, int] = {}
        for r in results:
            for k, v in r.frames_lost.items():
                lost[k] = lost.get(k, 0) + int(v)
        m["frames_lost"] = lost
        faithful = [r for r in results if r.commands is not None]
        m["executed"] = stream_metrics([(r.commands, r.episodes) for r in faithful], cfg.runtime.control_period_ns)
        m["executed"]["latency_used_ms"] = float(np.mean([r.latency_used_ms for r in faithful]))
    return m


def evaluate(
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
        missing = [c for c in policy.cfg.cameras if c not in cfg.data.cameras]
        if missing:
            raise ConfigError(f"data.cameras: checkpoint {name!r} needs camera(s) {missing}; the data config maps {sorted(cfg.data.cameras)}")
        if abs(policy.cfg.control_dt_ns - cfg.data.dt_ns) > 1000:
            raise ConfigError(f"data.control_rate_hz ({cfg.data.control_rate_hz} Hz) does not match checkpoint {name!r}'s "
                              f"control_dt ({policy.cfg.control_dt} s): labels and chunk steps must share the period")
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
    settings = {"bags": ", ".join(map(str, bags)), "modes": ", ".join(cfg.modes), "labels": cfg.data.labels,
                "latency (faithful)": "measured" if cfg.runtime.inference_latency_s is None else f"{cfg.runtime.inference_latency_s * 1e3:g} ms",
                "strategy": cfg.runtime.strategy, "backend": cfg.runtime.backend, "tolerance": f"{cfg.tolerance_mm:g} mm and {cfg.tolerance_deg:g} deg"}
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


def format_table(results: list[CheckpointResult]) -> str:
    """The metrics as a plain-text table, one column per checkpoint and mode."""
    from vit_policy.report import ROWS, lookup

    cols = {f"{c.name} ({mode})": m for c in results for mode, m in c.metrics.items()}
    width = max(14, *(len(n) for n in cols))
    lines = [f"{'metric':<40}" + "".join(f"{n:>{width + 2}}" for n in cols)]
    for label, keys, fmt in ROWS:
        vals = [lookup(m, keys) for m in cols.values()]
        if all(v is None for v in vals):
            continue
        lines.append(f"{label:<40}" + "".join(f"{'-' if v is None else fmt.format(v):>{width + 2}}" for v in vals))
    return "\n".join(lines)


def load_data_config(path: str | Path | None, checkpoints: list[str | Path], overrides: list[str] | None = None) -> ReplayConfig:
    """The replay settings: ``data`` from a YAML (a train config's ``data:`` or a replay config), or the checkpoint.

    Without ``path``: the ``data`` section recorded with the first checkpoint that has one (its
    ``metadata.json``, or the ``train_config.yaml`` that ``vit-policy train`` writes beside it).
    """
    from vit_policy.config import apply_overrides, from_dict, read_yaml

    raw: dict[str, Any] = {}
    if path is not None:
        doc = read_yaml(path)
        if "data" in doc:  # a train or replay config: keep the sections a replay understands
            raw = {k: v for k, v in doc.items() if k in ReplayConfig.__dataclass_fields__}
        else:
            raw = {"data": doc}
    else:
        for ckpt in map(Path, checkpoints):
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
    """Load checkpoint directories (checked first, all of them) and evaluate them on the bags."""
    from vit_policy.deploy import load_policy

    check_checkpoints(checkpoints, cfg.runtime.onnx_file if cfg.runtime.backend == "onnxruntime" else None)
    names: dict[str, str] = {}
    for p in map(Path, checkpoints):
        name = p.resolve().name
        while name in names:
            name = f"{p.resolve().parent.name}/{name}"
        names[name] = str(p)
    policies = {n: load_policy(p, cfg.runtime) for n, p in names.items()}
    return evaluate(policies, bags, out_dir, cfg, paths=names)


def cli_replay(args: Any) -> int:
    """``vit-policy replay``: load, replay, print the metrics table, write metrics.json and report.html."""
    overrides = list(args.set)
    if args.mode != "both":
        overrides.append(f"modes=[{args.mode}]")
    if args.latency_ms is not None:
        if args.latency_ms < 0:
            raise ConfigError(f"--latency-ms: {args.latency_ms} must be >= 0 milliseconds")
        overrides.append(f"runtime.inference_latency_s={args.latency_ms / 1e3}")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_data_config(args.data_config, args.checkpoint, overrides)
    check_checkpoints(args.checkpoint, cfg.runtime.onnx_file if cfg.runtime.backend == "onnxruntime" else None)
    from vit_policy.data.inspect import check_bags

    check_bags(args.bags, cfg.data)  # every bag would extract, before any checkpoint is loaded; else its reason and fix
    results = replay_checkpoints(args.checkpoint, args.bags, args.out, cfg)
    print(format_table(results))
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'report.html'}")
    return 0
