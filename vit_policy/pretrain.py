"""Encoder pretraining on frames labelled with where things are: regress 3-D points from the pixels.

Why: a ViT trained from scratch on a few hundred demonstrations sees only that many goal (and object)
positions, and memorises them (FetchReach, 200 demonstrations: the first chunk ends 0.4-0.9 cm from a
training goal and 3 cm from a new one). Frames labelled with point positions cost no demonstrations
(a simulator's state; on a robot, mocap or fiducial poses), and thousands of them teach the encoder
to place a point from what every camera sees. The policy then starts from that backbone
(``encoder.weights: <file>.safetensors``) and learns only how to act on it.

The labels need not come from outside the robot: :func:`hindsight_points` takes them from the
demonstrations themselves (where the EE is, where the demonstration ended, where the gripper first
closed), so a user's recorded bags are enough to teach the encoder where the goal and the object are.

The file holds the backbone's own state dict (the format ``encoder.weights`` reads) and the point head
(every camera's patch tokens, flattened, through a small MLP; keys ``point_head.*``). A policy with
``points`` set keeps the head and reads its points as tokens; otherwise the head is ignored.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn as nn

from vit_policy.data.bags import Episode
from vit_policy.model.configuration import EncoderConfig
from vit_policy.images import to_model_input
from vit_policy.model.encoders import POINT_HEAD, PointHead, build_image_encoder

if TYPE_CHECKING:
    from vit_policy.train import TrainConfig


@dataclass
class PretrainResult:
    """Where the backbone went and how well it places each point on held-out frames (metres)."""

    path: Path
    steps: int
    seconds: float
    target_names: list[str]
    val_error_m: dict[str, float]  # median Euclidean error per point, validation frames
    train_error_m: dict[str, float]  # the same on (up to 1000) training frames: a gap is memorising
    frames: int = 0  # labelled frames, validation included

    def table(self) -> str:
        rows = [f"  {'point':<10} {'train cm':>9} {'val cm':>8}"]
        rows += [f"  {n:<10} {100 * self.train_error_m[n]:>9.2f} {100 * self.val_error_m[n]:>8.2f}" for n in self.target_names]
        return f"encoder pretraining: {self.steps} steps in {self.seconds / 60:.1f} min -> {self.path}\n" + "\n".join(rows)


HINDSIGHT_POINTS = ("ee", "end", "grasp", "object", "low", "contact", "pushed")
LOW_TOLERANCE_M = 0.01  # "low": the first step within this of the lowest EE height ...
RISE_M = 0.03  # ... after the EE first rose this far above its start (if it ever does: grippers often start low)
END_STEPS = 10  # "end": the mean of up to this many final steps ...
HOLD_RADIUS_M = 0.05  # ... that stay this close to the last one (a hold jitters under DART noise or a hand on a teleop device)


def end_point(position: np.ndarray) -> np.ndarray:
    """Where a demonstration ended: the mean of its final hold (up to END_STEPS trailing positions within
    HOLD_RADIUS_M of the last), so execution noise while holding averages out of the label."""
    near = np.linalg.norm(position[-END_STEPS:] - position[-1], axis=1) <= HOLD_RADIUS_M
    first = len(near) - (np.flatnonzero(~near)[-1] + 1 if (~near).any() else 0)  # the contiguous run that ends at the last step
    return position[-first:].mean(0)


def check_point_names(names: list[str]) -> None:
    """Raise unless ``names`` is a non-empty list of :data:`HINDSIGHT_POINTS`."""
    unknown = [n for n in names if n not in HINDSIGHT_POINTS]
    if unknown or not names:
        raise ValueError(f"points: {unknown or names} are not hindsight points; choose from {list(HINDSIGHT_POINTS)}")


def hindsight_points(episodes: list[Episode], names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Frames of recorded demonstrations labelled from the recording alone (:func:`episode_points`; episodes
    without the points are left out). Returns images {camera: (N, H, W, 3)} and targets (N, T, 3).

    Labels in hindsight need no simulator state, motion capture or annotation: only the EE poses and
    gripper openings every bag already holds.
    """
    check_point_names(names)
    images: dict[str, list[np.ndarray]] = {}
    targets = []
    for ep in episodes:
        points = episode_points(ep, names)
        if points is None:
            continue
        targets.append(points)
        for cam, frames in ep.images.items():
            images.setdefault(cam, []).append(np.asarray(frames))
    if not targets:
        raise ValueError(f"points {names}: no episode has them (grasp needs the gripper to close in a demonstration)")
    return {c: np.concatenate(v) for c, v in images.items()}, np.concatenate(targets)


def episode_points(ep: Episode, names: list[str]) -> np.ndarray | None:
    """One demonstration's points at every frame (T, len(names), 3) in metres, or None when it has none of them.

    ``ee`` the observed EE position, ``end`` where the demonstration's EE ended (a reach or place goal: the mean
    of its final hold, :func:`end_point`), ``grasp`` where it was when the gripper first closed after being open
    (the object; None without such a closing), ``object`` the grasp point until the gripper closes there, then
    the EE that carries it (where the object is at every frame of a pick), ``low`` where it first came down to
    its lowest height after rising (where a push or a grasp from above starts), ``contact`` the ``low`` point
    until the EE gets there, then the EE while it stays down, held where it last was down while it rises (what a
    pushed object is in front of at every frame of a push), ``pushed`` the ``contact`` point moved toward ``end``
    by the gap between the last pushing pose and ``end`` (the pushed object's centre, for push demonstrations
    that end with the gripper lifted over the object: ``end`` is then where the object came to rest, and the gap
    is how far ahead of the gripper the object rode).
    """
    check_point_names(names)
    if len(ep) == 0:
        return None
    grip = np.asarray(ep.gripper)
    opened = np.flatnonzero(grip >= 0.5)
    closed = np.flatnonzero(grip[opened[0]:] < 0.5) + opened[0] if len(opened) else opened
    if {"grasp", "object"} & set(names) and not len(closed):
        return None
    position = np.asarray(ep.position, np.float64)
    z = position[:, 2]
    rose = np.flatnonzero(z > z[0] + RISE_M)
    after = z[rose[0]:] if len(rose) else z
    low = int(np.flatnonzero(after <= after.min() + LOW_TOLERANCE_M)[0]) + (int(rose[0]) if len(rose) else 0)
    grasp = position[closed[0]] if len(closed) else position[-1]
    steps = np.arange(len(ep))
    down = (steps >= low) & (z <= z[low] + RISE_M)  # pushing: from the first low on, while within RISE_M of it
    last_down = np.maximum.accumulate(np.where(down, steps, low))
    contact = position[last_down]
    end = end_point(position)
    to_end = end[:2] - contact[:, :2]
    dist = np.linalg.norm(to_end, axis=1, keepdims=True)
    gap = np.linalg.norm(end[:2] - contact[-1, :2])  # the last pushing pose to where the object rests
    pushed = contact.copy()
    pushed[:, :2] += to_end * np.minimum(1.0, gap / np.maximum(dist, 1e-9))
    at = {"ee": position, "end": np.broadcast_to(end, (len(ep), 3)), "pushed": pushed,
          "grasp": np.broadcast_to(grasp, (len(ep), 3)), "low": np.broadcast_to(position[low], (len(ep), 3)),
          "contact": contact,
          "object": np.where((steps < (closed[0] if len(closed) else len(ep)))[:, None], grasp, position)}
    return np.stack([at[n] for n in names], axis=1)


def _check(images: dict[str, np.ndarray], targets: np.ndarray, names: list[str]) -> int:
    n = targets.shape[0]
    if targets.ndim != 3 or targets.shape[1:] != (len(names), 3):
        raise ValueError(f"targets: expected shape (N, {len(names)}, 3) for points {names}, got {targets.shape}")
    if not np.isfinite(targets).all():
        raise ValueError("targets: contain NaN or inf; drop those frames")
    for cam, img in images.items():
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[0] != n or img.shape[-1] != 3:
            raise ValueError(f"images[{cam!r}]: expected uint8 ({n}, H, W, 3), got {img.dtype} {img.shape}")
    if n < 20:
        raise ValueError(f"targets: {n} frames; pretraining needs at least 20 (a tenth is held out)")
    return n


def random_shift(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Each image of (B, C, H, W) moved by up to ``pad`` pixels each way (edge-padded random crop, as DrQ)."""
    b, _, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b))
    rows, cols = dy[:, None] + torch.arange(h), dx[:, None] + torch.arange(w)  # (B, H), (B, W): each image's window
    return padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def pretrain_encoder(
    encoder_cfg: EncoderConfig,
    images: dict[str, np.ndarray],
    targets: np.ndarray,
    target_names: list[str],
    out_path: str | Path,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    shift_px: int = 0,
) -> PretrainResult:
    """Train ``encoder_cfg``'s backbone to regress ``targets`` (N, T, 3) from ``images`` {camera: (N, H, W, 3)}.

    ``shift_px`` > 0 shifts every training image by up to that many pixels (edge-padded random crop, each
    camera and frame on its own), so no exact pixel layout of a training scene can be looked up.

    One backbone sees every camera (the policy's ``encoder.shared``); the last ``val_fraction`` of the
    frames is held out. Writes the backbone and the point head to ``out_path`` (.safetensors; the
    metadata holds the cameras in head order, the point names, their mean / std in metres (the head
    predicts normalised points) and the held-out errors).
    """
    n = _check(images, targets, target_names)
    if steps < 1:
        raise ValueError(f"steps: {steps} must be at least 1")
    if shift_px < 0:
        raise ValueError(f"shift_px: {shift_px} must be >= 0 (0: no shift)")
    torch.manual_seed(seed)
    encoder = build_image_encoder(dataclasses.replace(encoder_cfg, freeze="none"))  # the policy may freeze it later; this trains it
    cams = list(images)  # this order is the point head's input order: the policy's cameras
    head = PointHead(len(cams) * encoder.num_patches, encoder.embed_dim, len(target_names))
    n_val = max(1, int(round(n * val_fraction)))
    train_idx, val_idx = np.arange(n - n_val), np.arange(n - n_val, n)
    mean = targets[train_idx].mean(0)
    std = targets[train_idx].std(0) + 1e-3  # a point that never moves is centred, not divided by zero
    target_t = torch.as_tensor((targets - mean) / std, dtype=torch.float32)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = min(200, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))

    def predict(idx: np.ndarray, shift: int = 0) -> torch.Tensor:
        x = torch.cat([to_model_input(torch.from_numpy(images[c][idx]), encoder.img_size, encoder.mean, encoder.std) for c in cams])
        if shift:
            x = random_shift(x, shift)
        tokens = encoder.forward_features(x)[:, encoder.num_prefix_tokens:]
        return head(torch.cat(tokens.chunk(len(cams)), dim=1))  # (B, cams * patches, D)

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    encoder.train()
    head.train()
    for step in range(steps):
        idx = np.sort(rng.choice(train_idx, size=min(batch_size, len(train_idx)), replace=False))
        loss = nn.functional.smooth_l1_loss(predict(idx, shift_px), target_t[idx], beta=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, loss.item())
    seconds = time.perf_counter() - t0

    encoder.eval()
    head.eval()

    def median_error(idx: np.ndarray) -> dict[str, float]:
        with torch.no_grad():
            pred = torch.cat([predict(idx[i:i + 256]) for i in range(0, len(idx), 256)]).numpy()
        err = np.linalg.norm((pred - target_t[idx].numpy()) * std, axis=-1)  # metres
        return {name: float(np.median(err[:, j])) for j, name in enumerate(target_names)}

    result = PretrainResult(Path(out_path), steps, seconds, list(target_names), median_error(val_idx), median_error(train_idx[:1000]), n)
    from safetensors.torch import save_file

    result.path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.backbone.state_dict().items()}
    state.update({POINT_HEAD + k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()})
    meta = {"encoder": encoder_cfg.name, "img_size": str(encoder.img_size[0]), "cameras": json.dumps(cams), "frames": str(n),
            "steps": str(steps), "points": json.dumps(target_names),
            "point_mean_m": json.dumps(mean.tolist()), "point_std_m": json.dumps(std.tolist()), "val_error_m": json.dumps(result.val_error_m)}
    save_file(state, str(result.path), metadata=meta)
    return result


def pretrain_on_demonstrations(cfg: TrainConfig, points: list[str], out_path: str | Path, steps: int, batch_size: int = 64,
                               seed: int = 0, progress: Callable[[int, float], None] | None = None, shift_px: int = 0) -> PretrainResult:
    """``vit-policy pretrain``: the encoder of a training config, pretrained on the frames of its own training
    episodes labelled in hindsight (:func:`hindsight_points`); then train with ``policy.encoder.weights`` set to
    the file, ``policy.points.count`` to the number of points and ``policy.encoder.freeze: all``."""
    from vit_policy.model.encoders import build_image_encoder
    from vit_policy.train import Dist, load_episodes

    size = build_image_encoder(cfg.policy.encoder).img_size
    episodes, _ = load_episodes(cfg, size, Dist())  # the validation episodes stay unseen, as in training
    images, targets = hindsight_points(episodes, points)
    images = {c: images[c] for c in cfg.policy.cameras}  # the point head reads the cameras in the policy's order
    return pretrain_encoder(cfg.policy.encoder, images, targets, points, out_path, steps, batch_size, seed=seed, progress=progress,
                            shift_px=shift_px)
