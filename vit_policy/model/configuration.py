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

    family: Literal["timm", "open_clip"] = field(default="timm", metadata={"help": (
        "model library: timm (ViT family, e.g. DINOv2) or open_clip (a CLIP visual tower)")})
    name: str = field(default="vit_small_patch16_224", metadata={"help": (
        "model name in that library (timm.create_model / open_clip architecture, e.g. vit_tiny_patch16_224, ViT-B-32)")})
    img_size: int | None = field(default=None, metadata={"help": (
        "square input resolution the frames are resized to (px, >= 16); null: the model's native resolution")})
    patch_size: int | None = field(default=None, metadata={"help": (
        "ViT patch size (px, >= 2, divides img_size; timm only); null: the model's own. Smaller: finer tokens, more compute")})
    pretrained: bool = field(default=False, metadata={"help": (
        "download pretrained weights from the hub (online machines only); not together with weights")})
    weights: str | None = field(default=None, metadata={"help": (
        "local weights file (.safetensors, .bin, an open_clip checkpoint or a sim-pretrain file); null: none")})
    token_mode: TokenMode = field(default="pooled", metadata={"help": (
        "tokens per camera the policy sees: cls (the class token), mean (average of the patches), patches (every "
        "patch token; needed by point tokens) or pooled (num_pooled_tokens learned queries attending over the patches)")})
    num_pooled_tokens: int = field(default=8, metadata={"help": "learned query tokens per camera with token_mode: pooled (>= 1)"})
    freeze: Literal["none", "all", "last_n"] = field(default="none", metadata={"help": (
        "which encoder weights train: none (all train), all (frozen) or last_n (only the last trainable_blocks blocks and the final norm)")})
    trainable_blocks: int = field(default=2, metadata={"help": "blocks left trainable with freeze: last_n (>= 0)"})
    shared: bool = field(default=True, metadata={"help": (
        "true: one encoder for all cameras (told apart by learned camera embeddings); false: one encoder per camera")})

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

    enabled: bool = field(default=False, metadata={"help": "condition the policy on a text instruction (one extra context token)"})
    model: str = field(default="ViT-B-32", metadata={"help": "open_clip architecture whose (frozen) text tower encodes the instruction"})
    pretrained: str | None = field(default=None, metadata={"help": (
        "open_clip pretrained tag to download (online machines only, e.g. openai); null: none")})
    weights: str | None = field(default=None, metadata={"help": "local open_clip checkpoint file for the text tower; null: none"})
    instruction: str = field(default="", metadata={"help": "default instruction, used when an observation carries none"})


@dataclass
class PoseConfig:
    """End-effector pose tokens."""

    rotation: Literal["rot6d", "quat", "rotvec"] = field(default="rot6d", metadata={"help": (
        "how the EE orientation enters the model: rot6d (two rotation-matrix columns, continuous), quat (x, y, z, w) or rotvec")})
    tokens: Literal["per_component", "single"] = field(default="per_component", metadata={"help": (
        "per_component: one token each for position, rotation, gripper and each history pose; single: one token for the whole state")})
    history: int = field(default=0, metadata={"help": "number of past EE poses the model also reads, each as a delta to the current pose (>= 0)"})
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

    cameras: list[str] = field(default_factory=lambda: ["front"], metadata={"help": (
        "camera names the policy reads, unique (each needs a topic in data.cameras / the node's topics.image)")})
    encoder: EncoderConfig = field(default_factory=EncoderConfig, metadata={"help": "the image encoder (encoder.*)"})
    pose: PoseConfig = field(default_factory=PoseConfig, metadata={"help": "the EE pose tokens (pose.*)"})
    language: LanguageConfig = field(default_factory=LanguageConfig, metadata={"help": "optional language conditioning (language.*)"})
    d_model: int = field(default=256, metadata={"help": "width of the fusion transformer's tokens (divisible by n_heads)"})
    n_heads: int = field(default=8, metadata={"help": "attention heads of the fusion transformer"})
    n_encoder_layers: int = field(default=2, metadata={"help": "self-attention layers over the context tokens (>= 0)"})
    n_decoder_layers: int = field(default=2, metadata={"help": "decoder layers in which the chunk's step queries attend to the context (>= 1)"})
    mlp_ratio: float = field(default=4.0, metadata={"help": "feed-forward width of each transformer layer, as a multiple of d_model"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the fusion transformer, in [0, 1)"})
    chunk_size: int = field(default=20, metadata={"help": "K: future steps each inference predicts (an action chunk, >= 1)"})
    control_dt: float = field(default=0.1, metadata={"help": (
        "time between chunk steps (s, > 0); must match data.control_rate_hz in training and runtime.control_rate_hz on the robot")})
    action_frame: ActionFrame = field(default="delta", metadata={"help": (
        "what the head regresses: delta (each step relative to the pose at observation time; errors in a hold add up: drift) "
        "or absolute (the target pose in the base frame, as Diffusion Policy's position control: a hold is one fixed point); "
        "either way the model returns deltas")})
    gripper_loss_weight: float = field(default=0.5, metadata={"help": "weight of the gripper term in the loss (the translation term's is 1)"})
    rotation_loss_weight: float = field(default=1.0, metadata={"help": "weight of the rotation term in the loss (the translation term's is 1)"})
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

