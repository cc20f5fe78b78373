"""Demonstration data configuration: the rosbag2 topic map, the gripper source and training augmentations.

Beside the code that reads it (``bags.py``, ``cache.py``, ``dataset.py``); loaded and validated by the
generic loader of :mod:`vit_policy.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vit_policy.config import ConfigError, load_config
from vit_policy.inputs import check_timing, period_ns


@dataclass
class GripperConfig:
    """Where the gripper opening comes from: JointState joints mapped from (closed, open) to [0, 1], or a Float64."""

    topic: str = "/joint_states"
    kind: Literal["joint_state", "float64"] = "joint_state"
    joints: list[str] = field(default_factory=list)  # summed positions of these joints (joint_state)
    closed: float = 0.0  # joint sum when closed -> 0
    open: float = 0.08  # joint sum when open -> 1

    def __post_init__(self) -> None:
        if self.kind == "joint_state" and not self.joints:
            raise ConfigError("gripper.joints: list the gripper joint name(s) of the JointState topic (kind: joint_state)")
        if self.kind == "joint_state" and self.closed == self.open:
            raise ConfigError(f"gripper.closed and gripper.open are both {self.open}: give the joint range (closed, open)")



@dataclass
class DataConfig:
    """Topic map and sampling rules that turn a rosbag2 recording into episodes (one per bag, split at gaps)."""

    cameras: dict[str, str] = field(default_factory=lambda: {"front": "/camera/front/image_raw"})  # first: reference camera
    pose_topic: str | None = "/ee_pose"  # PoseStamped; null: TF chain tf_base_frame -> tf_ee_frame
    tf_base_frame: str = "base_link"  # the base frame: TF parent, and the frame_id a PoseStamped must carry (or empty)
    tf_ee_frame: str = "ee_link"
    gripper: GripperConfig = field(default_factory=lambda: GripperConfig(joints=["gripper_joint"]))
    command_topic: str | None = None  # recorded target PoseStamped (/expert/target_pose)
    command_gripper_topic: str | None = None  # recorded gripper command Float64 (/expert/gripper)
    labels: Literal["command", "future_pose"] = "future_pose"
    control_rate_hz: float = 10.0
    sync_tolerance_s: float = 0.05  # other cameras within this of the reference frame; poses around it at most 2x this apart
    max_age_s: float = 0.5
    max_extrapolation_s: float = 0.02  # the pose may be extrapolated this far past the newest one (vit_policy/inputs.py)
    max_stamp_lead_s: float = 0.2  # a stamp further ahead of its arrival (record time) is rejected
    position_bound_m: float = 10.0  # an EE position further than this from the base on any axis is rejected
    gap_split_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ConfigError("data.cameras: map at least one camera name to its image topic")
        if self.labels == "command" and not self.command_topic:
            raise ConfigError("data.labels: 'command' needs data.command_topic (e.g. /expert/target_pose)")
        if not self.control_rate_hz > 0:
            raise ConfigError("data.control_rate_hz: must be > 0")
        if not 0 <= self.sync_tolerance_s < self.max_age_s:
            raise ConfigError("data.sync_tolerance_s must be >= 0 and below data.max_age_s")
        check_timing("data", self)
        if not self.gap_split_s > 1.0 / self.control_rate_hz:
            raise ConfigError("data.gap_split_s: must be longer than one control period")

    @property
    def dt_ns(self) -> int:
        return period_ns(self.control_rate_hz)


@dataclass
class AugmentConfig:
    """Augmentations applied on the fly to training samples (never to validation)."""

    shift_px: int = 0  # random shift: pad by this many pixels (edge), crop back at a random offset
    brightness: float = 0.0  # colour jitter: factors drawn from [1 - x, 1 + x]
    contrast: float = 0.0
    saturation: float = 0.0
    # Gaussian noise (std, metres) on the EE position the model reads; labels keep the true pose. Where
    # most frames hold still at the target, copying the observed pose fits them, and the images are ignored.
    pose_noise_m: float = 0.0

    def __post_init__(self) -> None:
        if self.shift_px < 0:
            raise ConfigError("augment.shift_px: must be >= 0")
        if not 0.0 <= self.pose_noise_m <= 0.5:
            raise ConfigError(f"augment.pose_noise_m: {self.pose_noise_m} must be in [0, 0.5] metres (e.g. 0.02)")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"augment.{name}: must be in [0, 1)")


def load_data_config(path: str | Path, overrides: list[str] | None = None) -> DataConfig:
    """A data: YAML (topic map and sampling rules) with ``key=value`` overrides, validated."""
    return load_config(DataConfig, path, overrides)
