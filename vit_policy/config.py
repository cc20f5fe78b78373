"""Typed configuration dataclasses and a YAML loader that fails at load time, not mid-run.

Every config is a dataclass whose ``__post_init__`` validates its values. ``from_dict`` builds nested
dataclasses recursively and rejects an unknown key with the nearest valid key, so a typo in a YAML
file is reported with its path and fix before anything is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field and the fix."""


# --------------------------------------------------------------------------------------------------
# Generic machinery
# --------------------------------------------------------------------------------------------------


def _check_choice(where: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, recursing into dataclasses, lists and dicts."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in get_args(tp):
                return None
            raise ConfigError(f"{where}: must not be null")
        last: Exception | None = None
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:  # try the next member of the union
                last = exc
        raise last if last else ConfigError(f"{where}: cannot interpret {value!r}")
    if origin is Literal:
        _check_choice(where, value, get_args(tp))
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys fail with the nearest valid key."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {sorted(names)}"
            raise ConfigError(f"unknown config key {path!r}{hint}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where + ': ' if where else ''}{exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain-YAML-serialisable dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a mapping")
    node[keys[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (for example train.epochs=5)")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, naming the file in any error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def load_config(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Load a YAML file into config dataclass ``cls``; errors name the file and the key."""
    data = apply_overrides(read_yaml(path), overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------------------------------
# Policy model
# --------------------------------------------------------------------------------------------------

TokenMode = Literal["cls", "mean", "patches", "pooled"]


@dataclass
class EncoderConfig:
    """Image encoder: a timm ViT-family model or an open_clip visual tower."""

    family: Literal["timm", "open_clip"] = "timm"
    name: str = "vit_small_patch16_224"
    img_size: int | None = None  # None: the model's native resolution
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
    normalization: Literal["mean_std", "min_max"] = "mean_std"

    def __post_init__(self) -> None:
        if self.history < 0:
            raise ConfigError("pose.history: must be >= 0")


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
    gripper_loss_weight: float = 0.5
    rotation_loss_weight: float = 1.0

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

    @property
    def control_dt_ns(self) -> int:
        return int(round(self.control_dt * 1e9))


def load_policy_config(path: str | Path, overrides: list[str] | None = None) -> PolicyConfig:
    return load_config(PolicyConfig, path, overrides)
