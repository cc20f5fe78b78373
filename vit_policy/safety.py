"""Safety: workspace box, speed and step limits, NaN/Inf guard, and the stop command.

Every command that leaves the runner passes through :class:`SafetyFilter`. A target is clamped into
the workspace box, then the motion from the current pose is limited to ``max_step`` and to the speed
limits over one control period. A non-finite value anywhere is never clamped: it becomes a stop.
When the runner is disabled, stale, faulted or shutting down, the only command is :meth:`stop`:
zero twist, with a target pose that either follows the measured pose (``zero_twist``) or holds the
pose latched when the stop began (``hold_pose``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.spatial.transform import Rotation

from vit_policy.config import ConfigError
from vit_policy.geometry import canonical_quat
from vit_policy.observation import ActionChunk

# --------------------------------------------------------------------------------------------------
# Configuration: safety: of the ROS node, replay and the simulator (each help is the node parameter's description)
# --------------------------------------------------------------------------------------------------


@dataclass
class SafetyConfig:
    """Limits applied to every command; violations are clamped, non-finite values stop the arm."""

    workspace_min: list[float] = field(default_factory=lambda: [-1.0, -1.0, 0.0], metadata={"help": (
        "workspace box lower corner [x, y, z] in base_frame (m)")})
    workspace_max: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.5], metadata={"help": (
        "workspace box upper corner [x, y, z] in base_frame (m)")})
    max_linear_speed: float = field(default=0.25, metadata={"help": "EE linear speed limit (m/s)"})
    max_angular_speed: float = field(default=1.0, metadata={"help": "EE angular speed limit (rad/s)"})
    max_step: float = field(default=0.05, metadata={"help": "largest EE translation commanded in one control tick (m)"})
    stop_mode: Literal["zero_twist", "hold_pose"] = field(default="zero_twist", metadata={"help": (
        "zero_twist (stop target follows the measured pose) or hold_pose (latched where the stop began)")})
    ood_stop: bool = field(default=False, metadata={"help": (
        "stop while a camera's frame is out of distribution (needs the checkpoint's ood.safetensors)")})
    ood_margin: float = field(default=1.0, metadata={"help": (
        "a frame is out of distribution above this x the checkpoint's calibrated OOD threshold")})

    def __post_init__(self) -> None:
        for name in ("workspace_min", "workspace_max"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) and v == v for v in value):
                raise ConfigError(f"safety.{name}: expected 3 numbers [x, y, z] in metres, got {value}")
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ConfigError(f"safety.workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max} on every axis")
        for name in ("max_linear_speed", "max_angular_speed", "max_step", "ood_margin"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"safety.{name}: {getattr(self, name)} must be > 0")


STATUSES = ("ok", "disabled", "waiting", "stale", "fault", "shutdown", "ood")  # ood: safety.ood_stop (vit_policy/ood.py)


@dataclass
class Command:
    """What the arm is told for one control tick: a target pose, a twist and a gripper target, never NaN."""

    stamp_ns: int
    target_position: np.ndarray | None  # (3,) m, base frame; None: no valid pose yet (a stop with no target)
    target_quaternion: np.ndarray | None  # (4,) x, y, z, w
    linear: np.ndarray  # (3,) m/s, base frame
    angular: np.ndarray  # (3,) rad/s, base frame
    gripper: float | None  # target opening in [0, 1]; None: unknown (nothing to command)
    chunk: ActionChunk | None = None  # the steps still ahead (monitoring / trajectory output)
    status: str = "ok"  # one of STATUSES
    reason: str = ""
    is_stop: bool = False

    @property
    def has_target(self) -> bool:
        """False for a stop before any valid pose: pose and trajectory outputs then publish nothing."""
        return self.target_position is not None and self.target_quaternion is not None

    def is_finite(self) -> bool:
        values = [self.linear, self.angular]
        values += [self.target_position, self.target_quaternion] if self.has_target else []
        values += [self.gripper] if self.gripper is not None else []
        return bool(all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in values))


class SafetyFilter:
    """Clamps targets to the workspace and the speed / step limits; builds stop commands."""

    def __init__(self, cfg: SafetyConfig, control_period_ns: int) -> None:
        self.cfg = cfg
        self.period_s = control_period_ns / 1e9
        self.lo = np.asarray(cfg.workspace_min, np.float64)
        self.hi = np.asarray(cfg.workspace_max, np.float64)
        self.max_translation = min(cfg.max_step, cfg.max_linear_speed * self.period_s)  # per tick
        self.max_rotation = cfg.max_angular_speed * self.period_s  # rad per tick
        self._held: tuple[np.ndarray, np.ndarray] | None = None  # hold_pose latch

    def stop(
        self, stamp_ns: int, status: str, reason: str,
        position: np.ndarray | None = None, quaternion: np.ndarray | None = None, gripper: float | None = None,
    ) -> Command:
        """A stop: zero twist; target = measured pose (zero_twist) or the pose latched at the stop (hold_pose).

        Without a valid measured pose the stop has no target (and without a known gripper, no gripper
        target): a placeholder would be a made-up target that a pose controller drives the arm to.
        """
        pos, quat = _finite_pose(position, quaternion)
        if self.cfg.stop_mode == "hold_pose":
            if self._held is None and pos is not None:
                self._held = (pos, quat)
            if self._held is not None:
                pos, quat = self._held
        if pos is None:
            reason = f"{reason} (no valid pose yet: zero twist, no target published)"
        grip = float(np.clip(gripper, 0.0, 1.0)) if gripper is not None and np.isfinite(gripper) else None
        return Command(int(stamp_ns), None if pos is None else pos.copy(), None if quat is None else quat.copy(),
                       np.zeros(3), np.zeros(3), grip, None, status, reason, True)

    def release(self) -> None:
        """Forget the held pose (called when commanding resumes)."""
        self._held = None

    def limit(
        self, stamp_ns: int, position: np.ndarray, quaternion: np.ndarray,
        target_position: np.ndarray, target_quaternion: np.ndarray, gripper: float, chunk: ActionChunk | None = None,
    ) -> Command:
        """Clamp a target reached from the measured pose in one control period; returns an 'ok' or 'fault' command."""
        values = (position, quaternion, target_position, target_quaternion, [gripper])
        if not all(np.all(np.isfinite(np.asarray(v, np.float64))) for v in values):
            return self.stop(stamp_ns, "fault", "non-finite value in the measured pose or the model's target", position, quaternion)
        position, target = np.asarray(position, np.float64), np.asarray(target_position, np.float64)
        notes = []
        clamped = np.clip(target, self.lo, self.hi)
        if not np.allclose(clamped, target):
            notes.append("target clamped to the workspace")
        step = clamped - position
        dist = float(np.linalg.norm(step))
        if dist > self.max_translation:
            step *= self.max_translation / dist
            notes.append(f"translation {dist * 1e3:.1f} mm limited to {self.max_translation * 1e3:.1f} mm per tick")
        r0 = Rotation.from_quat(quaternion)
        dr = (Rotation.from_quat(target_quaternion) * r0.inv()).as_rotvec()
        angle = float(np.linalg.norm(dr))
        if angle > self.max_rotation:
            dr *= self.max_rotation / angle
            notes.append(f"rotation {np.degrees(angle):.1f} deg limited to {np.degrees(self.max_rotation):.1f} deg per tick")
        quat = canonical_quat((Rotation.from_rotvec(dr) * r0).as_quat())
        self.release()
        return Command(
            int(stamp_ns), position + step, quat, step / self.period_s, dr / self.period_s,
            float(np.clip(gripper, 0.0, 1.0)), chunk, "ok", "; ".join(notes), False,
        )


    def limit_chunk(self, chunk: ActionChunk, position: np.ndarray, quaternion: np.ndarray, now_ns: int) -> ActionChunk:
        """The chunk's targets clamped to the workspace and to the speed limits between consecutive points.

        Point k is reached from point k-1 (the measured pose at ``now_ns`` for the first) in the time
        between them, so a trajectory controller following it never exceeds the limits.
        """
        times = chunk.step_times_ns
        targets, quats = chunk.target_positions, chunk.target_quaternions
        prev_p, prev_r, prev_t = np.asarray(position, np.float64), Rotation.from_quat(quaternion), int(now_ns)
        out_p, out_q = [], []
        for k in range(len(chunk)):
            dt = max(int(times[k]) - prev_t, 1) / 1e9
            step = np.clip(targets[k], self.lo, self.hi) - prev_p
            dist = float(np.linalg.norm(step))
            if dist > self.cfg.max_linear_speed * dt:
                step *= self.cfg.max_linear_speed * dt / dist
            dr = (Rotation.from_quat(quats[k]) * prev_r.inv()).as_rotvec()
            angle = float(np.linalg.norm(dr))
            if angle > self.cfg.max_angular_speed * dt:
                dr *= self.cfg.max_angular_speed * dt / angle
            prev_p, prev_r, prev_t = prev_p + step, Rotation.from_rotvec(dr) * prev_r, int(times[k])
            out_p.append(prev_p)
            out_q.append(prev_r.as_quat())
        r0 = Rotation.from_quat(chunk.origin_quaternion)
        return ActionChunk(
            chunk.stamp_ns, chunk.dt_ns, chunk.origin_position, chunk.origin_quaternion,
            np.array(out_p) - chunk.origin_position, (Rotation.from_quat(np.array(out_q)) * r0.inv()).as_rotvec().reshape(-1, 3),
            np.clip(chunk.gripper, 0.0, 1.0),
        )


def _finite_pose(position: np.ndarray | None, quaternion: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    if position is None or quaternion is None:
        return None, None
    p, q = np.asarray(position, np.float64), np.asarray(quaternion, np.float64)
    if p.shape != (3,) or q.shape != (4,) or not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))) or np.linalg.norm(q) < 1e-6:
        return None, None
    return p, q / np.linalg.norm(q)
