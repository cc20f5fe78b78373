"""Trainer: rosbag2 demonstrations -> episode cache -> Dataset -> VisuomotorPolicy checkpoints.

One process, or several under ``torchrun`` (DistributedDataParallel: gloo on CPU, nccl on GPU; each
rank trains on its own shard of every epoch; ``batch_size`` is per process; only rank 0 extracts the
cache, validates and writes). AdamW with separate encoder / head learning rates (no weight decay on
biases and norms), linear warmup then cosine decay, gradient clipping, bf16 autocast on CUDA,
optional EMA weights. Training is counted in optimiser steps, and every source of randomness
(shuffling, augmentation, dropout) is restored on resume, so ``N`` steps + resume ``N`` steps gives
the weights of ``2N`` uninterrupted steps.

Output directory: ``last/`` and ``best/`` (lowest validation loss) are checkpoint directories that
``load_checkpoint`` (vit_policy/model/checkpoint.py) loads; ``last/trainer_state.pt`` (tensors and numbers only,
read with ``weights_only=True``) holds what resuming needs; ``tb/`` has TensorBoard scalars.

:func:`train` runs one :class:`Trainer`. Its loss scores predictions (``policy.action_loss``), so validation
scores the mean-action predictor (:func:`mean_action_prediction`) with the very same loss: ``val/baseline_loss``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from vit_policy.config import ConfigError, load_config, save_config, to_dict
from vit_policy.data.configuration import AugmentConfig, DataConfig
from vit_policy.data.bags import Episode
from vit_policy.data.cache import load_or_extract
from vit_policy.data.dataset import EpisodeDataset, EpochBatchSampler, dataset_stats, split_episodes
from vit_policy.geometry import geodesic_deg, rot6d_to_quat
from vit_policy.model.checkpoint import build_policy, read_stats, save_checkpoint
from vit_policy.model.configuration import PolicyConfig
from vit_policy.model.policy import VisuomotorPolicy
from vit_policy.observation import ObservationSpec

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
RESUME_FIX = "resume from another copy of the run's last/ directory, or start a new run (resume: null or a new out_dir)"


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """One training run: policy, data, split, optimiser and checkpointing."""

    policy: PolicyConfig = field(default_factory=PolicyConfig, metadata={"help": "the policy model (policy.*; as in configs/policy/)"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the bags' topic map and sampling rules (data.*)"})
    bags: list[str] = field(default_factory=list, metadata={"help": (
        "demonstrations to train on (at least one): rosbag2 directories or .db3 / .mcap files, LeRobotDataset v3 "
        "directories (hf://datasets/<org>/<name>: from the hub), or glob patterns")})
    val_bags: list[str] = field(default_factory=list, metadata={"help": (
        "explicit validation bags (as bags); empty: val_fraction of the episodes is held out")})
    val_fraction: float = field(default=0.2, metadata={"help": "share of the episodes held out for validation without val_bags, in [0, 1)"})
    cache_dir: str = field(default="outputs/cache", metadata={"help": (
        "directory of the extracted episode cache (reused while bag, data config, chunk_size and image size are unchanged); "
        "where it cannot be written (full disk), a warning names it and training goes on from memory")})
    out_dir: str = field(default="outputs/train", metadata={"help": "run directory: last/ and best/ checkpoints, tb/ TensorBoard scalars"})
    epochs: int = field(default=10, metadata={"help": "passes over the training episodes (>= 1); sets the schedule's length unless max_steps"})
    max_steps: int | None = field(default=None, metadata={"help": (
        "total optimiser steps, the schedule's length (>= 1); null: epochs x steps per epoch")})
    batch_size: int = field(default=32, metadata={"help": "samples per optimiser step, per process under torchrun (>= 1)"})
    lr_encoder: float = field(default=1e-5, metadata={"help": "peak AdamW learning rate of the image encoder (>= 0)"})
    lr_head: float = field(default=1e-4, metadata={"help": "peak AdamW learning rate of everything else: tokens, transformer, head (> 0)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay of weight matrices (none on biases, norms, embeddings)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear learning-rate warmup steps before the cosine decay to 0 (>= 0)"})
    grad_clip: float = field(default=1.0, metadata={"help": "max gradient norm (>= 0; 0 disables clipping)"})
    ema: float = field(default=0.0, metadata={"help": (
        "EMA decay of the weights, in [0, 1) (0: off; e.g. 0.999); checkpoints then hold the EMA weights")})
    seed: int = field(default=0, metadata={"help": "seed of the split, initialisation, shuffling, augmentation and dropout"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes (>= 0; 0: load in the training process)"})
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"help": "training-sample augmentations (augment.*)"})
    log_every: int = field(default=10, metadata={"help": "write TensorBoard scalars every this many optimiser steps (>= 1)"})
    device: str = field(default="auto", metadata={"help": "torch device: auto (CUDA when available), cpu, cuda or cuda:N"})
    resume: str | None = field(default=None, metadata={"help": (
        "a last/ checkpoint directory to resume from, or auto (<out_dir>/last if it exists); null: a new run")})
    tensorboard: bool = field(default=True, metadata={"help": "write TensorBoard scalars under <out_dir>/tb"})
    progress: bool = field(default=True, metadata={"help": "show tqdm progress bars"})
    points_loss: float = field(default=0.0, metadata={"help": (
        "weight (>= 0) of an auxiliary loss that keeps the point head on the hindsight labels it was pretrained on "
        "(the points named in policy.encoder.weights, computed from each training episode) while the encoder trains; 0: off")})
    ood_quantile: float | None = field(default=0.99, metadata={"help": (
        "at the end, fit the OOD monitor on the training split with its threshold at this quantile of the validation "
        "scores, in (0, 1]; null: fit none")})

    def __post_init__(self) -> None:
        if not self.bags:
            raise ConfigError("bags: list the rosbag2 recordings to train on (directories or glob patterns)")
        missing = [c for c in self.policy.cameras if c not in self.data.cameras]
        if missing:
            raise ConfigError(f"data.cameras: no topic for policy camera(s) {missing}; have {sorted(self.data.cameras)}")
        self.observation_spec.check_period(self.data.dt_ns, "data.control_rate_hz")  # labels are chunk steps
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
        if self.points_loss < 0:
            raise ConfigError(f"points_loss: {self.points_loss} must be >= 0 (0: off)")
        if self.points_loss and (self.policy.points is None or not self.policy.encoder.weights):
            raise ConfigError("points_loss: needs a pretrained point head: set policy.points and policy.encoder.weights "
                              "(a vit-policy pretrain file), or points_loss: 0")
        if self.ood_quantile is not None and not 0.0 < self.ood_quantile <= 1.0:
            raise ConfigError(f"ood_quantile: {self.ood_quantile} must be in (0, 1] (e.g. 0.99), or null to fit no OOD monitor")


    @property
    def observation_spec(self) -> ObservationSpec:
        """What the trained policy will see: its config's cameras and period, the data's frame and gripper range."""
        return ObservationSpec.of(self.policy, self.data)


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A training YAML (configs/train/) with ``key=value`` overrides, validated."""
    return load_config(TrainConfig, path, overrides)


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


@dataclass
class Dist:
    """Where this process sits in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def setup_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available; use device=cpu or auto")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def expand_bags(patterns: list[str], field_name: str = "bags") -> list[Path]:
    """Bag paths from paths or glob patterns, in sorted order; a pattern matching nothing is an error.

    ``hf://datasets/<org>/<name>`` is a LeRobot dataset on the Hugging Face hub: its local snapshot (downloaded once).
    """
    from vit_policy.data.bags import drop_non_bags
    from vit_policy.data.lerobot import HUB_PREFIX, from_hub

    out: list[Path] = []
    for pat in patterns:
        if pat.startswith(HUB_PREFIX):  # a LeRobot dataset on the hub (users who are online)
            out.append(from_hub(pat))
            continue
        hits = sorted(glob.glob(os.path.expanduser(pat))) if glob.has_magic(pat) else [os.path.expanduser(pat)]
        bags = drop_non_bags(hits)
        if not bags or not bags[0].exists():
            raise FileNotFoundError(f"{field_name}: {pat!r} matches no bag (give rosbag2 directories, .db3/.mcap files or a glob)")
        out.extend(bags)
    return out


# --------------------------------------------------------------------------------------------------
# Optimisation pieces
# --------------------------------------------------------------------------------------------------


def build_optimizer(policy: VisuomotorPolicy, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over four groups: encoder / head x decayed (matrices) / not decayed (biases, norms, embeddings)."""
    encoder, head = policy.param_groups()
    groups = []
    for params, lr in ((encoder, cfg.lr_encoder), (head, cfg.lr_head)):
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups += [{"params": decay, "lr": lr, "weight_decay": cfg.weight_decay}, {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], betas=(0.9, 0.95))


def lr_lambda(warmup: int, total: int) -> Any:
    """Linear warmup to the base rate, then cosine decay to 0 at ``total`` steps."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class EMA:
    """Exponential moving average of the floating-point weights (buffers copied as they are)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the EMA weights into ``model`` (evaluation, checkpoints)."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(backup)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = {c: t.to(device, non_blocking=True) for c, t in v.items()}
        elif isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def mean_action_prediction(policy: VisuomotorPolicy, action_mean: torch.Tensor, gripper_mean: float) -> torch.Tensor:
    """The mean-action predictor's head output (K, 10): the training-mean action (in the head's frame, normalised)
    and the logit of the mean gripper target. Scored by the policy's own loss, it is the baseline a policy has to beat."""
    grip_logit = math.log(max(gripper_mean, 1e-4) / max(1.0 - gripper_mean, 1e-4))
    normalized = policy.normalize_action(action_mean.to(policy.device))  # (K, 9)
    return torch.cat([normalized, normalized.new_full((normalized.shape[0], 1), grip_logit)], -1)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def load_episodes(cfg: TrainConfig, image_size: tuple[int, int], ddp: Dist) -> tuple[list[Episode], list[Episode]]:
    """(train, validation) episodes; rank 0 fills the cache first, the other ranks then read it."""
    bags = expand_bags(cfg.bags)
    val_bags = expand_bags(cfg.val_bags, "val_bags") if cfg.val_bags else []

    from vit_policy.data import lerobot

    def read(paths: list[Path]) -> list[Episode]:
        out: list[Episode] = []
        for p in paths:  # a LeRobotDataset v3 directory is read directly (its features mapped through cfg.data)
            if lerobot.is_dataset(p):
                out += lerobot.read_episodes(p, cfg.data, cfg.policy.chunk_size, image_size)
            else:
                out += load_or_extract(p, cfg.data, cfg.policy.chunk_size, image_size, cfg.cache_dir)
        return out

    if not ddp.main:
        ddp.barrier()
    train_eps, val_eps = read(bags), read(val_bags)
    if ddp.main:
        ddp.barrier()
    if not val_bags:
        train_eps, val_eps = split_episodes(train_eps, cfg.val_fraction, cfg.seed)
    return train_eps, val_eps


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a run produced: the checkpoint directories and the metrics of every validation."""

    out_dir: Path
    step: int
    last: Path | None
    best: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_rank: int = 0


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _resume_dir(cfg: TrainConfig) -> Path | None:
    if cfg.resume is None:
        return None
    path = Path(cfg.out_dir) / "last" if cfg.resume == "auto" else Path(cfg.resume)
    if not (path / STATE_FILE).is_file():
        if cfg.resume == "auto":
            return None
        raise FileNotFoundError(f"resume: {str(path)!r} has no {STATE_FILE}; give a 'last' checkpoint directory of a run")
    return path


class Trainer:
    """One training run of a TrainConfig; :func:`train` is its entry point.

    Everything the run holds is an attribute: the policy and its loss (``loss_fn(pred, batch) -> (loss,
    logs)``), the episodes and loaders, optimiser, schedule and EMA, the step, the best validation loss and
    the history. :meth:`fit` runs :meth:`train_step` until the stop step; at each epoch's end rank 0
    validates (:meth:`validate`) and saves ``best`` and ``last`` (:meth:`save`). The constructor builds the pieces in a
    fixed order (seed, model initialisation, data, optimiser, resumed state) so that a resumed run draws
    the same random numbers as an uninterrupted one.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.ddp = setup_distributed(resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))))
        self.device = resolve_device(cfg.device, self.ddp.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.out_dir = Path(cfg.out_dir)
        self.policy = build_policy(cfg.policy)
        self.policy.spec = cfg.observation_spec
        self.train_eps, self.val_eps = load_episodes(cfg, self.policy.image_size, self.ddp)
        resume = _resume_dir(cfg)
        # resumed: the statistics the run started with, not recomputed ones
        self.stats = read_stats(resume, RESUME_FIX) if resume is not None else dataset_stats(self.train_eps, cfg.policy)
        self.policy.set_stats(self.stats)
        self.policy.to(self.device)
        self.loss_fn = self.policy.action_loss

        self.sampler, self.loader, self.val_loader = self._loaders()
        self.steps_per_epoch = len(self.sampler)
        self.total = cfg.max_steps or cfg.epochs * self.steps_per_epoch

        self.optimizer = build_optimizer(self.policy, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.warmup_steps, self.total))
        self.ema = EMA(self.policy, cfg.ema) if cfg.ema > 0 else None
        self.step, self.best_val = 0, math.inf
        self.history: list[dict[str, float]] = []
        if resume is not None:
            self._restore(resume)
        self.model: nn.Module = self.policy  # what the training step calls: DistributedDataParallel sees the forward pass
        if self.ddp.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.policy, device_ids=device_ids)

        grip_targets = np.concatenate([np.asarray(e.action)[..., 9][np.asarray(e.action_mask)] for e in self.train_eps])
        self.baseline = (torch.as_tensor(self.stats["action"].mean), float(grip_targets.mean()))  # mean action, mean gripper
        self.writer = self._open_outputs()
        self.amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
        self.samples_seen = 0  # by this rank
        self._epoch_loss, self._epoch_batches = 0.0, 0

    def _loaders(self) -> tuple[EpochBatchSampler, DataLoader, DataLoader | None]:
        """This rank's shard of the training episodes (sampler, loader); the validation loader on rank 0 when there are validation episodes."""
        cfg, ddp = self.cfg, self.ddp
        cams, hist = cfg.policy.cameras, cfg.policy.pose.history
        labels = self.point_labels(self.train_eps) if cfg.points_loss else None
        train_set = EpisodeDataset(self.train_eps, cams, hist, cfg.augment, cfg.seed, labels)
        sampler = EpochBatchSampler(len(train_set), cfg.batch_size, cfg.seed, True, ddp.rank, ddp.world_size)
        # the loader's own generator: creating an iterator must not draw from the global RNG (dropout), or a
        # resume in the middle of an epoch would shift every later random number
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed))
        val_loader = None
        if self.val_eps and ddp.main:
            val_set = EpisodeDataset(self.val_eps, cams, hist, points=self.point_labels(self.val_eps) if cfg.points_loss else None)
            val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
        return sampler, loader, val_loader

    def point_labels(self, episodes: list[Episode]) -> list[np.ndarray | None]:
        """Each episode's hindsight labels of the points in ``policy.encoder.weights``, normalised as the point head predicts them."""
        from vit_policy.model.checkpoint import read_point_stats
        from vit_policy.pretrain import HINDSIGHT_POINTS, episode_points

        path = self.cfg.policy.encoder.weights
        assert path is not None
        names, mean, std = read_point_stats(path, "points_loss", "or set points_loss: 0")
        if not set(names) <= set(HINDSIGHT_POINTS):
            raise ConfigError(f"points_loss: {path!r} was pretrained on points {names}, which the bags cannot label (hindsight "
                              f"points: {list(HINDSIGHT_POINTS)}); pretrain it with vit-policy pretrain, or set points_loss: 0")
        labels = [episode_points(ep, names) for ep in episodes]
        return [None if p is None else ((p - mean.numpy()) / std.numpy()).astype(np.float32) for p in labels]

    def _open_outputs(self) -> Any:
        """Rank 0: the output directory with the run's config, and the TensorBoard writer (None when off or on other ranks)."""
        if not self.ddp.main:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out_dir / "train_config.yaml")
        if not self.cfg.tensorboard:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.out_dir / "tb"))

    def _restore(self, resume: Path) -> None:
        """Weights, optimiser, schedule, EMA, step, best validation loss and RNG state of ``resume``."""
        from vit_policy.model.encoders import weights_error

        try:
            state = torch.load(resume / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or corrupt: the path, the cause and the fix
            raise weights_error(resume / STATE_FILE, exc, RESUME_FIX) from exc
        self.policy.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            if "ema" not in state:
                raise ConfigError(f"resume: {str(resume)!r} was trained without EMA; set ema: 0 or start a new run")
            self.ema.shadow = {k: v.to(self.device) for k, v in state["ema"].items()}
        self.step, self.best_val = int(state["step"]), float(state["best_val"])
        _set_rng_state(state["rng"], self.device)
        log.info("resumed from %s at step %d", resume, self.step)

    def eval_weights(self) -> contextlib.AbstractContextManager:
        """The weights that are validated and saved: the EMA's while inside, when there is one."""
        return self.ema.applied(self.policy) if self.ema is not None else contextlib.nullcontext()

    # ---- steps ---------------------------------------------------------------------------------------

    def train_step(self, batch: dict[str, Any]) -> tuple[dict[str, float], torch.Tensor | None]:
        """One optimiser step on ``batch``: (the loss's logs, the gradient norm before clipping or None)."""
        batch = to_device(batch, self.device)
        with self.amp:
            out = self.model(batch)
            loss, logs = self.loss_fn(out["action"], batch)
            if "points" in batch:
                point_loss = self.policy.point_loss(out["points"], batch)
                loss = loss + self.cfg.points_loss * point_loss
                logs["points_loss"] = point_loss.item()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), clip) if clip > 0 else None
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.policy)
        self.step += 1
        self.samples_seen += int(batch["position"].shape[0])
        self._epoch_loss += logs["loss"]
        self._epoch_batches += 1
        return logs, grad_norm

    def _log_step(self, logs: dict[str, float], grad_norm: torch.Tensor | None, t0: float) -> None:
        """TensorBoard scalars every ``log_every`` steps."""
        if self.writer is None or self.step % self.cfg.log_every:
            return
        for k, v in logs.items():
            self.writer.add_scalar(f"train/{k}", v, self.step)
        self.writer.add_scalar("train/lr_head", self.scheduler.get_last_lr()[-1], self.step)
        if grad_norm is not None:
            self.writer.add_scalar("train/grad_norm", float(grad_norm), self.step)
        rate = self.samples_seen * self.ddp.world_size / (time.perf_counter() - t0)
        self.writer.add_scalar("train/samples_per_s", rate, self.step)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation metrics with the weights :meth:`eval_weights` gives: the training loss (masked) and its parts,
        ``baseline_loss`` (the same loss of :func:`mean_action_prediction` on the same samples) and per-dimension
        errors in physical units."""
        assert self.val_loader is not None, "validate() needs validation episodes (rank 0)"
        policy = self.policy
        was_training = policy.training
        policy.eval()
        sums: dict[str, float] = {}
        n_batches, abs_err, rot_err, grip_err, count = 0, np.zeros(3), 0.0, 0.0, 0.0
        try:
            with self.eval_weights():
                constant = mean_action_prediction(policy, *self.baseline)
                for batch in self.val_loader:
                    batch = to_device(batch, self.device)
                    result = policy(batch)
                    out = result["action"]
                    logs = self.loss_fn(out, batch)[1]  # the action loss alone: it picks best/
                    if "points" in batch:
                        logs["points_loss"] = self.policy.point_loss(result["points"], batch).item()
                    logs["baseline_loss"] = self.loss_fn(constant.expand(out.shape[0], -1, -1), batch)[1]["loss"]
                    for k, v in logs.items():
                        sums[k] = sums.get(k, 0.0) + v
                    n_batches += 1
                    pred = policy.decode_actions(out, batch)  # raw (B, K, 10)
                    target = batch["action"].double().cpu().numpy()
                    mask = batch["action_mask"].cpu().numpy().astype(bool)
                    abs_err += np.abs(pred[..., :3] - target[..., :3])[mask].sum(0)
                    rot_err += float(geodesic_deg(rot6d_to_quat(pred[..., 3:9][mask]), rot6d_to_quat(target[..., 3:9][mask])).sum())
                    grip_err += float(np.abs(pred[..., 9] - target[..., 9])[mask].sum())
                    count += float(mask.sum())
        finally:
            policy.train(was_training)
        metrics = {f"val/{k}": v / max(n_batches, 1) for k, v in sums.items()}
        c = max(count, 1.0)
        metrics.update({"val/err_x_mm": abs_err[0] / c * 1e3, "val/err_y_mm": abs_err[1] / c * 1e3, "val/err_z_mm": abs_err[2] / c * 1e3,
                        "val/err_rot_deg": rot_err / c, "val/err_gripper": grip_err / c})
        return metrics

    # ---- outputs -------------------------------------------------------------------------------------

    def save(self, name: str, metrics: dict[str, float], with_state: bool = False) -> Path:
        """Checkpoint directory ``out_dir/name`` (the EMA weights when there are any); ``with_state`` adds what resuming needs."""
        directory = self.out_dir / name
        meta = {"step": self.step, "epoch": self.step / self.steps_per_epoch, "world_size": self.ddp.world_size, "metrics": metrics,
                "train_episodes": [e.source for e in self.train_eps], "val_episodes": [e.source for e in self.val_eps],
                "weights": "ema" if self.ema is not None else "raw",
                "data": to_dict(self.cfg.data)}  # the topic map: a checkpoint copied on its own can still be replayed
        with self.eval_weights():
            save_checkpoint(self.policy, directory, metadata=meta)
        if with_state:
            state = {"model": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "step": self.step, "best_val": self.best_val, "rng": _rng_state(self.device)}
            if self.ema is not None:
                state["ema"] = self.ema.shadow
            torch.save(state, directory / STATE_FILE)
        return directory

    def end_epoch(self, epoch: int) -> None:
        """Rank 0 at an epoch's end: the epoch's mean training loss, validation, ``best`` (lowest validation loss) and ``last``."""
        metrics = {"epoch": float(epoch), "step": float(self.step), "train/loss": self._epoch_loss / max(self._epoch_batches, 1)}
        self._epoch_loss, self._epoch_batches = 0.0, 0
        if self.val_loader is not None:
            metrics.update(self.validate())
            log.info("epoch %d step %d: %s", epoch, self.step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("val/")))
            if self.writer is not None:
                for k, v in metrics.items():
                    if k.startswith("val/"):
                        self.writer.add_scalar(k, v, self.step)
        self.history.append(metrics)
        val = metrics.get("val/loss", math.inf)
        if val < self.best_val or not math.isfinite(self.best_val):
            self.best_val = min(val, self.best_val)
            self.save("best", metrics)
        self.save("last", metrics, with_state=True)

    # ---- the run -------------------------------------------------------------------------------------

    def fit(self, stop_at_step: int | None = None) -> TrainResult:
        """Train up to the run's total steps, or ``stop_at_step`` (saving a resumable ``last``, as an interruption would);
        at the end of the run the OOD monitor is fitted when ``ood_quantile`` is set."""
        cfg, ddp, spe = self.cfg, self.ddp, self.steps_per_epoch
        stop = min(self.total, stop_at_step) if stop_at_step is not None else self.total
        bar = None
        if cfg.progress and ddp.main:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        self.policy.train()
        t0 = time.perf_counter()
        while self.step < stop:
            epoch, start_batch = divmod(self.step, spe)
            self.sampler.set_epoch(epoch, start_batch)
            for batch in self.loader:
                logs, grad_norm = self.train_step(batch)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}")
                self._log_step(logs, grad_norm, t0)
                if self.step % spe == 0 or self.step == self.total:
                    if ddp.main:
                        self.end_epoch(self.step // spe)
                    ddp.barrier()
                if self.step >= stop:
                    break
        if bar is not None:
            bar.close()
        if self.step == stop and self.step % spe and self.step != self.total and ddp.main:
            self.save("last", {"step": float(self.step)}, with_state=True)  # interrupted mid-epoch: resumable
        if ddp.main and self.step == self.total and cfg.ood_quantile is not None:
            fit_ood(self.out_dir, self.train_eps, self.val_eps, cfg.ood_quantile)
        ddp.barrier()
        if self.writer is not None:
            self.writer.close()
        last = self.out_dir / "last" if ddp.main else None
        best = self.out_dir / "best" if ddp.main and (self.out_dir / "best").is_dir() else None
        return TrainResult(self.out_dir, self.step, last, best, self.history, self.samples_seen)


def train(cfg: TrainConfig, stop_at_step: int | None = None) -> TrainResult:
    """Train ``cfg``; ``stop_at_step`` ends the run early (saving ``last``), as an interruption would."""
    return Trainer(cfg).fit(stop_at_step)


def fit_ood(out_dir: Path, train_eps: list[Episode], val_eps: list[Episode], quantile: float) -> None:
    """The OOD monitor of ``best`` and ``last``, each with its own weights (vit_policy/ood.py)."""
    from vit_policy.ood import fit_checkpoint

    if not val_eps:
        log.warning("no validation split: no OOD monitor fitted (vit-policy fit-ood --val-bags fits one later)")
        return
    for name in ("best", "last"):
        if (out_dir / name).is_dir():
            monitor, _ = fit_checkpoint(out_dir / name, train_eps, val_eps, quantile)
            log.info("OOD monitor of %s: thresholds %s", name, {c: round(t, 2) for c, t in monitor.thresholds.items()})
