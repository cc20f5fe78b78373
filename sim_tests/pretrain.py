"""Simulator frames labelled with the goal, object and EE positions, for ``vit_policy.pretrain``; or,
without any simulator label, the recorded demonstrations labelled in hindsight (:func:`pretrain_from_demonstrations`).

No demonstration is recorded or trained on: each reset draws a new goal (and object). In most resets
the arm reaches for random waypoints (around the goal, the object, or anywhere near its start) so that
the frames show it near, in front of and away from what it will have to find; in the rest the task's
scripted expert drives it with execution noise, so the frames also show what a rollout shows: the
object pushed or carried, the gripper against it, the goal marker covered. The labels are the
simulator's privileged state in the base frame: what a motion-capture system would give on a robot.

    vit-policy sim-pretrain --task FetchReach-v4 --resets 2000 --steps 8000 --out outputs/pretrain/reach.safetensors image_size=64
    vit-policy train ... policy.encoder.weights=outputs/pretrain/reach.safetensors policy.points.count=2 policy.encoder.freeze=all
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from sim_tests.configuration import SimConfig
from sim_tests.fetch_env import ArmCommand, FetchSim, SimFrame
from vit_policy.model.configuration import EncoderConfig
from vit_policy.pretrain import PretrainResult, pretrain_encoder

if TYPE_CHECKING:
    from sim_tests.demo import TaskPlan

PRETRAIN_SEED = 1_000_000  # resets draw goals from seeds no demonstration (from 0) or evaluation (from 100000) uses


def point_names(sim: FetchSim) -> list[str]:
    """The labelled points of a task: goal, EE, and the object where there is one."""
    return ["goal", "ee", "object"] if sim.has_object else ["goal", "ee"]


def _points(frame: SimFrame, names: list[str]) -> np.ndarray:
    at = {"goal": frame.goal, "ee": frame.position, "object": frame.object_position}
    return np.stack([np.asarray(at[n], np.float64) for n in names])


def localization_frames(
    cfg: SimConfig, resets: int, frames_per_reset: int = 8, stride: int = 2, seed: int = PRETRAIN_SEED,
    progress: Callable[[int], None] | None = None, expert_fraction: float = 0.0, expert_noise_m: float = 0.015,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """``resets`` episodes, a frame every ``stride`` steps: (images {camera: (N, H, W, 3)}, points (N, T, 3)
    in the base frame, point names). Random reaching, except in an ``expert_fraction`` share of the resets,
    which the task's scripted expert drives (plus ``expert_noise_m`` of execution noise), their frames
    spread over the whole episode."""
    if resets < 1 or frames_per_reset < 1 or stride < 1:
        raise ValueError(f"resets {resets}, frames_per_reset {frames_per_reset}, stride {stride}: each must be at least 1")
    if not 0.0 <= expert_fraction <= 1.0:
        raise ValueError(f"expert_fraction: {expert_fraction} must be in [0, 1] (the share of resets the expert drives)")
    from sim_tests.experts import expert_command, make_expert, with_execution_noise

    sim = FetchSim(cfg)
    names = point_names(sim)
    rng = np.random.default_rng(seed)
    images: dict[str, list[np.ndarray]] = {c: [] for c in cfg.cameras}
    points = []
    try:
        for r in range(resets):
            frame = sim.reset(seed=seed + r, render=False)
            driven = int((r + 1) * expert_fraction) > int(r * expert_fraction)  # evenly spread, the exact share
            expert = make_expert(cfg.task) if driven else None
            every = max(stride, cfg.episode_steps // frames_per_reset) if driven else stride  # the expert's: the whole episode
            home = frame.position.copy()
            gripper = 0.0 if driven else float(rng.integers(0, 2))
            target = home
            for i in range(frames_per_reset * every):
                if expert is not None:
                    cmd = with_execution_noise(expert_command(expert, frame), rng, expert_noise_m)
                else:
                    if i % 6 == 0:  # a new waypoint: near the goal, near the object, or anywhere around the start
                        kind = rng.integers(0, 3)
                        if kind == 0:
                            target = frame.goal + rng.normal(0.0, 0.04, 3)
                        elif kind == 1 and frame.object_position is not None:
                            target = frame.object_position + np.array([*rng.normal(0.0, 0.04, 2), rng.uniform(0.0, 0.1)])
                        else:
                            target = home + rng.uniform([-0.2, -0.2, -0.2], [0.2, 0.2, 0.1])
                    cmd = ArmCommand(target_position=target, gripper=gripper)
                keep = (i + 1) % every == 0
                frame = sim.step(cmd, render=keep)
                if keep:
                    for c in cfg.cameras:
                        images[c].append(frame.images[c])
                    points.append(_points(frame, names))
            if progress is not None:
                progress(r + 1)
    finally:
        sim.close()
    return {c: np.stack(v) for c, v in images.items()}, np.stack(points), names


def pretrain_for_task(cfg: SimConfig, out: Path, resets: int, steps: int, policy_overrides: list[str] | None = None,
                      frames_per_reset: int = 8, batch_size: int = 64, seed: int = PRETRAIN_SEED,
                      expert_fraction: float = 0.0) -> PretrainResult:
    """Render ``resets`` x ``frames_per_reset`` labelled frames and pretrain the task's sim-policy encoder on them
    (``expert_fraction``: see :func:`localization_frames`)."""
    from tqdm.auto import tqdm

    from sim_tests.record import policy_config_for

    enc = policy_config_for(cfg, overrides=policy_overrides).encoder
    bar = tqdm(total=resets, desc=f"render {cfg.task}", unit="reset", dynamic_ncols=True)
    images, points, names = localization_frames(cfg, resets, frames_per_reset, seed=seed, progress=lambda n: bar.update(1),
                                                expert_fraction=expert_fraction)
    bar.close()
    return _pretrain_with_bar(enc, images, points, names, out, steps, batch_size, seed=0)  # ``seed`` draws the resets, not the weights


def _pretrain_with_bar(enc: EncoderConfig, images: dict[str, np.ndarray], points: np.ndarray, names: list[str], out: Path,
                       steps: int, batch_size: int, seed: int, shift_px: int = 0) -> PretrainResult:
    """``pretrain_encoder`` behind a tqdm bar of its steps (with the loss)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc="pretrain encoder", unit="step", dynamic_ncols=True)

    def tick(step: int, loss: float) -> None:
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")

    try:
        return pretrain_encoder(enc, images, points, names, out, steps, batch_size=batch_size, seed=seed, progress=tick, shift_px=shift_px)
    finally:
        bar.close()


def pretrain_from_demonstrations(cfg: SimConfig, bags: list[str | Path], out: Path, steps: int, points: list[str],
                                 policy_overrides: list[str] | None = None, batch_size: int = 64, seed: int = 0,
                                 shift_px: int = 0) -> PretrainResult:
    """Pretrain the task's sim-policy encoder on the recorded demonstrations' own frames, labelled in hindsight
    (``vit_policy.pretrain.hindsight_points``: the EE, where the demonstration ended, where the gripper closed).

    Only what a robot records is read: the bags' frames, EE poses and gripper joints; no simulator state.
    """
    from sim_tests.record import data_config_for, policy_config_for
    from vit_policy.data.bags import extract_episodes
    from vit_policy.pretrain import hindsight_points

    pcfg = policy_config_for(cfg, overrides=policy_overrides)
    size = (cfg.image_size, cfg.image_size)
    episodes = [ep for bag in bags for ep in extract_episodes(bag, data_config_for(cfg), pcfg.chunk_size, size)]
    images, targets = hindsight_points(episodes, points)
    return _pretrain_with_bar(pcfg.encoder, images, targets, points, out, steps, batch_size, seed, shift_px)


def pretrain_for_recipe(tp: TaskPlan, cfg: SimConfig, bags: list[str | Path], out: Path, policy_overrides: list[str],
                        seed: int = 0) -> PretrainResult | None:
    """A recipe's encoder pretraining (sim_tests.demo.TaskPlan): on labelled simulator frames (``pretrain_resets``),
    on its demonstrations labelled in hindsight (``pretrain_hindsight``, label-free), or none."""
    if tp.pretrain_resets:
        print(f"== {tp.task}: pretraining the encoder on {tp.pretrain_resets * 8} frames labelled by the simulator ({tp.pretrain_steps} steps)")
        return pretrain_for_task(cfg, out, tp.pretrain_resets, tp.pretrain_steps, policy_overrides, expert_fraction=tp.pretrain_expert)
    if tp.pretrain_hindsight:
        print(f"== {tp.task}: pretraining the encoder on the demonstrations' frames, labelled in hindsight: "
              f"{', '.join(tp.pretrain_hindsight)} ({tp.pretrain_steps} steps)")
        return pretrain_from_demonstrations(cfg, bags, out, tp.pretrain_steps, tp.pretrain_hindsight, policy_overrides, seed=seed,
                                            shift_px=tp.pretrain_shift_px)
    return None
