"""The rotation half of the chain: orientation goals in the demonstrations -> rot6d labels -> the
policy's target orientations -> PolicyRunner and the safety filter -> the simulated arm turning.

The Reach policies elsewhere only ever command the home orientation. Here a policy is trained on a
dozen FetchReachOrient demonstrations and run closed loop on those same goals: success needs the
gripper turned within 15 degrees of each goal's yaw. Placing goals it has not seen takes far more
data and training than a test can afford (benchmarks/sim_success.py --tasks FetchReachOrient).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sim_tests.closed_loop import evaluate_policy, load_task_config
from sim_tests.fetch_env import FetchSim
from sim_tests.record import record_demonstrations, train_config_for

DEMOS = 12
SEED = 2000
STEPS = 1000


@pytest.mark.slow
def test_policy_turns_the_gripper_to_its_demonstrated_goals(tmp_path: Path) -> None:
    import torch

    from vit_policy.model.policy import VisuomotorPolicy
    from vit_policy.train import train

    cfg = load_task_config("FetchReachOrient", None, ["episode_steps=30"])
    infos = record_demonstrations(cfg, tmp_path / "demos", DEMOS, seed=SEED, hold_steps=3)
    torch.manual_seed(0)  # one thread (conftest.py): the other xdist worker or a busy machine shares the cores
    result = train(train_config_for(cfg, [str(tmp_path / "demos" / "episode_*")], tmp_path, steps=STEPS,
                                    overrides=["val_fraction=0.0"]))
    policy = VisuomotorPolicy.from_pretrained(result.last).eval()
    seeds = [i.seed for i in infos]
    assert seeds == list(range(SEED, SEED + DEMOS))  # the expert solved each; the policy gets the same goals
    report = evaluate_policy(policy, cfg, episodes=DEMOS, seed=SEED)
    print(report.table())
    assert all(e.non_finite_commands == 0 and e.final_orientation_error_deg is not None for e in report.episodes)
    sim = FetchSim(cfg)
    need_turn = {s for s in seeds if sim.reset(seed=s, render=False).orientation_error_deg > cfg.yaw_tolerance_deg}
    sim.close()
    assert len(need_turn) >= DEMOS // 2  # goals the arm fails unless it turns (test_fetch_env shows it)
    won = {e.seed for e in report.episodes if e.success}
    assert len(won & need_turn) >= 2 / 3 * len(need_turn), f"reached {sorted(won & need_turn)} of the goals that need a turn {sorted(need_turn)}"
    assert len(won) >= 8, f"{len(won)}/{DEMOS} demonstrated goal poses reached"  # measured: 11/12 (10/12 with the 16 cm bar)
