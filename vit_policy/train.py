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

from vit_policy.config import ConfigError, TrainConfig, save_config, to_dict
from vit_policy.data.bags import Episode
from vit_policy.data.cache import load_or_extract
from vit_policy.data.dataset import EpisodeDataset, EpochBatchSampler, dataset_stats, split_episodes
from vit_policy.geometry import NormStats, geodesic_deg, rot6d_to_quat
from vit_policy.model.checkpoint import STATS_FILE, build_policy, save_checkpoint
from vit_policy.model.policy import VisuomotorPolicy

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
RESUME_FIX = "resume from another copy of the run's last/ directory, or start a new run (resume: null or a new out_dir)"


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
    from vit_policy.data.lerobot import HUB_PREFIX, from_hub

    out: list[Path] = []
    for pat in patterns:
        if pat.startswith(HUB_PREFIX):  # a LeRobot dataset on the hub (users who are online)
            out.append(from_hub(pat))
            continue
        hits = sorted(glob.glob(os.path.expanduser(pat))) if glob.has_magic(pat) else [os.path.expanduser(pat)]
        if not hits or not Path(hits[0]).exists():
            raise FileNotFoundError(f"{field_name}: {pat!r} matches no bag (give rosbag2 directories, .db3/.mcap files or a glob)")
        out.extend(Path(h) for h in hits)
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


class _LossModule(nn.Module):
    """``forward`` = ``policy.compute_loss``, so DistributedDataParallel's gradient hooks see the loss."""

    def __init__(self, policy: VisuomotorPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.policy.compute_loss(batch)


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


@contextlib.contextmanager
def _constant_prediction(policy: VisuomotorPolicy, action_mean: torch.Tensor, gripper_mean: float) -> Iterator[None]:
    """Make ``policy.forward`` predict the training-mean action (in the head's frame), so the baseline uses the very same loss."""
    grip_logit = math.log(max(gripper_mean, 1e-4) / max(1.0 - gripper_mean, 1e-4))
    normalized = policy.normalize_action(action_mean.to(policy.device))  # (K, 9)

    def forward(batch: dict[str, Any], return_attention: bool = False) -> dict[str, Any]:
        b = batch["position"].shape[0]
        grip = normalized.new_full((b, normalized.shape[0], 1), grip_logit)
        return {"action": torch.cat([normalized.expand(b, -1, -1), grip], -1)}

    policy.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        del policy.forward


@torch.no_grad()
def evaluate(
    policy: VisuomotorPolicy, loader: DataLoader, device: torch.device, baseline: tuple[torch.Tensor, float] | None = None
) -> dict[str, float]:
    """Validation loss (the training loss, masked), per-dimension errors in physical units, and the
    loss of the mean-action predictor on the same samples when ``baseline`` (mean action, mean gripper) is given."""
    was_training = policy.training
    policy.eval()
    sums: dict[str, float] = {}
    n_batches, abs_err, rot_err, grip_err, count = 0, np.zeros(3), 0.0, 0.0, 0.0
    try:
        for batch in loader:
            batch = to_device(batch, device)
            _, logs = policy.compute_loss(batch)
            if baseline is not None:
                with _constant_prediction(policy, *baseline):
                    logs["baseline_loss"] = policy.compute_loss(batch)[1]["loss"]
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
            pred = policy.decode_actions(policy.forward(batch)["action"], batch)  # raw (B, K, 10)
            target = batch["action"].double().cpu().numpy()
            mask = batch["action_mask"].cpu().numpy().astype(bool)
            abs_err += np.abs(pred[..., :3] - target[..., :3])[mask].sum(0)
            rot_err += float(geodesic_deg(rot6d_to_quat(pred[..., 3:9][mask]), rot6d_to_quat(target[..., 3:9][mask])).sum())
            grip_err += float(np.abs(pred[..., 9] - target[..., 9])[mask].sum())
            count += float(mask.sum())
    finally:
        policy.train(was_training)
    out = {f"val/{k}": v / max(n_batches, 1) for k, v in sums.items()}
    c = max(count, 1.0)
    out.update({"val/err_x_mm": abs_err[0] / c * 1e3, "val/err_y_mm": abs_err[1] / c * 1e3, "val/err_z_mm": abs_err[2] / c * 1e3,
                "val/err_rot_deg": rot_err / c, "val/err_gripper": grip_err / c})
    return out


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


def train(cfg: TrainConfig, stop_at_step: int | None = None) -> TrainResult:
    """Train ``cfg``; ``stop_at_step`` ends the run early (saving ``last``), as an interruption would."""
    torch.manual_seed(cfg.seed)
    ddp = setup_distributed(resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0"))))
    device = resolve_device(cfg.device, ddp.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out_dir = Path(cfg.out_dir)
    policy = build_policy(cfg.policy)
    train_eps, val_eps = load_episodes(cfg, policy.image_size, ddp)
    resume = _resume_dir(cfg)
    if resume is not None:  # the statistics the run started with, not recomputed ones
        from safetensors.torch import load_file

        from vit_policy.model.encoders import weights_error

        try:
            raw = load_file(str(resume / STATS_FILE))
        except Exception as exc:  # truncated or corrupt: the path, the cause and the fix
            raise weights_error(resume / STATS_FILE, exc, RESUME_FIX) from exc
        stats = {k: NormStats.from_tensors(raw, k, str(resume / STATS_FILE)) for k in ("state", "action")}
    else:
        stats = dataset_stats(train_eps, cfg.policy)
    policy.set_stats(stats)
    policy.to(device)

    cams, hist = cfg.policy.cameras, cfg.policy.pose.history
    train_set = EpisodeDataset(train_eps, cams, hist, cfg.augment, cfg.seed)
    sampler = EpochBatchSampler(len(train_set), cfg.batch_size, cfg.seed, True, ddp.rank, ddp.world_size)
    # the loader's own generator: creating an iterator must not draw from the global RNG (dropout), or a
    # resume in the middle of an epoch would shift every later random number
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))
    val_loader = None
    if val_eps and ddp.main:
        val_set = EpisodeDataset(val_eps, cams, hist)
        val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    steps_per_epoch = len(sampler)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch

    optimizer = build_optimizer(policy, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, total))
    ema = EMA(policy, cfg.ema) if cfg.ema > 0 else None
    step, best_val, history = 0, math.inf, []
    if resume is not None:
        from vit_policy.model.encoders import weights_error

        try:
            state = torch.load(resume / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or corrupt: the path, the cause and the fix
            raise weights_error(resume / STATE_FILE, exc, RESUME_FIX) from exc
        policy.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            if "ema" not in state:
                raise ConfigError(f"resume: {str(resume)!r} was trained without EMA; set ema: 0 or start a new run")
            ema.shadow = {k: v.to(device) for k, v in state["ema"].items()}
        step, best_val = int(state["step"]), float(state["best_val"])
        _set_rng_state(state["rng"], device)
        log.info("resumed from %s at step %d", resume, step)
    model: nn.Module = _LossModule(policy)
    if ddp.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    action_mean = torch.as_tensor(stats["action"].mean)
    grip_targets = np.concatenate([np.asarray(e.action)[..., 9][np.asarray(e.action_mask)] for e in train_eps])
    baseline = (action_mean, float(grip_targets.mean()))
    writer = None
    if ddp.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "train_config.yaml")
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tb"))

    def checkpoint(name: str, metrics: dict[str, float], with_state: bool) -> Path:
        directory = out_dir / name
        meta = {"step": step, "epoch": step / steps_per_epoch, "world_size": ddp.world_size, "metrics": metrics,
                "train_episodes": [e.source for e in train_eps], "val_episodes": [e.source for e in val_eps],
                "weights": "ema" if ema is not None else "raw",
                "data": to_dict(cfg.data)}  # the topic map: a checkpoint copied on its own can still be replayed
        with ema.applied(policy) if ema is not None else contextlib.nullcontext():
            save_checkpoint(policy, directory, metadata=meta)
        if with_state:
            state = {"model": policy.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "step": step, "best_val": best_val, "rng": _rng_state(device)}
            if ema is not None:
                state["ema"] = ema.shadow
            torch.save(state, directory / STATE_FILE)
        return directory

    def end_of_epoch(epoch: int) -> None:
        nonlocal best_val
        metrics: dict[str, float] = {"epoch": float(epoch), "step": float(step), "train/loss": epoch_loss[0] / max(epoch_loss[1], 1)}
        epoch_loss[:] = [0.0, 0]
        if val_loader is not None:
            with ema.applied(policy) if ema is not None else contextlib.nullcontext():
                metrics.update(evaluate(policy, val_loader, device, baseline))
            log.info("epoch %d step %d: %s", epoch, step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("val/")))
            if writer is not None:
                for k, v in metrics.items():
                    if k.startswith("val/"):
                        writer.add_scalar(k, v, step)
        history.append(metrics)
        val = metrics.get("val/loss", math.inf)
        if val < best_val or not math.isfinite(best_val):
            best_val = min(val, best_val)
            checkpoint("best", metrics, with_state=False)
        checkpoint("last", metrics, with_state=True)

    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    stop = min(total, stop_at_step) if stop_at_step is not None else total
    bar = None
    if cfg.progress and ddp.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop, initial=step, desc="train", unit="step", dynamic_ncols=True)
    policy.train()
    samples_seen, epoch_loss = 0, [0.0, 0]
    t0 = time.perf_counter()
    while step < stop:
        epoch, start_batch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, start_batch)
        for batch in loader:
            batch = to_device(batch, device)
            with amp:
                loss, logs = model(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(policy)
            step += 1
            samples_seen += int(batch["position"].shape[0])
            epoch_loss[0] += logs["loss"]
            epoch_loss[1] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if writer is not None and step % cfg.log_every == 0:
                for k, v in logs.items():
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/lr_head", scheduler.get_last_lr()[-1], step)
                if grad_norm is not None:
                    writer.add_scalar("train/grad_norm", float(grad_norm), step)
                writer.add_scalar("train/samples_per_s", samples_seen * ddp.world_size / (time.perf_counter() - t0), step)
            if step % steps_per_epoch == 0 or step == total:
                if ddp.main:
                    end_of_epoch(step // steps_per_epoch)
                ddp.barrier()
            if step >= stop:
                break
    if bar is not None:
        bar.close()
    if step == stop and step % steps_per_epoch and step != total and ddp.main:
        checkpoint("last", {"step": float(step)}, with_state=True)  # interrupted mid-epoch: resumable
    if ddp.main and step == total and cfg.ood_quantile is not None:
        fit_ood(out_dir, train_eps, val_eps, cfg.ood_quantile)
    ddp.barrier()
    if writer is not None:
        writer.close()
    last = out_dir / "last" if ddp.main else None
    best = out_dir / "best" if ddp.main and (out_dir / "best").is_dir() else None
    return TrainResult(out_dir, step, last, best, history, samples_seen)


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


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def cmd_train(args: Any) -> int:
    """``vit-policy train --config <yaml> [key=value ...]`` (also under torchrun)."""
    from vit_policy.config import load_train_config
    from vit_policy.data.inspect import check_bags

    from vit_policy.data.lerobot import check_dataset, is_dataset

    cfg = load_train_config(args.config, args.overrides)
    paths = expand_bags(cfg.bags) + expand_bags(cfg.val_bags, "val_bags")
    check_bags([p for p in paths if not is_dataset(p)], cfg.data)  # a bad bag fails now, with its fix
    for p in filter(is_dataset, paths):
        check_dataset(p, cfg.data)  # a LeRobot dataset without an EE pose or a mapped camera fails now
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train(cfg)
    if result.last is not None:
        final = result.history[-1] if result.history else {}
        print(f"trained {result.step} steps; last checkpoint {result.last}, best {result.best}")
        if "val/loss" in final:
            print(f"validation loss {final['val/loss']:.4f} (mean-action predictor {final.get('val/baseline_loss', float('nan')):.4f})")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
