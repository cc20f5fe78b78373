"""The Fetch wrapper reports what MuJoCo holds and obeys runtime commands."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sim_tests.configuration import SimConfig
from sim_tests.fetch_env import GRIP_SITE, MAX_ROT_STEP_RAD, ArmCommand, FetchSim
from vit_policy.config import ConfigError
from vit_policy.safety import Command


@pytest.fixture(scope="module")
def pick_sim():
    sim = FetchSim(SimConfig(task="FetchPickAndPlace-v4", image_size=64))
    yield sim
    sim.close()


def _site_pose_in_base(sim: FetchSim) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: MuJoCo's own pose algebra, base^-1 * site (quaternions w x y z)."""
    m, d = sim.model, sim.data
    base = m.body("robot0:base_link").id
    site = d.site(GRIP_SITE)
    site_q = np.zeros(4)
    mujoco.mju_mat2Quat(site_q, site.xmat)
    inv_p, inv_q = np.zeros(3), np.zeros(4)
    mujoco.mju_negPose(inv_p, inv_q, d.xpos[base], d.xquat[base])
    p, q = np.zeros(3), np.zeros(4)
    mujoco.mju_mulPose(p, q, inv_p, inv_q, site.xpos, site_q)
    return p, np.array([q[1], q[2], q[3], q[0]])


def _cmd(sim: FetchSim, target: np.ndarray | None, gripper: float = 1.0, is_stop: bool = False,
         quaternion: np.ndarray | None = None) -> Command:
    """A runtime Command for a target position; orientation: the given one, else the home (pointing down)."""
    pos = np.zeros(3) if target is None else np.asarray(target, float)
    quat = sim.home_quaternion if quaternion is None else quaternion
    return Command(0, pos, np.asarray(quat, float), np.zeros(3), np.zeros(3), gripper, is_stop=is_stop)


def test_ee_pose_equals_mujoco_site_pose(pick_sim: FetchSim) -> None:
    frame = pick_sim.reset(seed=3, render=False)
    rng = np.random.default_rng(0)
    for _ in range(8):
        p_ref, q_ref = _site_pose_in_base(pick_sim)
        np.testing.assert_allclose(frame.position, p_ref, atol=1e-9)
        assert abs(abs(float(frame.quaternion @ q_ref)) - 1.0) < 1e-9  # same rotation (q ~ -q)
        assert frame.quaternion[3] >= 0
        frame = pick_sim.step(rng.uniform(-1, 1, 4), render=False)
    # the base is not at the world origin, so a world-frame pose would fail the check above
    assert np.linalg.norm(pick_sim.data.xpos[pick_sim.model.body("robot0:base_link").id]) > 0.5
    # gripper pointing down: the EE z axis (approach) is close to -z of the base
    approach = Rotation.from_quat(frame.quaternion).apply([1.0, 0.0, 0.0])
    assert approach[2] < -0.95


def test_stamps_are_sim_time_in_ns(pick_sim: FetchSim) -> None:
    f0 = pick_sim.reset(seed=0, render=False)
    f1 = pick_sim.step(np.zeros(4), render=False)
    assert isinstance(f0.stamp_ns, int)
    assert f1.stamp_ns - f0.stamp_ns == pick_sim.dt_ns == 40_000_000


def test_frames_are_not_blank_and_change_when_the_arm_moves(pick_sim: FetchSim) -> None:
    f0 = pick_sim.reset(seed=1)
    img = f0.images["external"]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert img.std() > 20  # a scene, not a flat colour
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    again = pick_sim.render()["external"]
    np.testing.assert_array_equal(again, img)  # rendering is deterministic for a fixed state
    frame = f0
    for _ in range(8):
        frame = pick_sim.step(np.array([-1.0, 0.0, 1.0, 0.0]))
    moved = np.abs(frame.images["external"].astype(int) - img.astype(int)).max(axis=2)
    assert np.linalg.norm(frame.position - f0.position) > 0.1
    assert (moved > 30).sum() > 20  # the arm's pixels changed


def test_target_command_moves_the_ee_and_is_clipped(pick_sim: FetchSim) -> None:
    f0 = pick_sim.reset(seed=2, render=False)
    target = f0.position + np.array([0.03, -0.02, 0.02])
    action = pick_sim.action_from_target(target, 1.0)
    np.testing.assert_allclose(action[:3], [0.6, -0.4, 0.4], atol=1e-6)  # 5 cm per unit action
    frame = f0
    for _ in range(6):
        frame = pick_sim.step(_cmd(pick_sim, target), render=False)
    assert np.linalg.norm(frame.position - target) < 0.01
    far = pick_sim.action_from_target(frame.position + np.array([1.0, -2.0, 0.01]), 0.0)
    np.testing.assert_allclose(far, [1.0, -1.0, 0.2, -1.0], atol=1e-6)
    before = frame.position
    after = pick_sim.step(_cmd(pick_sim, frame.position + np.array([1.0, 0.0, 0.0])), render=False).position
    assert 0.01 < after[0] - before[0] <= 0.055  # one step moves at most ~5 cm


def test_stop_holds_and_bad_commands_are_rejected(pick_sim: FetchSim) -> None:
    f0 = pick_sim.reset(seed=4, render=False)
    stop = _cmd(pick_sim, None, is_stop=True)
    frame = f0
    for _ in range(5):
        frame = pick_sim.step(stop, render=False)
    assert np.linalg.norm(frame.position - f0.position) < 0.005
    with pytest.raises(ValueError, match="command.target_position"):
        pick_sim.step(_cmd(pick_sim, np.array([np.nan, 0.0, 0.5])), render=False)
    with pytest.raises(ValueError, match="command.gripper"):
        pick_sim.action_from_target(f0.position, float("nan"))
    with pytest.raises(ValueError, match="action: expected 4"):
        pick_sim.step(np.zeros(3), render=False)


def _angle_deg(q1: np.ndarray, q2: np.ndarray) -> float:
    return float(np.degrees((Rotation.from_quat(q1) * Rotation.from_quat(q2).inv()).magnitude()))


@pytest.mark.parametrize("axis, degrees", [("z", 45.0), ("z", -60.0), ("y", 20.0), ("x", -20.0)])
def test_commanded_orientation_is_applied_at_a_limited_rate(pick_sim: FetchSim, axis: str, degrees: float) -> None:
    f0 = pick_sim.reset(seed=0, render=False)
    target = (Rotation.from_euler(axis, degrees, degrees=True) * Rotation.from_quat(f0.quaternion)).as_quat()
    frame, steps = f0, []
    for _ in range(25):
        before = frame.quaternion
        frame = pick_sim.step(_cmd(pick_sim, f0.position, quaternion=target), render=False)
        steps.append(_angle_deg(frame.quaternion, before))
    assert _angle_deg(frame.quaternion, target) < 1.0  # reached (the env alone would stay pointing down)
    assert np.linalg.norm(frame.position - f0.position) < 0.005  # turned in place
    assert max(steps) <= np.degrees(MAX_ROT_STEP_RAD) + 0.5  # rate-limited, no jump
    for _ in range(10):
        frame = pick_sim.step(_cmd(pick_sim, None, is_stop=True), render=False)
    assert _angle_deg(frame.quaternion, target) < 2.0  # a stop holds the orientation it has
    frame = pick_sim.step(np.zeros(4), render=False)  # a raw env action: the env's pull back to pointing down
    for _ in range(20):
        frame = pick_sim.step(np.zeros(4), render=False)
    assert _angle_deg(frame.quaternion, f0.quaternion) < 2.0


def test_angular_twist_turns_at_the_commanded_rate(pick_sim: FetchSim) -> None:
    f0 = pick_sim.reset(seed=1, render=False)
    frame = f0
    for _ in range(10):  # 1 rad/s about the base z axis for 0.4 s
        frame = pick_sim.step(ArmCommand(linear=np.zeros(3), angular=np.array([0.0, 0.0, 1.0])), render=False)
    turned = (Rotation.from_quat(frame.quaternion) * Rotation.from_quat(f0.quaternion).inv()).as_rotvec()
    assert turned[2] == pytest.approx(0.4, abs=0.05) and np.linalg.norm(turned[:2]) < 0.02


def test_bad_orientation_commands_are_rejected(pick_sim: FetchSim) -> None:
    f0 = pick_sim.reset(seed=2, render=False)
    with pytest.raises(ValueError, match="command.target_quaternion.*not a unit quaternion"):
        pick_sim.step(ArmCommand(target_position=f0.position, target_quaternion=np.zeros(4)), render=False)
    with pytest.raises(ValueError, match="command.target_quaternion: contains NaN"):
        pick_sim.step(ArmCommand(target_position=f0.position, target_quaternion=np.array([0, 0, np.nan, 1.0])), render=False)
    with pytest.raises(ValueError, match="command.angular"):
        pick_sim.step(ArmCommand(linear=np.zeros(3), angular=np.array([np.inf, 0, 0])), render=False)


def test_gripper_opening_follows_commands(pick_sim: FetchSim) -> None:
    frame = pick_sim.reset(seed=5, render=False)
    for _ in range(10):
        frame = pick_sim.step(_cmd(pick_sim, frame.position, gripper=1.0), render=False)
    opened = frame.gripper
    for _ in range(10):
        frame = pick_sim.step(_cmd(pick_sim, frame.position, gripper=0.0), render=False)
    assert opened > 0.9 and frame.gripper < 0.1
    np.testing.assert_allclose(frame.gripper, frame.finger_positions.sum() / 0.1, atol=1e-9)


def test_reach_goal_success_matches_the_env() -> None:
    sim = FetchSim(SimConfig(task="FetchReach-v4", image_size=32))
    try:
        frame = sim.reset(seed=7, render=False)
        assert not frame.success and frame.object_position is None
        for _ in range(20):
            frame = sim.step(_cmd(sim, frame.goal), render=False)
        assert np.linalg.norm(frame.position - frame.goal) < 0.02 and frame.success
        # the goal marker is drawn where the goal is (enlarged to the configured radius)
        site = sim.model.site("target0").id
        np.testing.assert_allclose(sim.to_base(sim.data.site_xpos[site]), frame.goal, atol=1e-6)
        assert sim.model.site_size[site][0] == pytest.approx(0.03)
    finally:
        sim.close()


def test_unknown_camera_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"sim.cameras.head: MuJoCo camera 'head_cam' does not exist"):
        FetchSim(SimConfig(cameras={"head": "head_cam"}))
    with pytest.raises(ConfigError, match="sim.image_size"):
        SimConfig(image_size=8)


def test_visibility_measures_what_the_arm_hides() -> None:
    sim = FetchSim(SimConfig(task="FetchReach-v4", image_size=64, target_marker_radius=0.05))  # camera: external
    try:
        frame = sim.reset(seed=3, render=False)

        def goal_at(p_base: np.ndarray) -> dict[str, float]:
            sim.env.goal = sim.to_world(p_base)
            sim.env._render_callback()  # moves the marker and runs mj_forward
            return {cam: v["goal"] for cam, v in sim.visibility().items()}

        at_gripper = goal_at(frame.position)["external"]  # the gripper sits inside the 5 cm marker
        clear = goal_at(frame.position + np.array([0.25, 0.0, -0.1]))["external"]  # in front of the arm
        away = goal_at(frame.position + np.array([0.0, 0.0, 20.0]))["external"]  # out of view
        assert 0.0 < at_gripper < 0.8 and clear > 0.95 and away == 0.0, (at_gripper, clear, away)
        before = sim.render()["external"]
        sim.visibility()
        assert np.array_equal(sim.render()["external"], before)  # the robot is back in the camera frames
    finally:
        sim.close()


def _orient_config(**kw: object) -> SimConfig:
    return SimConfig(task="FetchReach-v4", image_size=48, target_marker_radius=0.05, goal_yaw_range_deg=60.0, **kw)  # type: ignore[arg-type]


def test_orientation_goal_is_drawn_per_seed_and_shown_by_the_marker() -> None:
    sim = FetchSim(_orient_config())
    try:
        yaws = []
        for seed in range(12):
            frame = sim.reset(seed=seed)
            goal = Rotation.from_quat(frame.goal_quaternion)
            yaw = (goal * Rotation.from_quat(sim.home_quaternion).inv()).as_rotvec()
            assert abs(yaw[0]) < 1e-9 and abs(yaw[1]) < 1e-9  # a turn about the vertical only
            yaws.append(np.degrees(yaw[2]))
            # the bar's long axis (site x) lies along the goal yaw, in the world
            bar = sim.data.site_xmat[sim.model.site("target0").id].reshape(3, 3)[:, 0]
            np.testing.assert_allclose(bar, [np.cos(yaw[2]), np.sin(yaw[2]), 0.0], atol=1e-6)
            assert frame.orientation_error_deg == pytest.approx(abs(yaws[-1]), abs=1.0)  # starts at home
        assert max(np.abs(yaws)) <= 60.0 and np.ptp(yaws) > 60.0  # spread over the range, fixed by the seed
        again = sim.reset(seed=3)
        assert np.degrees((Rotation.from_quat(again.goal_quaternion) * Rotation.from_quat(sim.home_quaternion).inv()).magnitude()) \
            == pytest.approx(abs(yaws[3]), abs=1e-6)
        frames = [sim.reset(seed=s).images["external"] for s in (0, 1)]
        assert not np.array_equal(*frames)
    finally:
        sim.close()


def test_orientation_goal_needs_the_gripper_turned() -> None:
    sim = FetchSim(_orient_config())
    try:
        seed = next(s for s in range(50) if sim.reset(seed=s, render=False).orientation_error_deg > 40.0)
        frame = sim.reset(seed=seed, render=False)
        for _ in range(20):  # position only: the env keeps the gripper pointing down
            frame = sim.step(ArmCommand(target_position=frame.goal, gripper=0.0), render=False)
        assert np.linalg.norm(frame.position - frame.goal) < 0.05 and frame.orientation_error_deg > 40.0  # at the goal, in the env's terms
        assert not frame.success
        for _ in range(20):  # the same position, turned to the goal orientation
            frame = sim.step(ArmCommand(target_position=frame.goal, target_quaternion=frame.goal_quaternion, gripper=0.0), render=False)
        assert frame.orientation_error_deg < 10.0 and frame.success  # (the weld lags its mocap by a few degrees)
    finally:
        sim.close()


def test_orientation_goal_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="sim.goal_yaw_range_deg"):
        SimConfig(goal_yaw_range_deg=90.0)
    with pytest.raises(ConfigError, match="sim.goal_yaw_range_deg: orientation goals are built for FetchReach-v4"):
        SimConfig(task="FetchPush-v4", goal_yaw_range_deg=30.0)
    with pytest.raises(ConfigError, match="sim.yaw_tolerance_deg"):
        SimConfig(yaw_tolerance_deg=0.0)
