"""Typed configuration dataclasses and a YAML loader that fails at load time, not mid-run.

Every config is a dataclass whose ``__post_init__`` validates its values. ``from_dict`` builds nested
dataclasses recursively and rejects an unknown key with the nearest valid key, so a typo in a YAML
file is reported with its path and fix before anything is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
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


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


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
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 (PyYAML) reads 1e-4 as a string; YAML 1.2 and users read a number
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


CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


def default_config(relative: str) -> Path:
    """A shipped file under configs/: the source tree, or share/vit_policy/configs of an installed package."""
    import sys

    for root in (CONFIG_ROOT, Path(sys.prefix) / "share" / "vit_policy" / "configs"):
        if (root / relative).is_file():
            return root / relative
    raise FileNotFoundError(f"config {relative!r} not found under {CONFIG_ROOT} or the installed share/vit_policy/configs")


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
ActionFrame = Literal["delta", "absolute"]  # what the policy head regresses (PolicyConfig.action_frame)
PointsFrame = Literal["base", "ee"]  # where the point tokens are measured from (PolicyConfig.points_frame)


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
    # What the head regresses. "delta": each step relative to the pose at observation time (errors in
    # a hold add up step after step: drift). "absolute": the target pose in the base frame, as in
    # Diffusion Policy's position control (a hold is one fixed point). Either way the model returns deltas.
    action_frame: ActionFrame = "delta"
    gripper_loss_weight: float = 0.5
    rotation_loss_weight: float = 1.0
    # > 0: a point head reads every camera's patch tokens and predicts this many 3-D points (goal,
    # object, EE: vit_policy.pretrain), which join the context as tokens. Its weights come with
    # encoder.weights from a pretraining file, and it is frozen with the encoder (encoder.freeze: all).
    points: int = 0
    # False: the context holds no patch tokens, only the points the head reads from them (needs points > 0).
    # The head then acts on where things are and cannot memorise its demonstrations' pixels.
    image_tokens: bool = True
    # "ee": each point enters the context as its offset from the observed EE position (metres / 0.1), so
    # the context is the same wherever on the table the task happens; with action_frame: delta the whole
    # mapping is then translation-invariant. Needs the pretraining file's point statistics.
    points_frame: PointsFrame = "base"

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
        if self.points < 0:
            raise ConfigError(f"points: {self.points} must be >= 0 (0: no point head)")
        if self.points and self.encoder.token_mode != "patches":
            raise ConfigError(f"points: the point head reads patch tokens; set encoder.token_mode: patches (is {self.encoder.token_mode!r})")
        if not self.image_tokens and not self.points:
            raise ConfigError("image_tokens: false leaves the policy blind without point tokens; set points: N (a pretrained point head) or image_tokens: true")
        if self.points_frame == "ee" and not self.points:
            raise ConfigError("points_frame: ee measures the point tokens from the EE, but points is 0; set points: N or points_frame: base")

    @property
    def control_dt_ns(self) -> int:
        return int(round(self.control_dt * 1e9))


def load_policy_config(path: str | Path, overrides: list[str] | None = None) -> PolicyConfig:
    return load_config(PolicyConfig, path, overrides)


# --------------------------------------------------------------------------------------------------
# Simulator (sim_tests/): MuJoCo Fetch tasks
# --------------------------------------------------------------------------------------------------

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
    return load_config(SimConfig, path, overrides)


# --------------------------------------------------------------------------------------------------
# Demonstration data (rosbag2 topic map) and training
# --------------------------------------------------------------------------------------------------


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


def _check_timing(section: str, cfg: Any) -> None:
    """The timing-rule fields shared by data: and runtime: (vit_policy/inputs.py)."""
    if not 0 <= cfg.max_extrapolation_s <= cfg.max_age_s:
        raise ConfigError(f"{section}.max_extrapolation_s: {cfg.max_extrapolation_s} must be in [0, max_age_s] seconds (e.g. 0.02)")
    if not cfg.max_stamp_lead_s >= 0:
        raise ConfigError(f"{section}.max_stamp_lead_s: {cfg.max_stamp_lead_s} must be >= 0 seconds (e.g. 0.2)")
    if not cfg.position_bound_m > 0:
        raise ConfigError(f"{section}.position_bound_m: {cfg.position_bound_m} must be > 0 metres (e.g. 10)")


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
        _check_timing("data", self)
        if not self.gap_split_s > 1.0 / self.control_rate_hz:
            raise ConfigError("data.gap_split_s: must be longer than one control period")

    @property
    def dt_ns(self) -> int:
        return int(round(1e9 / self.control_rate_hz))


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


@dataclass
class TrainConfig:
    """One training run: policy, data, split, optimiser and checkpointing."""

    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    bags: list[str] = field(default_factory=list)  # bag directories / files or glob patterns
    val_bags: list[str] = field(default_factory=list)  # explicit validation bags; else val_fraction of episodes
    val_fraction: float = 0.2
    cache_dir: str = "outputs/cache"
    out_dir: str = "outputs/train"
    epochs: int = 10
    max_steps: int | None = None  # total optimiser steps (the schedule's length); default epochs x steps/epoch
    batch_size: int = 32
    lr_encoder: float = 1e-5
    lr_head: float = 1e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    ema: float = 0.0  # EMA decay of the weights (0: off; e.g. 0.999); checkpoints then hold the EMA weights
    seed: int = 0
    num_workers: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    log_every: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: str | None = None  # a 'last' checkpoint directory, or 'auto' for <out_dir>/last if it exists
    tensorboard: bool = True
    progress: bool = True  # tqdm bars
    # at the end: fit the OOD monitor on the training split, threshold = this quantile of the validation scores (null: none)
    ood_quantile: float | None = 0.99

    def __post_init__(self) -> None:
        if not self.bags:
            raise ConfigError("bags: list the rosbag2 recordings to train on (directories or glob patterns)")
        missing = [c for c in self.policy.cameras if c not in self.data.cameras]
        if missing:
            raise ConfigError(f"data.cameras: no topic for policy camera(s) {missing}; have {sorted(self.data.cameras)}")
        if abs(self.data.dt_ns - self.policy.control_dt_ns) > 1000:
            raise ConfigError(
                f"data.control_rate_hz ({self.data.control_rate_hz} Hz) and policy.control_dt ({self.policy.control_dt} s) "
                "disagree: the chunk steps are the control period; set control_dt = 1 / control_rate_hz"
            )
        if not self.val_bags and not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction: must be in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size: must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("max_steps: must be >= 1 (or null for epochs x steps per epoch)")
        if not 0.0 <= self.ema < 1.0:
            raise ConfigError("ema: decay must be in [0, 1) (0 disables EMA)")
        if self.lr_encoder < 0 or self.lr_head <= 0:
            raise ConfigError("lr_encoder must be >= 0 and lr_head > 0")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.num_workers < 0 or self.log_every < 1:
            raise ConfigError("warmup_steps, grad_clip, num_workers must be >= 0 and log_every >= 1")
        if self.ood_quantile is not None and not 0.0 < self.ood_quantile <= 1.0:
            raise ConfigError(f"ood_quantile: {self.ood_quantile} must be in (0, 1] (e.g. 0.99), or null to fit no OOD monitor")


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)


# --------------------------------------------------------------------------------------------------
# Runtime and safety (PolicyRunner, the ROS node, replay and the simulator)
# --------------------------------------------------------------------------------------------------


@dataclass
class RuntimeConfig:
    """How the runner turns streamed inputs into a command each control tick."""

    control_rate_hz: float = 10.0  # control ticks per second
    sync_tolerance_s: float = 0.05  # other cameras within this of the reference frame; poses around it at most 2x this apart
    max_age_s: float = 0.5  # an input older than this at tick time is stale -> stop
    max_extrapolation_s: float = 0.02  # the pose may be extrapolated this far past the newest one; else the frame waits
    max_stamp_lead_s: float = 0.2  # a stamp further ahead of its arrival is rejected (clocks out of sync)
    position_bound_m: float = 10.0  # an EE position further than this from the base on any axis is rejected
    strategy: Literal["receding", "ensemble"] = "ensemble"
    execute_steps: int = 4  # receding horizon: steps executed before the next chunk takes over
    ensemble_m: float = 0.1  # temporal ensembling weight exp(-m * i), i = 0 for the oldest chunk (ACT)
    inference_latency_s: float | None = None  # None: measured; a value is used as the latency estimate
    synchronous: bool = False  # inference inline in tick (replay / simulation determinism)
    # Inference backend (vit_policy/deploy.py load_policy): torch, or onnxruntime on the graph that `vit-policy export`
    # wrote into the checkpoint directory (onnx_file: policy.onnx, or policy.int8.onnx from --int8). providers:
    # ONNX Runtime execution providers; auto = TensorRT and CUDA where this onnxruntime has them, then the CPU.
    backend: Literal["torch", "onnxruntime"] = "torch"
    onnx_file: str = "policy.onnx"
    providers: list[str] = field(default_factory=lambda: ["auto"])

    def __post_init__(self) -> None:
        if not self.onnx_file.endswith(".onnx") or "/" in self.onnx_file:
            raise ConfigError(f"runtime.onnx_file: {self.onnx_file!r} must name a .onnx file in the checkpoint directory "
                              "(policy.onnx or policy.int8.onnx)")
        if not self.providers:
            raise ConfigError("runtime.providers: list ONNX Runtime execution providers, or [auto]")
        if not self.control_rate_hz > 0:
            raise ConfigError(f"runtime.control_rate_hz: {self.control_rate_hz} must be > 0 Hz")
        if self.sync_tolerance_s < 0 or not self.max_age_s > 0:
            raise ConfigError("runtime.sync_tolerance_s must be >= 0 and runtime.max_age_s > 0 seconds")
        _check_timing("runtime", self)
        if self.execute_steps < 1:
            raise ConfigError(f"runtime.execute_steps: {self.execute_steps} must be >= 1")
        if self.ensemble_m < 0:
            raise ConfigError(f"runtime.ensemble_m: {self.ensemble_m} must be >= 0 (0 = plain average)")
        if self.inference_latency_s is not None and self.inference_latency_s < 0:
            raise ConfigError("runtime.inference_latency_s: must be >= 0 seconds, or null to measure it")

    @property
    def control_period_ns(self) -> int:
        return int(round(1e9 / self.control_rate_hz))


@dataclass
class SafetyConfig:
    """Limits applied to every command; violations are clamped, non-finite values stop the arm."""

    workspace_min: list[float] = field(default_factory=lambda: [-1.0, -1.0, 0.0])  # m, base frame
    workspace_max: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.5])
    max_linear_speed: float = 0.25  # m/s
    max_angular_speed: float = 1.0  # rad/s
    max_step: float = 0.05  # m: largest position change commanded in one control tick
    stop_mode: Literal["zero_twist", "hold_pose"] = "zero_twist"
    ood_stop: bool = False  # stop while a camera's frame is out of distribution (needs the checkpoint's OOD statistics)
    ood_margin: float = 1.0  # a frame is out of distribution above margin x the checkpoint's calibrated threshold

    def __post_init__(self) -> None:
        for name in ("workspace_min", "workspace_max"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, (int, float)) and v == v for v in value):
                raise ConfigError(f"safety.{name}: expected 3 numbers [x, y, z] in metres, got {value}")
        if any(lo >= hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ConfigError(f"safety.workspace_min {self.workspace_min} must be below workspace_max {self.workspace_max} on every axis")
        for name in ("max_linear_speed", "max_angular_speed", "max_step", "ood_margin"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"safety.{name}: {getattr(self, name)} must be > 0")


# --------------------------------------------------------------------------------------------------
# Offline replay evaluation (vit_policy/replay.py)
# --------------------------------------------------------------------------------------------------

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


@dataclass
class NodeTopicsConfig:
    """Topic names of the policy node (relative names resolve in the node namespace and can be remapped)."""

    image: str = "/camera/{camera}/image_raw"  # {camera} is each policy camera; '/compressed' is appended for compressed
    ee_pose: str = "/ee_pose"  # geometry_msgs/PoseStamped in base_frame (pose_source: pose)
    joint_states: str = "/joint_states"
    twist: str = "cmd/twist"
    pose: str = "cmd/pose"
    trajectory: str = "cmd/trajectory"
    gripper: str = "cmd/gripper"
    chunk: str = "policy/chunk"
    diagnostics: str = "/diagnostics"

    def __post_init__(self) -> None:
        if "{camera}" not in self.image:
            raise ConfigError(f"topics.image: {self.image!r} must contain '{{camera}}' (e.g. /camera/{{camera}}/image_raw)")


@dataclass
class NodeConfig:
    """The ROS 2 policy node's parameters (configs/ros/policy_node.yaml, under policy_node: ros__parameters:)."""

    checkpoint: str = ""  # trained checkpoint directory (config.yaml, model.safetensors, stats.safetensors)
    allow_untrained: bool = False  # plumbing checks only: random weights from policy_config, warned at every enable
    policy_config: str = ""  # policy YAML for allow_untrained
    device: str = "cpu"
    threads: int = 2  # torch CPU threads for inference
    output_mode: Literal["twist", "pose", "trajectory"] = "twist"
    base_frame: str = "base_link"
    ee_frame: str = "ee_link"
    pose_source: Literal["pose", "tf"] = "pose"
    image_transport: Literal["raw", "compressed"] = "raw"
    image_qos: Literal["sensor_data", "reliable"] = "sensor_data"
    gripper_joints: list[str] = field(default_factory=list)  # empty: no gripper feedback (opening taken as 1.0)
    gripper_closed: float = 0.0  # sum of gripper_joints positions when closed
    gripper_open: float = 0.08  # ... and when fully open
    diagnostics_rate_hz: float = 1.0
    instruction: str = ""  # for language-conditioned policies
    topics: NodeTopicsConfig = field(default_factory=NodeTopicsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self) -> None:
        if not self.checkpoint and not self.allow_untrained:
            raise ConfigError("checkpoint: set the trained checkpoint directory (or allow_untrained: true with policy_config for plumbing checks)")
        if self.allow_untrained and not self.checkpoint and not self.policy_config:
            raise ConfigError("policy_config: allow_untrained needs a policy YAML to build the untrained model from")
        if self.gripper_joints and self.gripper_open == self.gripper_closed:
            raise ConfigError("gripper_open and gripper_closed: must differ")
        if self.threads < 1 or not self.diagnostics_rate_hz > 0:
            raise ConfigError("threads must be >= 1 and diagnostics_rate_hz > 0")
