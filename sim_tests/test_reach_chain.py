"""The Reach chain, one module so that one pytest-xdist worker runs it (``--dist loadfile``): expert
demonstrations (rosbag2) -> encoder pretrained on their frames labelled in hindsight (no simulator label)
-> train.py -> closed loop through PolicyRunner, and the same checkpoint in the real node (its own process)
driving the simulated arm over DDS.

The session fixtures in ``conftest.py`` train once; the bridge (the simulated robot) speaks CycloneDDS and
the node runs on the DDS backend and on rclpy (Fast DDS, as on a default ROS 2 install).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from sim_tests.closed_loop import evaluate_policy, evaluate_random
from sim_tests.conftest import REACH_PRETRAIN_STEPS, reach_sim_config
from sim_tests.dds_bridge import node_parameters, run_sim_in_the_loop
from vit_policy.pretrain import PretrainResult


@pytest.mark.slow
def test_encoder_pretrained_on_the_demonstrations_alone_places_new_goals(pretrained_reach_encoder: PretrainResult,
                                                                         reach_demos: list[str]) -> None:
    """The session's Reach encoder learnt from the recorded demonstrations only (frames, EE poses): on held-out
    demonstrations it places where each one ended (the goal it reached) and the EE far better than their
    spread, and a policy built with encoder.weights starts from exactly that backbone. The simulator's goal
    is read here only to score the hindsight label: it is within the 5 cm success radius of each end."""
    import torch
    from safetensors.torch import load_file

    from sim_tests.record import data_config_for, policy_config_for
    from vit_policy.data.bags import extract_episodes
    from vit_policy.model.checkpoint import build_policy

    cfg, res = reach_sim_config(), pretrained_reach_encoder
    print(res.table())
    ends = np.stack([extract_episodes(b, data_config_for(cfg), 1, (cfg.image_size, cfg.image_size))[0].position[-1] for b in reach_demos])
    spread = float(np.median(np.linalg.norm(ends - ends.mean(0), axis=-1)))  # ~13 cm: ignore the pixels
    assert res.steps == REACH_PRETRAIN_STEPS and res.target_names == ["ee", "end"] and res.frames >= 10 * len(reach_demos)
    assert res.val_error_m["end"] < 0.5 * spread, (res.val_error_m, spread)
    assert res.val_error_m["ee"] < 0.5 * spread, (res.val_error_m, spread)
    seeds = [e["seed"] for e in yaml.safe_load((Path(reach_demos[0]).parent / "demos.yaml").read_text())["episodes"][:5]]
    goals = np.stack([_goal(cfg, seed) for seed in seeds])
    assert np.all(np.linalg.norm(ends[:5] - goals, axis=-1) < 0.05), (ends[:5], goals)
    policy = build_policy(policy_config_for(cfg, overrides=[f"encoder.weights={res.path}"]))
    saved = load_file(str(res.path))
    own = policy.encoder_for("side").backbone.state_dict()
    assert all(torch.equal(saved[k], own[k]) for k in own)


def _goal(cfg: object, seed: int) -> np.ndarray:
    from sim_tests.fetch_env import FetchSim

    sim = FetchSim(cfg)  # type: ignore[arg-type]
    try:
        return np.asarray(sim.reset(seed=seed, render=False).goal, np.float64)
    finally:
        sim.close()


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


@pytest.mark.slow
@pytest.mark.dds
@pytest.mark.parametrize("transport", ["dds", "rclpy"])
def test_node_over_dds_drives_the_sim_to_the_goal(trained_reach, tmp_path, monkeypatch, dds_domain, transport: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path / "ros_log"))
    if transport == "rclpy":
        try:
            import rclpy  # noqa: F401
        except ImportError as exc:  # never a skip: make test installs the ros extra
            raise ImportError(f"{exc}: the node on rclpy needs the ROS 2 pip wheels: pip install -c constraints.txt -e .[ros]") from None
    cfg = trained_reach.sim
    cfg.episode_steps = 40  # 1.6 s of wall time per episode
    # rclpy domain ids stay below 102 (Fast DDS's port formula); the DDS tests' 100-199 work for Cyclone
    domain = dds_domain(100, 199) if transport == "dds" else dds_domain(50, 99)
    episodes, log = run_sim_in_the_loop(cfg, trained_reach.checkpoint, episodes=3, workdir=tmp_path, domain_id=domain, seed=5000,
                                        transport=transport)
    summary = "\n".join(str(e) for e in episodes)
    print(f"node on {transport}, bridge on CycloneDDS:\n{summary}")
    assert all(e.commands >= 0.5 * e.steps for e in episodes), f"few commands arrived over DDS:\n{summary}\n{log[-2000:]}"
    assert all(e.non_finite_commands == 0 for e in episodes), summary
    assert all(e.policy_commands >= 0.5 * e.steps for e in episodes), f"the node mostly sent stops:\n{summary}\n{log[-2000:]}"
    assert any(e.reached for e in episodes), f"the goal was never reached over DDS:\n{summary}\n{log[-2000:]}"
    assert "Traceback" not in log and "ERROR" not in log, log


def test_node_parameters_match_the_simulator() -> None:
    cfg = reach_sim_config()
    p = node_parameters(cfg, "/ckpt")["policy_node"]["ros__parameters"]
    assert p["output_mode"] == "pose" and p["runtime"]["control_rate_hz"] == 25.0 and not p["runtime"]["synchronous"]
    assert p["gripper_joints"] == ["robot0:l_gripper_finger_joint", "robot0:r_gripper_finger_joint"] and p["gripper_open"] == 0.1
    from ros_nodes.policy_node import config_from_parameters, parameter_defaults

    flat = {"checkpoint": "/ckpt", "output_mode": "pose", "gripper_joints": p["gripper_joints"], "gripper_open": 0.1}
    flat.update({f"runtime.{k}": v for k, v in p["runtime"].items()})
    flat.update({f"safety.{k}": v for k, v in p["safety"].items()})
    node_cfg = config_from_parameters({**parameter_defaults(), **flat})  # the node accepts every value
    assert node_cfg.safety.workspace_max == cfg.safety.workspace_max
