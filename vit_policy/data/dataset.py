"""Torch Dataset over cached episodes, the epoch/shard sampler, augmentations and statistics.

Samples come out in the policy's batch format (``model/policy.py``): uint8 images per camera, raw
pose, history, raw action labels (K, 10) and their padding mask. All training noise is applied here,
never in the model: image shift and colour jitter, and ``augment.pose_noise_m`` as ``state_position``
(the position plus noise, which the pose tokens read while the labels stay on the true ``position``).
Randomness (shuffling and augmentation) is a pure function of (seed, epoch, sample), so a resumed or multi-process run sees
exactly the samples and augmentations of an uninterrupted one, whatever the number of workers.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vit_policy.data.configuration import AugmentConfig
from vit_policy.model.configuration import PolicyConfig
from vit_policy.data.bags import Episode
from vit_policy.geometry import NormStats


def history_indices(t: int, history: int) -> np.ndarray:
    """Indices of the ``history`` samples before t (oldest first), repeating the first at an episode start."""
    return np.maximum(np.arange(t - history, t), 0)


def episode_history(ep: Episode, t: int, history: int) -> np.ndarray:
    """(H, 7) past poses [x, y, z, qx, qy, qz, qw] of sample t: the observations at the previous ticks."""
    idx = history_indices(t, history)
    return np.concatenate([np.asarray(ep.position)[idx], np.asarray(ep.quaternion)[idx]], axis=1)


def split_episodes(episodes: list[Episode], val_fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Episode-level split (no episode on both sides); deterministic in ``seed``."""
    if val_fraction <= 0 or len(episodes) < 2:
        return list(episodes), []
    order = np.random.default_rng(seed).permutation(len(episodes))
    n_val = min(max(1, int(round(val_fraction * len(episodes)))), len(episodes) - 1)
    val = set(order[:n_val].tolist())
    return [e for i, e in enumerate(episodes) if i not in val], [e for i, e in enumerate(episodes) if i in val]


def augment_image(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random shift (edge pad + crop back) and colour jitter on one uint8 RGB frame; returns uint8."""
    out = img
    if cfg.shift_px:
        s = cfg.shift_px
        h, w = img.shape[:2]
        padded = np.pad(img, ((s, s), (s, s), (0, 0)), mode="edge")
        dy, dx = rng.integers(0, 2 * s + 1, 2)
        out = padded[dy : dy + h, dx : dx + w]
    if cfg.brightness or cfg.contrast or cfg.saturation:
        x = out.astype(np.float32)
        if cfg.brightness:
            x *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        if cfg.contrast:
            x = (x - x.mean()) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + x.mean()
        if cfg.saturation:
            gray = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]  # not a BLAS call: no thread pool
            x = (x - gray[..., None]) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) + gray[..., None]
        out = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


class EpisodeDataset(Dataset):
    """Random access by (episode, step) over episodes; index with ``i`` or ``(epoch, i)`` (augmentation seed)."""

    def __init__(
        self, episodes: Sequence[Episode], cameras: Sequence[str], history: int = 0, augment: AugmentConfig | None = None, seed: int = 0,
        points: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        """``points``: per episode, labels (T, P, 3) for the point head's auxiliary loss, or None where it has none."""
        if not episodes:
            raise ValueError("dataset: no episodes (check the bags and the train/validation split)")
        for ep in episodes:
            missing = [c for c in cameras if c not in ep.images]
            if missing:
                raise ValueError(f"dataset: episode from {ep.source!r} has no camera {missing} (has {sorted(ep.images)})")
        self.episodes, self.cameras, self.history = list(episodes), list(cameras), history
        self.augment = augment if augment is not None and (_augments_images(augment) or augment.pose_noise_m) else None
        self.seed = seed
        self.points = points
        if points is not None:
            labelled = [p for p in points if p is not None]
            if len(points) != len(self.episodes) or not labelled:
                raise ValueError(f"dataset: point labels for {len(labelled)} of {len(points)} episodes; need one entry (labels "
                                 f"or None) for each of the {len(self.episodes)} episodes and at least one labelled")
            self.points_shape = labelled[0].shape[1:]
        self.index = np.array([(e, t) for e, ep in enumerate(self.episodes) for t in range(len(ep))], np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.index)

    def locate(self, i: int) -> tuple[int, int]:
        """(episode, step) of sample i."""
        e, t = self.index[i]
        return int(e), int(t)

    def frame(self, episode: int, camera: str, step: int) -> np.ndarray:
        """The stored uint8 frame (a memory-mapped read for cached episodes)."""
        return np.asarray(self.episodes[episode].images[camera][step])

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        epoch, i = item if isinstance(item, tuple) else (0, item)
        e, t = self.locate(i)
        ep = self.episodes[e]
        aug = self.augment
        rng = np.random.default_rng([self.seed, epoch, i]) if aug is not None else None
        jitter = aug is not None and _augments_images(aug)
        images = {}
        for cam in self.cameras:
            img = self.frame(e, cam, t)
            images[cam] = torch.from_numpy(augment_image(img, aug, rng) if jitter else img.copy())  # type: ignore[arg-type]
        sample: dict[str, Any] = {
            "images": images,
            "position": torch.tensor(ep.position[t], dtype=torch.float32),
            "quaternion": torch.tensor(ep.quaternion[t], dtype=torch.float32),
            "gripper": torch.tensor(float(ep.gripper[t]), dtype=torch.float32),
            "action": torch.from_numpy(np.array(ep.action[t], np.float32)),
            "action_mask": torch.from_numpy(np.array(ep.action_mask[t], bool)),
            "stamp_ns": torch.tensor(int(ep.stamps_ns[t]), dtype=torch.int64),
        }
        if aug is not None and rng is not None and aug.pose_noise_m:  # what the state reads; labels stay on "position"
            noise = torch.from_numpy(rng.normal(0.0, aug.pose_noise_m, 3).astype(np.float32))
            sample["state_position"] = sample["position"] + noise
        if self.points is not None:
            labels = self.points[e]
            sample["points_mask"] = torch.tensor(labels is not None)
            sample["points"] = torch.zeros(self.points_shape) if labels is None else torch.from_numpy(np.asarray(labels[t], np.float32))
        if self.history:
            sample["history"] = torch.tensor(episode_history(ep, t, self.history), dtype=torch.float32)
        return sample


def _augments_images(cfg: AugmentConfig) -> bool:
    return bool(cfg.shift_px or cfg.brightness or cfg.contrast or cfg.saturation)


class EpochBatchSampler(Sampler):
    """Batches of ``(epoch, index)`` for one rank: a fresh permutation per epoch, sharded across ranks.

    The permutation depends only on (seed, epoch); it is padded (by repeating its start) to a multiple
    of ``world_size * batch_size`` when ``drop_last`` is False, then rank r takes batches r, r + world, ...
    so ranks never share a sample within an epoch. ``start_batch`` skips batches already trained on
    (resume in the middle of an epoch) without loading them.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool = False
    ) -> None:
        if n < 1:
            raise ValueError("sampler: the dataset is empty")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _batches(self) -> list[np.ndarray]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle else np.arange(self.n)
        per_step = self.batch_size * self.world_size
        if self.drop_last:
            order = order[: len(order) // per_step * per_step]
        elif len(order) % per_step:
            order = np.resize(order, -(-len(order) // per_step) * per_step)  # repeat from the start
        batches = order.reshape(-1, self.batch_size)
        return list(batches[self.rank :: self.world_size])

    def __len__(self) -> int:
        per_step = self.batch_size * self.world_size
        return self.n // per_step if self.drop_last else -(-self.n // per_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self._batches()[self.start_batch :]:
            yield [(self.epoch, int(i)) for i in batch]


def dataset_stats(episodes: Sequence[Episode], cfg: PolicyConfig) -> dict[str, NormStats]:
    """Normalisation statistics over the (training) episodes, via ``policy.compute_norm_stats``."""
    from vit_policy.model.policy import compute_norm_stats

    cat = lambda name: np.concatenate([np.asarray(getattr(ep, name)) for ep in episodes])  # noqa: E731
    history = None
    if cfg.pose.history:
        history = np.concatenate([np.stack([episode_history(ep, t, cfg.pose.history) for t in range(len(ep))]) for ep in episodes])
    return compute_norm_stats(
        cfg, cat("position"), cat("quaternion"), cat("gripper"), cat("action"), cat("action_mask"), history
    )
