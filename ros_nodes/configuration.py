"""The ROS 2 policy node's configuration: its parameters, their defaults, checks and descriptions.

Every field is a node parameter (nested ones flattened to dotted names: ``topics.image``,
``runtime.max_age_s``); its ``metadata["help"]`` is the one description of it, which the parameter
descriptors, the README's table and the comments of ``configs/ros/policy_node.yaml`` all read
(ros_nodes/policy_node.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vit_policy.config import ConfigError
from vit_policy.runtime import RuntimeConfig
from vit_policy.safety import SafetyConfig


@dataclass
class NodeTopicsConfig:
    """Topic names of the policy node (relative names resolve in the node namespace and can be remapped)."""

    image: str = field(default="/camera/{camera}/image_raw", metadata={"help": (
        "image topic per policy camera ({camera}; '/compressed' appended with image_transport: compressed)")})
    ee_pose: str = field(default="/ee_pose", metadata={"help": "geometry_msgs/PoseStamped EE pose in base_frame (pose_source: pose)"})
    joint_states: str = field(default="/joint_states", metadata={"help": "sensor_msgs/JointState with the gripper joints"})
    twist: str = field(default="cmd/twist", metadata={"help": "TwistStamped command (output_mode: twist)"})
    pose: str = field(default="cmd/pose", metadata={"help": "PoseStamped target (output_mode: pose)"})
    trajectory: str = field(default="cmd/trajectory", metadata={"help": (
        "MultiDOFJointTrajectory of the remaining chunk (output_mode: trajectory)")})
    gripper: str = field(default="cmd/gripper", metadata={"help": "Float64 gripper opening target in [0, 1]"})
    chunk: str = field(default="policy/chunk", metadata={"help": "the chunk followed, for monitoring (any output mode)"})
    diagnostics: str = field(default="/diagnostics", metadata={"help": "diagnostic_msgs/DiagnosticArray status"})

    def __post_init__(self) -> None:
        if "{camera}" not in self.image:
            raise ConfigError(f"topics.image: {self.image!r} must contain '{{camera}}' (e.g. /camera/{{camera}}/image_raw)")


@dataclass
class NodeConfig:
    """The ROS 2 policy node's parameters (configs/ros/policy_node.yaml, under /**: ros__parameters:)."""

    checkpoint: str = field(default="", metadata={"help": (
        "trained checkpoint directory (config.yaml, model.safetensors, stats.safetensors); required unless allow_untrained")})
    allow_untrained: bool = field(default=False, metadata={"help": (
        "run randomly initialised weights from policy_config (plumbing checks only; warned at every enable)")})
    policy_config: str = field(default="", metadata={"help": "policy YAML used with allow_untrained"})
    device: str = field(default="cpu", metadata={"help": "torch device for inference (cpu, cuda, cuda:N)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads for inference"})
    output_mode: Literal["twist", "pose", "trajectory"] = field(default="twist", metadata={"help": (
        "twist (TwistStamped, MoveIt Servo), pose (PoseStamped target: cartesian_controllers, Servo pose) "
        "or trajectory (MultiDOFJointTrajectory)")})
    base_frame: str = field(default="base_link", metadata={"help": "frame of the EE pose and of every command"})
    ee_frame: str = field(default="ee_link", metadata={"help": "end-effector frame (TF child frame with pose_source: tf)"})
    pose_source: Literal["pose", "tf"] = field(default="pose", metadata={"help": (
        "pose (PoseStamped on topics.ee_pose) or tf (base_frame -> ee_frame on /tf, /tf_static)")})
    image_transport: Literal["raw", "compressed"] = field(default="raw", metadata={"help": (
        "raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage, jpeg/png)")})
    image_qos: Literal["sensor_data", "reliable"] = field(default="sensor_data", metadata={"help": (
        "sensor_data (best effort, depth 5) or reliable for the image subscriptions")})
    gripper_joints: list[str] = field(default_factory=list, metadata={"help": (
        "JointState names whose summed position is the gripper opening (empty, or [\"\"] in a parameter file: no gripper feedback)")})
    gripper_closed: float = field(default=0.0, metadata={"help": "summed gripper joint position when closed (joint units, m or rad)"})
    gripper_open: float = field(default=0.08, metadata={"help": "summed gripper joint position when fully open (Franka: two fingers of 0.04 m)"})
    diagnostics_rate_hz: float = field(default=1.0, metadata={"help": "rate of /diagnostics (Hz)"})
    instruction: str = field(default="", metadata={"help": "task instruction for language-conditioned policies"})
    topics: NodeTopicsConfig = field(default_factory=NodeTopicsConfig, metadata={"help": "topic names (topics.*)"})
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig, metadata={"help": (
        "control rate, timing rule, chunk strategy and inference backend (runtime.*)")})
    safety: SafetyConfig = field(default_factory=SafetyConfig, metadata={"help": "limits applied to every command (safety.*)"})

    def __post_init__(self) -> None:
        if not self.checkpoint and not self.allow_untrained:
            raise ConfigError("checkpoint: set the trained checkpoint directory (or allow_untrained: true with policy_config for plumbing checks)")
        if self.allow_untrained and not self.checkpoint and not self.policy_config:
            raise ConfigError("policy_config: allow_untrained needs a policy YAML to build the untrained model from")
        if self.gripper_joints and self.gripper_open == self.gripper_closed:
            raise ConfigError("gripper_open and gripper_closed: must differ")
        if self.threads < 1 or not self.diagnostics_rate_hz > 0:
            raise ConfigError("threads must be >= 1 and diagnostics_rate_hz > 0")
