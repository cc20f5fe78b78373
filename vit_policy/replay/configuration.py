"""ReplayConfig: which modes replay runs, with the node's runtime and safety, and how it scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vit_policy.config import ConfigError
from vit_policy.data.configuration import DataConfig
from vit_policy.runtime import RuntimeConfig
from vit_policy.safety import SafetyConfig

ReplayMode = Literal["faithful", "batch"]


@dataclass
class ReplayConfig:
    """Replay of checkpoints on recorded bags: the bag's topics, the node's runtime and safety, scoring.

    ``runtime.inference_latency_s`` is the latency of the replayed node: null uses the latency measured
    during the replay (this machine's), a value (e.g. the robot's) delays each chunk by that much.
    """

    data: DataConfig = field(default_factory=DataConfig, metadata={"help": (
        "the bags' topic map and sampling rules (data.*, as in training; its control rate and timing rule also set runtime's unless given)")})
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig, metadata={"help": (
        "the replayed node's runtime (runtime.*, as the node's parameters)")})
    safety: SafetyConfig = field(default_factory=SafetyConfig, metadata={"help": (
        "the replayed node's safety filter (safety.*, as the node's parameters)")})
    modes: list[ReplayMode] = field(default_factory=lambda: ["faithful", "batch"], metadata={"help": (
        "faithful (the bag's messages through the node's runner in bag time) and/or batch (the extracted frames "
        "through the model in batches), each at most once")})
    tolerance_mm: float = field(default=10.0, metadata={"help": (
        "a step is within tolerance when its translation error is at most this (mm, > 0) and its rotation error at most tolerance_deg")})
    tolerance_deg: float = field(default=5.0, metadata={"help": "rotation error bound of a step within tolerance (degrees, > 0)"})
    batch_size: int = field(default=32, metadata={"help": "frames per forward pass in batch mode (>= 1)"})
    attention_frames: int = field(default=4, metadata={"help": "sampled frames shown with attention overlays in report.html (>= 0)"})

    def __post_init__(self) -> None:
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ConfigError(f"modes: list faithful and/or batch once each, got {self.modes}")
        if abs(self.runtime.control_period_ns - self.data.dt_ns) > 1000:
            raise ConfigError(f"runtime.control_rate_hz ({self.runtime.control_rate_hz} Hz) must equal data.control_rate_hz "
                              f"({self.data.control_rate_hz} Hz): chunks are scored against labels on the same control grid")
        if not (self.tolerance_mm > 0 and self.tolerance_deg > 0):
            raise ConfigError("tolerance_mm and tolerance_deg: must be > 0")
        if self.batch_size < 1 or self.attention_frames < 0:
            raise ConfigError("batch_size must be >= 1 and attention_frames >= 0")
