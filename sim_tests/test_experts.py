"""Each scripted expert solves its task in at least 9 of 10 seeded episodes."""

from __future__ import annotations

import numpy as np
import pytest

from sim_tests.closed_loop import load_task_config
from sim_tests.configuration import SimConfig
from sim_tests.experts import make_expert
from sim_tests.record import expert_success_rate


@pytest.mark.parametrize("task", ["FetchReach-v4", "FetchPush-v4", "FetchPickAndPlace-v4", "FetchReachOrient"])
def test_expert_succeeds_in_9_of_10(task: str) -> None:
    cfg = load_task_config(task, None) if task == "FetchReachOrient" else SimConfig(task=task)  # type: ignore[arg-type]
    wins, firsts = expert_success_rate(cfg, episodes=10, seed=100)
    assert wins >= 9, f"{task}: expert succeeded in {wins}/10 episodes (first-success steps {firsts})"
    assert all(f <= 45 for f in firsts if f is not None)  # well inside the 50-step episode


def test_doing_nothing_fails_push_and_pick() -> None:
    """The tasks are not solved by standing still (so the experts' success means something)."""
    from sim_tests.fetch_env import FetchSim

    for task in ("FetchPush-v4", "FetchPickAndPlace-v4"):
        sim = FetchSim(SimConfig(task=task, episode_steps=10))
        wins = 0
        for seed in range(5):
            frame = sim.reset(seed=seed, render=False)
            while not sim.done:
                frame = sim.step(sim.action_from_target(frame.position, 1.0), render=False)
            wins += frame.success
        sim.close()
        assert wins <= 1, task


def test_unknown_task_names_the_choices() -> None:
    with pytest.raises(ValueError, match="FetchPush-v4"):
        make_expert("FetchSlide-v4")


def test_push_expert_can_finish_above_the_pushed_object() -> None:
    """``finish: lift`` ends a push with the gripper raised over the object, which stays at its goal: the
    demonstration's last EE pose then says where the goal was (the hindsight ``end`` label)."""
    from sim_tests.fetch_env import FetchSim
    from vit_policy.pretrain import end_point

    sim = FetchSim(SimConfig(task="FetchPush-v4", episode_steps=90))
    for seed in (100, 101, 102):
        expert, frame, positions = make_expert("FetchPush-v4", {"finish": "lift"}), sim.reset(seed=seed, render=False), []
        while not sim.done:
            frame = sim.step(sim.action_from_target(*expert.act(frame)), render=False)
            positions.append(frame.position)
        assert expert.phase == "lift", f"seed {seed}: the push did not finish in 90 steps"
        assert frame.success
        end = end_point(np.array(positions))
        assert np.linalg.norm(end[:2] - frame.goal[:2]) < 0.02, f"seed {seed}: ended {end} for the goal {frame.goal}"
        assert end[2] > frame.object_position[2] + 0.07  # above the object, not beside it
    sim.close()


def test_expert_settings_are_checked_by_name_and_type() -> None:
    assert make_expert("FetchPush-v4", {"finish": "lift", "hover": 0.12}).hover == 0.12  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"expert.finsh: .*choose from \[.*'finish'"):
        make_expert("FetchPush-v4", {"finsh": "lift"})
    with pytest.raises(ValueError, match="expert.finish: 'drop'"):
        make_expert("FetchPush-v4", {"finish": "drop"})
    with pytest.raises(ValueError, match="expert.hover: 'high' is not a float"):
        make_expert("FetchPush-v4", {"hover": "high"})
