"""Observation, ActionChunk and ObservationSpec: the types every source (ROS, rosbag2, MuJoCo) and sink share.

How messages become observations (routing and timing) is vit_policy/inputs.py. What a checkpoint was
trained to see (cameras, control period, chunk, pose history, frame, gripper range) is its
:class:`ObservationSpec`, which training writes and every consumer checks its own settings against.

Time is integer nanoseconds. Images are RGB uint8 H x W x 3. Poses are in the robot base frame with
quaternions in (x, y, z, w) order. Step k of a chunk is the target for time ``stamp_ns + (k+1)*dt_ns``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vit_policy.config import ConfigError
from vit_policy.geometry import PoseError, apply_delta, check_finite, check_quaternion


class ObservationError(ValueError):
    """An observation is malformed; the message names the field and what is expected."""


def check_image(image: np.ndarray, field: str) -> np.ndarray:
    """Validate an RGB uint8 H x W x 3 array."""
    if not isinstance(image, np.ndarray):
        raise ObservationError(f"{field}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ObservationError(f"{field}: expected dtype uint8 (RGB 0..255), got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ObservationError(f"{field}: expected shape (H, W, 3) RGB, got {image.shape}")
    return image


@dataclass
class EEPose:
    """End-effector pose in the base frame, with the gripper opening in [0, 1] (1 = open)."""

    stamp_ns: int
    position: np.ndarray  # (3,) metres
    quaternion: np.ndarray  # (4,) x, y, z, w
    gripper: float = 1.0

    def validate(self, field: str = "pose") -> "EEPose":
        try:
            pos = check_finite(self.position, f"{field}.position")
            if pos.shape != (3,):
                raise PoseError(f"{field}.position: expected 3 values, got shape {pos.shape}")
            quat = check_quaternion(self.quaternion, f"{field}.orientation")
            grip = float(check_finite(np.asarray(self.gripper), f"{field}.gripper"))
        except PoseError as exc:
            raise ObservationError(str(exc)) from None
        if not -0.05 <= grip <= 1.05:
            raise ObservationError(f"{field}.gripper: {grip} is outside [0, 1] (0 closed, 1 open)")
        return EEPose(int(self.stamp_ns), pos, quat, min(max(grip, 0.0), 1.0))


@dataclass
class Observation:
    """One synchronised observation: an image per camera and the EE pose at ``stamp_ns``."""

    stamp_ns: int
    images: dict[str, np.ndarray]
    position: np.ndarray
    quaternion: np.ndarray
    gripper: float = 1.0
    history: np.ndarray | None = None  # (H, 7) past poses [x, y, z, qx, qy, qz, qw], oldest first
    instruction: str | None = None

    def validate(self, cameras: list[str] | None = None) -> "Observation":
        """Check every field; returns a copy with normalised quaternions. Raises ObservationError."""
        pose = EEPose(self.stamp_ns, self.position, self.quaternion, self.gripper).validate("observation")
        for name in cameras or []:
            if name not in self.images:
                raise ObservationError(
                    f"observation.images: camera {name!r} is missing (have {sorted(self.images)})"
                )
        images = {k: check_image(v, f"observation.images[{k!r}]") for k, v in self.images.items()}
        history = self.history
        if history is not None:
            try:
                history = check_finite(history, "observation.history").astype(np.float64)
                if history.ndim != 2 or history.shape[1] != 7:
                    raise PoseError(f"observation.history: expected shape (H, 7), got {history.shape}")
                history[:, 3:] = check_quaternion(history[:, 3:], "observation.history orientation")
            except PoseError as exc:
                raise ObservationError(str(exc)) from None
        return Observation(pose.stamp_ns, images, pose.position, pose.quaternion, pose.gripper, history, self.instruction)


def example_observation(cameras: list[str] | tuple[str, ...], image_size: tuple[int, int], history: int = 0, seed: int = 0,
                        stamp_ns: int = 0) -> Observation:
    """Random frames at a neutral pose: for warm-up steps, benchmarks and plumbing checks, never for control."""
    rng = np.random.default_rng(seed)
    h, w = image_size
    position, quaternion = np.array([0.4, 0.0, 0.3]), np.array([1.0, 0.0, 0.0, 0.0])
    return Observation(stamp_ns, {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in cameras}, position, quaternion, 1.0,
                       np.tile(np.r_[position, quaternion], (history, 1)) if history else None)


@dataclass
class ActionChunk:
    """K future EE targets relative to the observed pose (ARCHITECTURE.md action semantics)."""

    stamp_ns: int  # observation time the chunk is anchored to
    dt_ns: int  # control period between steps
    origin_position: np.ndarray  # (3,) observed pose
    origin_quaternion: np.ndarray  # (4,)
    delta_position: np.ndarray  # (K, 3) base frame, metres
    delta_rotation: np.ndarray  # (K, 3) rotation vectors, applied on the left
    gripper: np.ndarray  # (K,) targets in [0, 1]
    attention: dict[str, np.ndarray] | None = field(default=None, repr=False)
    ood: dict[str, float] | None = None  # out-of-distribution score per camera (vit_policy/ood.py); None: no monitor

    def __len__(self) -> int:
        return int(self.delta_position.shape[0])

    @property
    def step_times_ns(self) -> np.ndarray:
        return self.stamp_ns + self.dt_ns * np.arange(1, len(self) + 1, dtype=np.int64)

    @property
    def target_positions(self) -> np.ndarray:
        return np.asarray(self.origin_position, np.float64) + self.delta_position

    @property
    def target_quaternions(self) -> np.ndarray:
        return apply_delta(self.origin_position, self.origin_quaternion, self.delta_position, self.delta_rotation)[1]

    def is_finite(self) -> bool:
        return bool(
            np.all(np.isfinite(self.delta_position))
            and np.all(np.isfinite(self.delta_rotation))
            and np.all(np.isfinite(self.gripper))
        )


@dataclass(frozen=True)
class ObservationSpec:
    """What a checkpoint was trained to see; written by training into its ``metadata.json`` (``observation``).

    Data, runtime, replay, node and simulator check their settings against it (``check_period``,
    ``check_inputs``) instead of keeping their own copies. ``base_frame`` and the gripper fields are None
    when unknown (a policy built from a config alone, or a checkpoint saved before the spec existed).
    """

    cameras: tuple[str, ...]
    image_size: int | None  # encoder input side (pixels); None: the encoder's native resolution
    control_dt_ns: int  # period between chunk steps = the period of the training labels
    chunk_size: int
    pose_history: int
    base_frame: str | None = None  # frame of the recorded EE poses and of the actions
    gripper_joints: tuple[str, ...] | None = None  # summed JointState positions (empty: a Float64 opening)
    gripper_range: tuple[float, float] | None = None  # (closed, open) joint sums mapped to 0 and 1

    @classmethod
    def of(cls, policy: Any, data: Any = None) -> "ObservationSpec":
        """From a PolicyConfig and, when training, the DataConfig whose bags it learns from."""
        g = getattr(data, "gripper", None)
        return cls(
            tuple(policy.cameras), policy.encoder.img_size, int(policy.control_dt_ns), int(policy.chunk_size), int(policy.pose.history),
            None if data is None else str(data.tf_base_frame),
            None if g is None else (tuple(g.joints) if g.kind == "joint_state" else ()),
            None if g is None else ((float(g.closed), float(g.open)) if g.kind == "joint_state" else (0.0, 1.0)))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> "ObservationSpec":
        try:
            out = dict(raw)
            out["cameras"] = tuple(out["cameras"])
            if out.get("gripper_joints") is not None:
                out["gripper_joints"] = tuple(out["gripper_joints"])
            if out.get("gripper_range") is not None:
                out["gripper_range"] = tuple(float(v) for v in out["gripper_range"])
            return cls(**out)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{where}: observation spec {raw!r} is malformed ({exc}); save the checkpoint again") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def matches_config(self, policy: Any) -> None:
        """The spec was written for this PolicyConfig (cameras, period, chunk, history)."""
        own = ObservationSpec.of(policy)
        for name in ("cameras", "control_dt_ns", "chunk_size", "pose_history"):
            if getattr(own, name) != getattr(self, name):
                raise ConfigError(f"observation.{name}: {getattr(self, name)} in metadata.json, {getattr(own, name)} in config.yaml; "
                                  "both files must come from the same save")

    def check_period(self, period_ns: int, setting: str, resample: bool = False) -> None:
        """The one rate rule, wherever a checkpoint meets a configured control period (training labels, replay,
        the runner in the node and the simulator): the chunk step and the period match, or resampling was asked
        for (``runtime.resample_chunks``: targets interpolated between chunk steps); else a ConfigError naming both."""
        dt = self.control_dt_ns
        if resample or abs(dt - int(period_ns)) <= 1000:
            return
        fix = f"set {setting} to {1e9 / dt:g} Hz"
        fix += ", or runtime.resample_chunks: true to interpolate the chunk at the control ticks" if setting.startswith("runtime.") else ""
        raise ConfigError(f"{setting}: {1e9 / period_ns:g} Hz (a {period_ns / 1e6:g} ms period) differs from the checkpoint's chunk step "
                          f"(control_dt {dt / 1e9:g} s = {dt / 1e6:g} ms); {fix}")

    def check_inputs(self, cameras: Any, base_frame: str | None, gripper_joints: tuple[str, ...] | None,
                     gripper_range: tuple[float, float] | None, names: dict[str, str]) -> None:
        """Configured inputs feed this checkpoint as its demonstrations did: every camera mapped, poses in the
        recorded frame, the gripper opening scaled by the recorded range. ``names``: the settings' names for
        the error (keys ``cameras``, ``base_frame``, ``gripper_joints``, ``gripper_range``). ``gripper_joints``: () for no
        gripper feedback, None for a gripper that is not read from joints. Unknowns pass."""
        missing = [c for c in self.cameras if c not in cameras]
        if missing:
            raise ConfigError(f"{names['cameras']}: the checkpoint needs camera(s) {missing}; the inputs map {sorted(cameras)}")
        if self.base_frame and base_frame and base_frame != self.base_frame:
            raise ConfigError(f"{names['base_frame']}: {base_frame!r}, but the checkpoint's demonstrations were recorded in "
                              f"{self.base_frame!r}; set {names['base_frame']}: {self.base_frame} (poses and commands in that frame)")
        if gripper_joints is None or self.gripper_joints is None:
            return  # the gripper from another source (a Float64 topic), or not recorded
        if self.gripper_joints and not gripper_joints:
            raise ConfigError(f"{names['gripper_joints']}: none set, so the gripper input would be a constant 1.0 (open), but the "
                              f"checkpoint was trained on the opening of {list(self.gripper_joints)}; set "
                              f"{names['gripper_joints']}: {list(self.gripper_joints)}")
        if self.gripper_joints and gripper_joints and set(gripper_joints) != set(self.gripper_joints):
            raise ConfigError(f"{names['gripper_joints']}: {list(gripper_joints)}, but the checkpoint read the gripper from "
                              f"{list(self.gripper_joints)}; set {names['gripper_joints']}: {list(self.gripper_joints)}")
        if self.gripper_joints and gripper_range is not None and self.gripper_range is not None and \
                not np.allclose(gripper_range, self.gripper_range, atol=1e-6):
            raise ConfigError(f"{names['gripper_range']}: (closed, open) {tuple(gripper_range)}, but the checkpoint's demonstrations "
                              f"mapped {self.gripper_range} to 0 and 1; set them to {self.gripper_range[0]:g} and {self.gripper_range[1]:g}")
