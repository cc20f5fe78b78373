"""Labelled simulator frames for encoder pretraining, and the encoder they pretrain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim_tests.configuration import SimConfig
from sim_tests.fetch_env import FetchSim
from sim_tests.pretrain import PRETRAIN_SEED, localization_frames


def test_labels_are_the_simulator_state_of_each_frame() -> None:
    cfg = SimConfig(task="FetchPush-v4", image_size=48)
    images, points, names = localization_frames(cfg, resets=3, frames_per_reset=4)
    assert names == ["goal", "ee", "object"]
    assert images["external"].shape == (12, 48, 48, 3) and points.shape == (12, 3, 3)
    sim = FetchSim(cfg)
    for r in range(3):  # each reset's goal and (unmoved) start object are those of its seed
        start = sim.reset(seed=PRETRAIN_SEED + r, render=False)
        np.testing.assert_allclose(points[4 * r:4 * r + 4, 0], np.repeat(start.goal[None], 4, 0), atol=1e-6)  # the base sways by nanometres
    sim.close()
    assert len({tuple(np.round(points[4 * r, 0], 6)) for r in range(3)}) == 3  # a new goal every reset
    ee = points[:4, 1]
    assert np.linalg.norm(ee[-1] - ee[0]) > 0.02, "the arm should move between frames of a reset"
    assert all(not np.array_equal(images["external"][i], images["external"][i + 1]) for i in range(3))


def test_expert_driven_resets_show_the_object_pushed_toward_the_goal() -> None:
    """With expert_fraction 0.5 every second reset is the scripted expert's (noisy) push: its frames follow
    the object on its way to the goal; the random-reaching resets leave it far from the goal."""
    cfg = SimConfig(task="FetchPush-v4", image_size=48)
    images, points, _ = localization_frames(cfg, resets=4, frames_per_reset=8, expert_fraction=0.5)
    assert images["external"].shape[0] == 32
    per = points.reshape(4, 8, 3, 3)  # reset, frame, (goal, ee, object), xyz
    to_goal = np.linalg.norm(per[:, :, 2, :2] - per[:, :, 0, :2], axis=-1)  # object-goal distance per frame
    for r in (1, 3):  # the expert's
        assert to_goal[r, -1] < to_goal[r, 0] - 0.04, to_goal[r]  # pushed at least 4 cm nearer
    for r in (0, 2):  # random reaching (these seeds' objects start over 5 cm from their goals)
        assert to_goal[r, -1] > 0.05, to_goal[r]


def test_bad_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="resets 0"):
        localization_frames(SimConfig(task="FetchReach-v4"), resets=0)
    with pytest.raises(ValueError, match="expert_fraction"):
        localization_frames(SimConfig(task="FetchPush-v4"), resets=2, expert_fraction=1.5)


def test_sim_pretrain_command_writes_the_weights_and_rejects_bad_counts(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "enc.safetensors"
    cmd = [sys.executable, "-m", "vit_policy.cli", "sim-pretrain", "--task", "FetchReach-v4", "--out", str(out), "image_size=48"]
    res = subprocess.run([*cmd, "--resets", "3", "--steps", "2"], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.is_file() and "goal" in res.stdout and f"policy.encoder.weights={out} policy.encoder.family=" in res.stdout
    res = subprocess.run([*cmd, "--resets", "0"], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "resets 0" in res.stderr


def test_hindsight_push_labels_follow_the_simulated_object() -> None:
    """Push demonstrations that end lifted over the object (expert ``finish: lift``), DART noise as the recipe: the
    hindsight ``end`` lands on the goal and ``pushed`` on the object the simulator moved, frame by frame, although
    both are computed from the EE track alone (the simulator's object and goal are read here only to score them)."""
    from sim_tests.experts import expert_command, make_expert, with_execution_noise
    from vit_policy.data.bags import Episode
    from vit_policy.pretrain import hindsight_points

    sim = FetchSim(SimConfig(task="FetchPush-v4", episode_steps=80))
    end_err, pushed_err, contact_err = [], [], []
    for seed in range(200, 212):
        expert, rng = make_expert("FetchPush-v4", {"finish": "lift"}), np.random.default_rng(seed)
        frame = sim.reset(seed=seed, render=False)
        ee, obj = [frame.position], [frame.object_position]
        while not sim.done:
            frame = sim.step(with_execution_noise(expert_command(expert, frame), rng, 0.01), render=False)
            ee.append(frame.position)
            obj.append(frame.object_position)
        if not frame.success:
            continue  # recording keeps successful demonstrations only
        if ee[-1][2] < min(p[2] for p in ee) + 0.05:
            continue  # the EE track shows a push still under way at the end (no lift-off): its end is not the goal
        n = len(ee)
        ep = Episode("sim", np.arange(n, dtype=np.int64), {"front": np.zeros((n, 4, 4, 3), np.uint8)}, np.array(ee),
                     np.tile([0, 0, 0, 1.0], (n, 1)), np.zeros(n), np.zeros((n, 1, 4)), np.ones((n, 1), bool))
        labels = hindsight_points([ep], ["end", "pushed", "contact"])[1]
        end_err.append(np.linalg.norm(labels[0, 0, :2] - frame.goal[:2]))
        pushed_err += list(np.linalg.norm(labels[:, 1, :2] - np.array(obj)[:, :2], axis=1))
        contact_err += list(np.linalg.norm(labels[:, 2, :2] - np.array(obj)[:, :2], axis=1))
    sim.close()
    assert len(end_err) >= 6
    assert np.median(end_err) < 0.02, f"end: {np.round(end_err, 3)} m from the goal"
    assert np.median(pushed_err) < 0.025 < np.median(contact_err), (np.median(pushed_err), np.median(contact_err))
