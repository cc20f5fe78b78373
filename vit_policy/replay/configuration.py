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

    data: DataConfig = field(default_factory=DataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    modes: list[ReplayMode] = field(default_factory=lambda: ["faithful", "batch"])
    tolerance_mm: float = 10.0  # a step is within tolerance when both errors are below these
    tolerance_deg: float = 5.0
    batch_size: int = 32  # batch mode
    attention_frames: int = 4  # sampled frames with attention overlays in the report

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
