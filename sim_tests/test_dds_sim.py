"""Simulator in the loop over DDS: a trained policy in the real node (its own process) drives the sim arm.

The bridge (the simulated robot) speaks CycloneDDS; the node runs on the DDS backend and on rclpy (Fast
DDS, as on a default ROS 2 install), with the same success criterion, on the one trained policy.
"""

from __future__ import annotations

import os
import random
import time

import pytest

pytest.importorskip("cyclonedds", reason="the DDS backend needs the 'dds' extra: pip install -e .[dds]")

from sim_tests.dds_bridge import node_parameters, run_sim_in_the_loop  # noqa: E402


@pytest.mark.slow
@pytest.mark.dds
@pytest.mark.parametrize("transport", ["dds", "rclpy"])
def test_node_over_dds_drives_the_sim_to_the_goal(trained_reach, tmp_path, monkeypatch, transport: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path / "ros_log"))
    if transport == "rclpy":
        try:
            import rclpy  # noqa: F401
        except ImportError as exc:  # never a skip: make test installs the ros extra
            raise ImportError(f"{exc}: the node on rclpy needs the ROS 2 pip wheels: pip install -c constraints.txt -e .[ros]") from None
    cfg = trained_reach.sim
    cfg.episode_steps = 40  # 1.6 s of wall time per episode
    # rclpy domain ids stay below 102 (Fast DDS's port formula); the DDS tests' 100-199 work for Cyclone
    domain = random.Random(os.getpid() ^ time.time_ns()).randint(100 if transport == "dds" else 50, 199 if transport == "dds" else 99)
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
    from sim_tests.conftest import reach_sim_config

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
