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
    assert out.is_file() and "goal" in res.stdout and f"encoder.weights={out}" in res.stdout
    res = subprocess.run([*cmd, "--resets", "0"], cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "resets 0" in res.stderr
