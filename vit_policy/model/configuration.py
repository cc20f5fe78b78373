"""The policy's configuration: image encoder, language, pose tokens, point tokens, fusion and head.

Beside ``policy.py`` (which builds the model from it), as LeRobot keeps ``configuration_act.py`` next
to ``modeling_act.py``. Loaded and validated by the generic loader of :mod:`vit_policy.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vit_policy.config import ConfigError, load_config

TokenMode = Literal["cls", "mean", "patches", "pooled"]
ActionFrame = Literal["delta", "absolute"]  # what the policy head regresses (PolicyConfig.action_frame)
PointsFrame = Literal["base", "ee"]  # where the point tokens are measured from (PointTokenConfig.frame)
Normalization = Literal["mean_std", "min_max"]  # how statistics centre and scale a vector (NormStats.center_scale)


@dataclass
class EncoderConfig:
    """Image encoder: a timm ViT-family model or an open_clip visual tower."""

    family: Literal["timm", "open_clip"] = "timm"
    name: str = "vit_small_patch16_224"
    img_size: int | None = None  # None: the model's native resolution
    patch_size: int | None = None  # timm only; None: the model's own. Smaller patches: finer tokens, more compute
    pretrained: bool = False  # download from the hub (online users only)
    weights: str | None = None  # local .safetensors / .bin / open_clip checkpoint
    token_mode: TokenMode = "pooled"
    num_pooled_tokens: int = 8
    freeze: Literal["none", "all", "last_n"] = "none"
    trainable_blocks: int = 2  # with freeze: last_n
    shared: bool = True  # one encoder for all cameras (+ camera embeddings) or one per camera

    def __post_init__(self) -> None:
        if self.pretrained and self.weights:
            raise ConfigError("encoder: set either pretrained: true or weights: <path>, not both")
        if self.img_size is not None and self.img_size < 16:
            raise ConfigError(f"encoder.img_size: {self.img_size} is too small (at least 16)")
        if self.patch_size is not None:
            if self.family != "timm":
                raise ConfigError("encoder.patch_size: only timm models take a patch size; remove it for open_clip")
            if self.patch_size < 2 or (self.img_size is not None and self.img_size % self.patch_size):
                raise ConfigError(f"encoder.patch_size: {self.patch_size} must be >= 2 and divide encoder.img_size ({self.img_size})")
        if self.num_pooled_tokens < 1:
            raise ConfigError("encoder.num_pooled_tokens: must be at least 1")
        if self.trainable_blocks < 0:
            raise ConfigError("encoder.trainable_blocks: must be >= 0")


@dataclass
class LanguageConfig:
    """Optional language conditioning: an open_clip text tower turns the instruction into one token."""

    enabled: bool = False
    model: str = "ViT-B-32"
    pretrained: str | None = None  # open_clip pretrained tag (online users)
    weights: str | None = None  # local open_clip checkpoint
    instruction: str = ""  # default instruction when an observation carries none


@dataclass
class PoseConfig:
    """End-effector pose tokens."""

    rotation: Literal["rot6d", "quat", "rotvec"] = "rot6d"
    tokens: Literal["per_component", "single"] = "per_component"
    history: int = 0  # number of past poses, given as deltas to the current pose
    normalization: Normalization = field(default="mean_std", metadata={"help": "how the pose statistics normalise the pose tokens' input (the actions: PolicyConfig.action_normalization)"})

    def __post_init__(self) -> None:
        if self.history < 0:
            raise ConfigError("pose.history: must be >= 0")


@dataclass
class PointTokenConfig:
    """Point tokens: a point head reads every camera's patch tokens and predicts ``count`` 3-D points (goal,
    object, EE: vit_policy.pretrain), which join the context as tokens. Its weights come with
    encoder.weights from a pretraining file, and it is frozen with the encoder (encoder.freeze: all)."""

    count: int = field(default=0, metadata={"help": "number of 3-D points the pretrained head predicts (>= 1; the pretraining file's)"})
    frame: PointsFrame = field(default="base", metadata={"help": (
        "base: the points in the base frame; ee: each point as its offset from the observed EE position (metres / 0.1), "
        "so the context is the same wherever on the table the task happens (with action_frame: delta the whole mapping "
        "is then translation-invariant); needs the pretraining file's point statistics")})
    image_tokens: bool = field(default=True, metadata={"help": (
        "false: the context holds no patch tokens, only the points the head reads from them; the policy then acts on "
        "where things are and cannot memorise its demonstrations' pixels")})

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"points.count: {self.count} must be >= 1 (the pretrained head's number of points); "
                              "points: null for no point tokens")


@dataclass
class PolicyConfig:
    """The whole policy: encoders, pose tokens, fusion transformer and action-chunk head."""

    cameras: list[str] = field(default_factory=lambda: ["front"])
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    d_model: int = 256
    n_heads: int = 8
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    mlp_ratio: float = 4.0
    dropout: float = 0.1
    chunk_size: int = 20  # K
    control_dt: float = 0.1  # seconds between chunk steps
    # What the head regresses. "delta": each step relative to the pose at observation time (errors in
    # a hold add up step after step: drift). "absolute": the target pose in the base frame, as in
    # Diffusion Policy's position control (a hold is one fixed point). Either way the model returns deltas.
    action_frame: ActionFrame = "delta"
    gripper_loss_weight: float = 0.5
    rotation_loss_weight: float = 1.0
    action_normalization: Normalization | None = field(default=None, metadata={"help": (
        "how the action statistics normalise the head's targets; null: as pose.normalization (which set both before "
        "this field existed), resolved when the config is built")})
    points: PointTokenConfig | None = field(default=None, metadata={"help": (
        "point tokens from a pretrained point head (vit-policy sim-pretrain), e.g. {count: 3, frame: ee}; null: none")})

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ConfigError("cameras: list at least one camera name")
        if len(set(self.cameras)) != len(self.cameras):
            raise ConfigError(f"cameras: names must be unique, got {self.cameras}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.chunk_size < 1:
            raise ConfigError("chunk_size: must be at least 1")
        if not self.control_dt > 0:
            raise ConfigError("control_dt: must be > 0 seconds")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout: must be in [0, 1)")
        if self.n_encoder_layers < 0 or self.n_decoder_layers < 1:
            raise ConfigError("n_encoder_layers must be >= 0 and n_decoder_layers >= 1")
        if self.points is not None and self.encoder.token_mode != "patches":
            raise ConfigError(f"points: the point head reads patch tokens; set encoder.token_mode: patches (is {self.encoder.token_mode!r})")
        if self.action_normalization is None:
            self.action_normalization = self.pose.normalization

    @staticmethod
    def upgrade(data: dict[str, Any]) -> dict[str, Any]:
        """Read the older flat point-token keys (``points: N``, ``image_tokens``, ``points_frame``) into ``points:``.

        Checkpoints saved before point tokens became one sub-config hold them; their errors stay as they were.
        """
        legacy = type(data.get("points")) is int or "image_tokens" in data or "points_frame" in data
        if not legacy:
            return data
        count = data.pop("points", 0)
        image_tokens, frame = data.pop("image_tokens", True), data.pop("points_frame", "base")
        if isinstance(count, dict) or count is None:
            raise ConfigError("image_tokens and points_frame: now points.image_tokens and points.frame, "
                              "e.g. points: {count: 3, frame: ee, image_tokens: false}")
        if type(count) is not int or count < 0:
            raise ConfigError(f"points: {count!r} must be >= 0 (0: no point head)")
        if count:
            data["points"] = {"count": count, "image_tokens": image_tokens, "frame": frame}
        elif image_tokens is False:
            raise ConfigError("image_tokens: false leaves the policy blind without point tokens; "
                              "set points: {count: N, image_tokens: false} (a pretrained point head) or image_tokens: true")
        elif frame == "ee":
            raise ConfigError("points_frame: ee measures the point tokens from the EE, but points is 0; "
                              "set points: {count: N, frame: ee} or points_frame: base")
        else:
            data["points"] = None
        return data

    @property
    def image_tokens(self) -> bool:
        """Whether the context holds the cameras' patch tokens (false only with points.image_tokens: false)."""
        return self.points is None or self.points.image_tokens

    @property
    def control_dt_ns(self) -> int:
        return int(round(self.control_dt * 1e9))


def load_policy_config(path: str | Path, overrides: list[str] | None = None) -> PolicyConfig:
    """A policy YAML (configs/policy/) with ``key=value`` overrides, validated."""
    return load_config(PolicyConfig, path, overrides)

