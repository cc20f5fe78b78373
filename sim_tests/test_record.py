"""Expert demonstrations recorded as rosbag2 read back through the data pipeline unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from sim_tests.configuration import SimConfig
from sim_tests.experts import make_expert
from sim_tests.fetch_env import FetchSim
from sim_tests.record import camera_topic, data_config_for, record_demonstrations
from vit_policy.data.bags import bag_topics, extract_episodes

K = 4


def _rerun(cfg: SimConfig, seed: int) -> dict[str, np.ndarray]:
    """The same episode again, straight from the simulator (the ground truth for the bag)."""
    sim = FetchSim(cfg)
    expert = make_expert(cfg.task)
    frame = sim.reset(seed=seed)
    out: dict[str, list] = {"image": [], "position": [], "gripper": [], "target": [], "cmd_gripper": []}
    while True:
        target, grip = expert.act(frame)
        for key, val in (("image", frame.images["external"]), ("position", frame.position), ("gripper", frame.gripper),
                         ("target", target), ("cmd_gripper", grip)):
            out[key].append(val)
        if sim.done:
            break
        frame = sim.step(sim.action_from_target(target, grip))
    sim.close()
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_recorded_bags_round_trip_through_the_data_pipeline(tmp_path: Path, storage: str) -> None:
    cfg = SimConfig(task="FetchPickAndPlace-v4", image_size=48, episode_steps=40)
    infos = record_demonstrations(cfg, tmp_path / "demos", episodes=2, seed=10, storage=storage)  # type: ignore[arg-type]
    assert [i.bag for i in infos] == ["episode_000", "episode_001"] and all(i.success for i in infos)
    meta = yaml.safe_load((tmp_path / "demos" / "demos.yaml").read_text())
    assert meta["task"] == "FetchPickAndPlace-v4" and meta["gripper_joints"] == ["robot0:l_gripper_finger_joint", "robot0:r_gripper_finger_joint"]
    bag = tmp_path / "demos" / "episode_001"
    assert bag_topics(bag) == {
        camera_topic("external"): "sensor_msgs/msg/Image", "/ee_pose": "geometry_msgs/msg/PoseStamped",
        "/joint_states": "sensor_msgs/msg/JointState", "/expert/target_pose": "geometry_msgs/msg/PoseStamped",
        "/expert/gripper": "std_msgs/msg/Float64",
    }
    (ep,) = extract_episodes(bag, data_config_for(cfg, labels="command"), chunk_size=K)
    truth = _rerun(cfg, seed=infos[1].seed)
    n = len(ep)
    assert n == cfg.episode_steps  # every 40 ms step is one sample; the last has no future command
    assert np.all(np.diff(ep.stamps_ns) == 40_000_000) and ep.stamps_ns[0] == infos[1].start_ns
    np.testing.assert_array_equal(ep.images["external"], truth["image"][:n])  # rgb8, bit-exact
    np.testing.assert_allclose(ep.position, truth["position"][:n], atol=1e-9)
    np.testing.assert_allclose(ep.gripper, truth["gripper"][:n], atol=1e-6)
    # label step k of sample i = the expert's command at i + k + 1, relative to the pose at i
    for i in (0, 10, n - K - 1):
        for k in range(K):
            np.testing.assert_allclose(ep.action[i, k, :3], truth["target"][i + k + 1] - truth["position"][i], atol=1e-5)
            assert ep.action[i, k, 9] == pytest.approx(truth["cmd_gripper"][i + k + 1])
    assert ep.action_mask[: n - K].all() and not ep.action_mask[-1, 1:].any()
    # the pick-and-place demonstration closes and later holds the gripper: both label values occur
    assert {0.0, 1.0} <= set(np.unique(ep.action[:, 0, 9]).tolist())


def test_future_pose_labels_follow_the_arm(tmp_path: Path) -> None:
    cfg = SimConfig(task="FetchReach-v4", image_size=32, episode_steps=20)
    record_demonstrations(cfg, tmp_path, episodes=1, seed=3)
    (ep,) = extract_episodes(tmp_path / "episode_000", data_config_for(cfg), chunk_size=K)
    # future_pose: step 0 is the next measured pose, so dp[i, 0] = p[i + 1] - p[i]
    np.testing.assert_allclose(ep.action[:-1, 0, :3], np.diff(ep.position, axis=0), atol=1e-6)
    assert np.linalg.norm(ep.action[0, 0, :3]) > 0.01  # the expert moves from the first step


def test_orientation_goal_is_recorded_as_the_expert_command(tmp_path: Path) -> None:
    """FetchReachOrient: /expert/target_pose carries the goal yaw, so rotation labels turn toward it."""
    from scipy.spatial.transform import Rotation

    from sim_tests.closed_loop import load_task_config
    from vit_policy.geometry import matrix_from_rot6d

    cfg = load_task_config("FetchReachOrient", None, ["image_size=32", "episode_steps=20"])
    sim = FetchSim(cfg)
    for seed in range(50):  # the first goal that needs a turn
        start = sim.reset(seed=seed, render=False)
        if start.orientation_error_deg > 30:
            break
    sim.close()
    (info,) = record_demonstrations(cfg, tmp_path, episodes=1, seed=seed)
    assert info.seed == seed
    goal = Rotation.from_quat(start.goal_quaternion)
    (ep,) = extract_episodes(tmp_path / "episode_000", data_config_for(cfg, labels="command"), chunk_size=K)
    # label rotation = R_command R_observed^T: applied to the observed orientation it gives the goal's
    for i in (0, 5):
        commanded = Rotation.from_matrix(matrix_from_rot6d(ep.action[i, 0, 3:9])) * Rotation.from_quat(ep.quaternion[i])
        assert np.degrees((commanded * goal.inv()).magnitude()) < 0.5
    turned = np.degrees((Rotation.from_quat(ep.quaternion[-1]) * Rotation.from_quat(ep.quaternion[0]).inv()).magnitude())
    assert turned > 20.0 and info.success  # the arm followed the command and achieved the pose


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "episode_000").mkdir()
    with pytest.raises(FileExistsError, match="episode_000"):
        record_demonstrations(SimConfig(image_size=32, episode_steps=2), tmp_path, episodes=1)


def test_execution_noise_perturbs_the_arm_but_not_the_recorded_commands(tmp_path: Path) -> None:
    """DART recording: the arm executes noisy targets, the bag holds the expert's clean command for the state it was in."""
    cfg = SimConfig(task="FetchReach-v4", image_size=32, episode_steps=12)
    (clean,) = record_demonstrations(cfg, tmp_path / "clean", episodes=1, seed=3)
    (noisy,) = record_demonstrations(cfg, tmp_path / "noisy", episodes=1, seed=clean.seed, action_noise_m=0.01)
    assert noisy.seed == clean.seed
    data = data_config_for(cfg, labels="command")
    (ep_clean,) = extract_episodes(tmp_path / "clean" / "episode_000", data, chunk_size=K)
    (ep,) = extract_episodes(tmp_path / "noisy" / "episode_000", data, chunk_size=K)
    assert np.max(np.linalg.norm(ep.position - ep_clean.position, axis=1)) > 0.01  # the noise moved the arm
    sim = FetchSim(cfg)
    goal = sim.reset(seed=clean.seed, render=False).goal
    sim.close()
    expert_step = make_expert(cfg.task).step
    for i in range(len(ep) - 1):  # the command recorded at step i + 1 is the expert's, from the pose at i + 1
        command = ep.action[i, 0, :3] + ep.position[i]
        delta = goal - ep.position[i + 1]
        want = goal if np.linalg.norm(delta) <= expert_step else ep.position[i + 1] + delta * expert_step / np.linalg.norm(delta)
        np.testing.assert_allclose(command, want, atol=1e-5)
    with pytest.raises(ValueError, match="action_noise_m"):
        record_demonstrations(cfg, tmp_path / "bad", episodes=1, action_noise_m=-0.01)


def test_hold_steps_ends_each_bag_that_many_steps_after_the_first_success(tmp_path: Path) -> None:
    """Trimmed demonstrations: the bag stops ``hold_steps`` after success; whole episodes without it."""
    cfg = SimConfig(task="FetchReach-v4", image_size=32, episode_steps=30)
    (whole,) = record_demonstrations(cfg, tmp_path / "whole", episodes=1, seed=4)
    (held,) = record_demonstrations(cfg, tmp_path / "held", episodes=1, seed=4, hold_steps=2)
    assert whole.first_success_step is not None and whole.first_success_step + 2 < whole.steps == 30
    assert (held.first_success_step, held.steps, held.success) == (whole.first_success_step, whole.first_success_step + 2, True)
    data = data_config_for(cfg, labels="command")
    (ep_whole,) = extract_episodes(tmp_path / "whole" / "episode_000", data, chunk_size=K)
    (ep_held,) = extract_episodes(tmp_path / "held" / "episode_000", data, chunk_size=K)
    assert len(ep_whole) - len(ep_held) == whole.steps - held.steps > 0  # the frames after the hold are not recorded
    np.testing.assert_allclose(ep_held.position, ep_whole.position[: len(ep_held)], atol=1e-9)  # the same run, cut short
    assert yaml.safe_load((tmp_path / "held" / "demos.yaml").read_text())["hold_steps"] == 2
    with pytest.raises(ValueError, match="hold_steps"):
        record_demonstrations(cfg, tmp_path / "bad", episodes=1, hold_steps=-1)
