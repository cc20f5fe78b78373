"""The whole chain in simulation: expert demos (rosbag2) -> train.py -> closed loop through PolicyRunner."""

from __future__ import annotations

import pytest

from sim_tests.closed_loop import evaluate_policy, evaluate_random


@pytest.mark.slow
def test_trained_reach_policy_succeeds_closed_loop(trained_reach, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vit_policy.model.policy import VisuomotorPolicy

    cfg = trained_reach.sim
    cfg.episode_steps = 25  # 1 s: the expert needs at most 7 steps
    policy = VisuomotorPolicy.from_pretrained(trained_reach.checkpoint).eval()
    seed = 5000  # goals no demonstration had (the demonstrations used seeds 1000..1299)
    report = evaluate_policy(policy, cfg, episodes=20, seed=seed, out_dir=tmp_path, gifs=2)
    chance = evaluate_random(cfg, episodes=20, seed=seed)
    print(f"{trained_reach.demos} demos, {trained_reach.steps} steps in {trained_reach.train_s:.0f} s\n{report.table()}")
    print(chance.table().splitlines()[-1])
    assert all(e.non_finite_commands == 0 for e in report.episodes)
    assert chance.successes <= 2, f"random actions solve {chance.successes}/20 episodes"
    assert report.successes >= 12, f"trained policy: {report.successes}/20 closed-loop successes (< 60 %)"
