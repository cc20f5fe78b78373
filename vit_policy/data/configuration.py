"""Demonstration data configuration: the rosbag2 topic map, the gripper source and training augmentations.

Beside the code that reads it (``bags.py``, ``cache.py``, ``dataset.py``); loaded and validated by the
generic loader of :mod:`vit_policy.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from vit_policy.config import ConfigError, load_config
from vit_policy.inputs import TIMING_HELP, check_timing, period_ns


@dataclass
class GripperConfig:
    """Where the gripper opening comes from: JointState joints mapped from (closed, open) to [0, 1], or a Float64."""

    topic: str = field(default="/joint_states", metadata={"help": "topic the gripper opening is read from"})
    kind: Literal["joint_state", "float64"] = field(default="joint_state", metadata={"help": (
        "joint_state (sensor_msgs/JointState: the joints below, mapped to [0, 1]) or float64 (std_msgs/Float64 already "
        "in [0, 1], 0 closed; stamped at arrival)")})
    joints: list[str] = field(default_factory=list, metadata={"help": (
        "JointState names whose summed position is the opening (kind: joint_state; at least one)")})
    closed: float = field(default=0.0, metadata={"help": "summed joint position when closed, read as 0 (joint units, m or rad)"})
    open: float = field(default=0.08, metadata={"help": "summed joint position when fully open, read as 1 (joint units; differs from closed)"})

    def __post_init__(self) -> None:
        if self.kind == "joint_state" and not self.joints:
            raise ConfigError("gripper.joints: list the gripper joint name(s) of the JointState topic (kind: joint_state)")
        if self.kind == "joint_state" and self.closed == self.open:
            raise ConfigError(f"gripper.closed and gripper.open are both {self.open}: give the joint range (closed, open)")



@dataclass
class DataConfig:
    """Topic map and sampling rules that turn a rosbag2 recording into episodes (one per bag, split at gaps)."""

    cameras: dict[str, str] = field(default_factory=lambda: {"front": "/camera/front/image_raw"}, metadata={"help": (
        "camera name -> image topic (sensor_msgs/Image or CompressedImage); the first is the reference camera, "
        "whose every frame is a sample")})
    pose_topic: str | None = field(default="/ee_pose", metadata={"help": (
        "geometry_msgs/PoseStamped EE pose topic; null: the TF chain tf_base_frame -> tf_ee_frame on /tf, /tf_static")})
    tf_base_frame: str = field(default="base_link", metadata={"help": (
        "the base frame: TF parent, and the frame_id a PoseStamped must carry (or leave empty)")})
    tf_ee_frame: str = field(default="ee_link", metadata={"help": "end-effector frame: the TF child with pose_topic: null"})
    gripper: GripperConfig = field(default_factory=lambda: GripperConfig(joints=["gripper_joint"]), metadata={"help": (
        "where the gripper opening comes from (gripper.*)")})
    command_topic: str | None = field(default=None, metadata={"help": (
        "recorded target PoseStamped (e.g. /expert/target_pose), needed by labels: command; null: none")})
    command_gripper_topic: str | None = field(default=None, metadata={"help": (
        "recorded gripper command Float64 in [0, 1] (e.g. /expert/gripper), the gripper labels when set; null: the observed opening")})
    labels: Literal["command", "future_pose"] = field(default="future_pose", metadata={"help": (
        "what step k of a chunk learns: future_pose (the EE pose interpolated at stamp + (k+1) dt) or command (the latest "
        "recorded command_topic target at that time)")})
    control_rate_hz: float = field(default=10.0, metadata={"help": "rate of the label steps (Hz); 1 / policy.control_dt"})
    sync_tolerance_s: float = field(default=0.05, metadata={"help": TIMING_HELP["sync_tolerance_s"]})
    max_age_s: float = field(default=0.5, metadata={"help": "the gripper's latest value is held at most this long (s)"})
    max_extrapolation_s: float = field(default=0.02, metadata={"help": (
        "the EE pose may be extrapolated this far past the newest one; else the frame is dropped (s, vit_policy/inputs.py)")})
    max_stamp_lead_s: float = field(default=0.2, metadata={"help": TIMING_HELP["max_stamp_lead_s"]})
    position_bound_m: float = field(default=10.0, metadata={"help": TIMING_HELP["position_bound_m"]})
    gap_split_s: float = field(default=1.0, metadata={"help": (
        "a bag is split into episodes where no observation forms for longer than this (s, above one control period)")})

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

    shift_px: int = field(default=0, metadata={"help": (
        "random shift: pad by this many pixels (edge values), crop back at a random offset (px, >= 0; 0: off)")})
    brightness: float = field(default=0.0, metadata={"help": "colour jitter: brightness factor drawn from [1 - x, 1 + x] (x in [0, 1); 0: off)"})
    contrast: float = field(default=0.0, metadata={"help": "colour jitter: contrast factor drawn from [1 - x, 1 + x] (x in [0, 1); 0: off)"})
    saturation: float = field(default=0.0, metadata={"help": "colour jitter: saturation factor drawn from [1 - x, 1 + x] (x in [0, 1); 0: off)"})
    pose_noise_m: float = field(default=0.0, metadata={"help": (
        "std of Gaussian noise on the EE position the model reads (m, in [0, 0.5]; labels keep the true pose): where most "
        "frames hold still at the target, copying the observed pose would fit them and the images be ignored")})

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
