"""Replay metrics on arrays: predicted chunks against their labels, executed command streams, latency.

Pure numpy (and scipy rotations): no model, no torch code and no I/O, so each metric can be checked on
hand-made arrays. The two containers the metrics read are here too: ``Predictions`` (chunks next to the
labels of the same frames) and ``CommandStream`` (what a faithful replay's runner commanded per tick).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from vit_policy.config import ConfigError
from vit_policy.geometry import apply_delta, geodesic_deg, rot6d_to_rotvec
from vit_policy.observation import ActionChunk

if TYPE_CHECKING:
    from vit_policy.data.bags import Episode


# --------------------------------------------------------------------------------------------------
# What the metrics read
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


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------


def _describe(x: np.ndarray, percentiles: tuple[int, ...]) -> dict[str, float]:
    """Mean, the given percentiles (``p50``, ...) and max of a non-empty array."""
    return {"mean": float(x.mean()), **{f"p{q}": float(np.percentile(x, q)) for q in percentiles}, "max": float(x.max())}


def error_summary(x: np.ndarray) -> dict[str, float]:
    """Mean, p50, p95 and max of errors; NaN each when there are none."""
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    return _describe(x, (50, 95))


def latency_summary(ms: np.ndarray) -> dict[str, float] | None:
    """Count, mean, p50, p90, p99 and max of latencies (ms); None when there are none."""
    ms = np.asarray(ms, np.float64).ravel()
    if ms.size == 0:
        return None
    return {"n": int(ms.size), **_describe(ms, (50, 90, 99))}


def _rms(x: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean(np.square(x)))) if np.size(x) else None


# --------------------------------------------------------------------------------------------------
# Chunks against labels
# --------------------------------------------------------------------------------------------------


def _quat_from_rotvec(dr: np.ndarray) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(dr, np.float64).reshape(-1, 3)).as_quat().reshape(*np.shape(dr)[:-1], 4)


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
        "translation_error_mm": error_summary(dist[m]),
        "rotation_error_deg": error_summary(rot[m]),
        "gripper_accuracy": float((true_closed == pred_closed)[m].mean()),
        "gripper_event_accuracy": float((true_closed == pred_closed)[events].mean()) if ev else None,
        "gripper_events": ev,
        "within_tolerance": float(((dist <= tolerance_mm) & (rot <= tolerance_deg))[m].mean()),
        "tolerance": {"mm": tolerance_mm, "deg": tolerance_deg},
        "horizon": {"translation_mm": horizon_t.tolist(), "rotation_deg": horizon_r.tolist()},
    }


# --------------------------------------------------------------------------------------------------
# Executed command streams against the recording
# --------------------------------------------------------------------------------------------------


def jerk(positions: np.ndarray, dt_s: float) -> np.ndarray:
    """Norm of the third finite difference of a position stream sampled every ``dt_s``: (M,) -> (M - 3,) m/s^3."""
    p = np.asarray(positions, np.float64)
    if len(p) < 4:
        return np.zeros(0)
    d3 = p[3:] - 3 * p[2:-1] + 3 * p[1:-2] - p[:-3]
    return np.linalg.norm(d3, axis=-1) / dt_s**3


def _frame_spacing(ep: "Episode") -> int:
    s = np.asarray(ep.stamps_ns, np.int64)
    return int(np.median(np.diff(s))) if len(s) > 1 else 0


def recorded_target_at(episodes: list["Episode"], times_ns: np.ndarray, dt_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recorded target pose at arbitrary times: (positions, quaternions, valid).

    The label of frame t, step 1 is the recorded target for ``stamp_t + dt`` (the definition chunks are
    scored against); between two consecutive labelled frames of an episode the target is interpolated
    (linear / slerp). Times outside every episode, or next to a padded step, are not valid.
    """
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
        out["translation_error_mm"] = error_summary(cat(err))
        out["rotation_error_deg"] = error_summary(cat(rot))
    out.update({
        "jerk_rms": _rms(cat(run_j)),
        "jerk_rms_seams": _rms(cat(seam_j)),
        "jerk_rms_within": _rms(cat(within_j)),
        "jerk_max": float(cat(run_j).max()) if cat(run_j).size else None,
        "jerk_rms_recorded": _rms(cat(rec_j)),
    })
    return out
