"""Observation and ActionChunk: the types every source (ROS, rosbag2, MuJoCo) and sink share.

How messages become observations (routing and timing) is vit_policy/inputs.py.

Time is integer nanoseconds. Images are RGB uint8 H x W x 3. Poses are in the robot base frame with
quaternions in (x, y, z, w) order. Step k of a chunk is the target for time ``stamp_ns + (k+1)*dt_ns``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
