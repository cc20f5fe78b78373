"""The simulator's configuration: a MuJoCo Fetch task, its cameras, and the runner's runtime and safety there.

Beside the code that uses it (``fetch_env.py``, ``record.py``, ``closed_loop.py``); loaded and
validated by the generic loader of :mod:`vit_policy.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

from vit_policy.config import ConfigError, load_config
from vit_policy.runtime import RuntimeConfig
from vit_policy.safety import SafetyConfig

SimTask = Literal["FetchReach-v4", "FetchPush-v4", "FetchPickAndPlace-v4"]


@dataclass
class FreeCameraConfig:
    """A fixed camera placed in the world (MuJoCo free camera): looks at ``lookat`` from a distance and angles."""

    lookat: list[float] = field(default_factory=lambda: [1.3, 0.75, 0.55])  # world frame, metres
    distance: float = 1.2  # metres from lookat
    azimuth: float = 90.0  # degrees about world z
    elevation: float = -45.0  # degrees; negative looks down

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

    task: SimTask = "FetchReach-v4"
    # ROS camera name -> a MuJoCo camera of the model (by name) or a fixed free camera (mapping)
    cameras: dict[str, Union[str, FreeCameraConfig]] = field(default_factory=lambda: {"external": "external_camera_0"})
    image_size: int = 96  # rendered frames are image_size x image_size RGB
    episode_steps: int = 50  # env steps per episode (one step = 20 x 2 ms = 40 ms of sim time)
    target_marker_radius: float = 0.03  # radius of the red goal marker in rendered frames (model default 0.02)
    # > 0: the goal is a pose: each episode also draws a gripper yaw (about the base z axis, from the
    # home orientation) in [-range, range]; the marker becomes a bar along that yaw, and success needs
    # the EE orientation within yaw_tolerance_deg of it as well. A bar looks the same turned 180 deg,
    # so the range stays under 90.
    goal_yaw_range_deg: float = 0.0
    yaw_tolerance_deg: float = 15.0
    base_frame: str = "base_link"
    ee_frame: str = "ee_link"
    # closed loop: the runner ticks once per 40 ms env step, inference inline (sim time waits for it)
    runtime: RuntimeConfig = field(
        default_factory=lambda: RuntimeConfig(control_rate_hz=25.0, sync_tolerance_s=0.02, synchronous=True, inference_latency_s=0.0)
    )
    # Fetch workspace over the table in the base frame; the experts move at up to 1 m/s (4 cm per step)
    safety: SafetyConfig = field(
        default_factory=lambda: SafetyConfig(workspace_min=[0.3, -0.5, 0.38], workspace_max=[1.0, 0.5, 1.0], max_linear_speed=1.0)
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

