"""The simulator's configuration: a MuJoCo Fetch task, its cameras, and the runner's runtime and safety there.

Beside the code that uses it (``fetch_env.py``, ``record.py``, ``closed_loop.py``); loaded and
validated by the generic loader of :mod:`vit_policy.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from vit_policy.config import ConfigError, config_table, load_config, reference_markdown
from vit_policy.runtime import RuntimeConfig
from vit_policy.safety import SafetyConfig

SimTask = Literal["FetchReach-v4", "FetchPush-v4", "FetchPickAndPlace-v4"]


@dataclass
class FreeCameraConfig:
    """A fixed camera placed in the world (MuJoCo free camera): looks at ``lookat`` from a distance and angles."""

    lookat: list[float] = field(default_factory=lambda: [1.3, 0.75, 0.55], metadata={"help": (
        "point the camera looks at, [x, y, z] in the world frame (m)")})
    distance: float = field(default=1.2, metadata={"help": "distance of the camera from lookat (m, > 0)"})
    azimuth: float = field(default=90.0, metadata={"help": "camera direction about the world z axis (degrees)"})
    elevation: float = field(default=-45.0, metadata={"help": "camera pitch in [-90, 90] degrees; negative looks down"})

    def __post_init__(self) -> None:
        if len(self.lookat) != 3:
            raise ConfigError(f"camera.lookat: expected [x, y, z] in metres, got {self.lookat}")
        if not self.distance > 0:
            raise ConfigError(f"camera.distance: {self.distance} must be > 0 metres")
        if not -90.0 <= self.elevation <= 90.0:
            raise ConfigError(f"camera.elevation: {self.elevation} must be in [-90, 90] degrees")


@dataclass
class SimConfig:
    """A MuJoCo Fetch task seen the way a robot sees it: cameras, EE pose, gripper, sim-time stamps."""

    task: SimTask = field(default="FetchReach-v4", metadata={"help": "the gymnasium-robotics Fetch task"})
    cameras: dict[str, Union[str, FreeCameraConfig]] = field(default_factory=lambda: {"external": "external_camera_0"}, metadata={"help": (
        "ROS camera name (published as /camera/<name>/image_raw) -> a MuJoCo camera of the model (by name) or a fixed "
        "free camera (a mapping: cameras.<name>.*); at least one")})
    image_size: int = field(default=96, metadata={"help": "rendered frames are image_size x image_size RGB (px, in [16, 1024])"})
    episode_steps: int = field(default=50, metadata={"help": "env steps per episode (>= 1; one step = 20 x 2 ms = 40 ms of sim time)"})
    target_marker_radius: float = field(default=0.03, metadata={"help": (
        "radius of the red goal marker in rendered frames (m, in (0, 0.1]; the model's default 0.02)")})
    goal_yaw_range_deg: float = field(default=0.0, metadata={"help": (
        "> 0: the goal is a pose: each episode also draws a gripper yaw (about the base z axis, from the home orientation) "
        "in [-range, range]; the marker becomes a bar along it and success also needs the EE yaw within yaw_tolerance_deg. "
        "In [0, 90) degrees (a bar looks the same turned 180 degrees); FetchReach-v4 only; 0: position goals")})
    yaw_tolerance_deg: float = field(default=15.0, metadata={"help": (
        "yaw error of a successful pose goal, in (0, 90) degrees (goal_yaw_range_deg > 0)")})
    base_frame: str = field(default="base_link", metadata={"help": (
        "the robot base: frame_id of the recorded / published EE pose and expert commands, and the node's base_frame")})
    ee_frame: str = field(default="ee_link", metadata={"help": (
        "end-effector frame name (the EE pose goes out on /ee_pose, not on TF: nothing reads it yet)")})
    runtime: RuntimeConfig = field(
        default_factory=lambda: RuntimeConfig(control_rate_hz=25.0, sync_tolerance_s=0.02, synchronous=True, inference_latency_s=0.0),
        metadata={"help": (
            "the runner in the closed loop (runtime.*): by default one tick per 40 ms env step, inference inline (sim time waits for it)")},
    )
    safety: SafetyConfig = field(
        default_factory=lambda: SafetyConfig(workspace_min=[0.3, -0.5, 0.38], workspace_max=[1.0, 0.5, 1.0], max_linear_speed=1.0),
        metadata={"help": (
            "the safety filter (safety.*): by default the Fetch workspace over the table in the base frame; the experts move "
            "at up to 1 m/s (4 cm per step)")},
    )

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ConfigError("sim.cameras: map at least one camera name to a MuJoCo camera, e.g. {external: external_camera_0}")
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"sim.image_size: {self.image_size} must be in [16, 1024] pixels")
        if self.episode_steps < 1:
            raise ConfigError("sim.episode_steps: must be at least 1")
        if not 0.0 < self.target_marker_radius <= 0.1:
            raise ConfigError(f"sim.target_marker_radius: {self.target_marker_radius} must be in (0, 0.1] metres")
        if not 0.0 <= self.goal_yaw_range_deg < 90.0:
            raise ConfigError(f"sim.goal_yaw_range_deg: {self.goal_yaw_range_deg} must be in [0, 90) degrees (0: position goals only)")
        if self.goal_yaw_range_deg > 0 and self.task != "FetchReach-v4":
            raise ConfigError(f"sim.goal_yaw_range_deg: orientation goals are built for FetchReach-v4, not {self.task}; set it to 0")
        if not 0.0 < self.yaw_tolerance_deg < 90.0:
            raise ConfigError(f"sim.yaw_tolerance_deg: {self.yaw_tolerance_deg} must be in (0, 90) degrees")


def load_sim_config(path: str | Path, overrides: list[str] | None = None) -> SimConfig:
    """A task's sim YAML (configs/sim/) with ``key=value`` overrides, validated."""
    return load_config(SimConfig, path, overrides)


def sim_reference() -> str:
    """The simulator's section of docs/configuration.md (``vit_policy.config.reference_markdown`` appends it)."""
    return "\n\n".join([
        "## Simulator: `configs/sim/fetch_*.yaml` (`SimConfig`, `sim_tests/configuration.py`)\n\n"
        "A MuJoCo Fetch task seen the way a robot sees it: `vit-policy sim-record`, `sim-eval` and `sim-pretrain --config` "
        "(default: the task's file), a recipe's `sim_config`. `runtime.*` and `safety.*` are the node's parameters "
        "([`parameters.md`](parameters.md)) at the closed loop's defaults:",
        config_table(SimConfig),
        "### `cameras.<name>:` as a mapping (`FreeCameraConfig`)\n\nA fixed camera placed in the world instead of one of the model's:",
        config_table(FreeCameraConfig, "cameras.<name>."),
    ])


if __name__ == "__main__":  # docs/configuration.md: python -m sim_tests.configuration > docs/configuration.md
    print(reference_markdown(sim_reference()), end="")
