"""SafetyFilter: workspace box, step and speed limits, NaN guard and the two stop modes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vit_policy.config import ConfigError, from_dict
from vit_policy.safety import SafetyConfig
from vit_policy.observation import ActionChunk
from vit_policy.safety import SafetyFilter

PERIOD = 100_000_000  # 10 Hz
Q0 = np.array([0.0, 0.0, 0.0, 1.0])
P0 = np.array([0.4, 0.0, 0.3])


def make(**kw) -> SafetyFilter:
    return SafetyFilter(SafetyConfig(**kw), PERIOD)


def test_small_motion_passes_unchanged_with_twist_over_one_period():
    target = P0 + [0.01, -0.005, 0.0]
    q = Rotation.from_rotvec([0, 0, 0.05]).as_quat()
    cmd = make().limit(7, P0, Q0, target, q, 0.3)
    assert cmd.status == "ok" and not cmd.is_stop and cmd.reason == ""
    np.testing.assert_allclose(cmd.target_position, target)
    np.testing.assert_allclose(cmd.linear, [0.1, -0.05, 0.0])
    np.testing.assert_allclose(cmd.angular, [0, 0, 0.5])
    assert cmd.gripper == 0.3 and cmd.stamp_ns == 7


def test_workspace_box_clamps_the_target():
    f = make(workspace_min=[-1, -1, 0.2], workspace_max=[1, 1, 1.5], max_step=10, max_linear_speed=100)
    cmd = f.limit(0, np.array([0.4, 0.0, 0.25]), Q0, np.array([0.4, 0.0, -0.5]), Q0, 1.0)
    assert cmd.target_position[2] == pytest.approx(0.2)
    assert "workspace" in cmd.reason


@pytest.mark.parametrize("max_step,max_speed,expected", [(0.01, 1.0, 0.01), (1.0, 0.05, 0.005)])
def test_translation_limited_by_max_step_and_by_speed(max_step, max_speed, expected):
    f = make(max_step=max_step, max_linear_speed=max_speed)
    cmd = f.limit(0, P0, Q0, P0 + [0.3, 0.4, 0.0], Q0, 1.0)
    step = cmd.target_position - P0
    assert np.linalg.norm(step) == pytest.approx(expected)
    np.testing.assert_allclose(step / np.linalg.norm(step), [0.6, 0.8, 0.0])  # direction kept
    assert np.linalg.norm(cmd.linear) == pytest.approx(expected / 0.1)
    assert "limited" in cmd.reason


def test_rotation_limited_by_angular_speed():
    f = make(max_angular_speed=0.5)  # 0.05 rad per 100 ms tick
    target = Rotation.from_rotvec([0.0, 0.4, 0.0]).as_quat()
    cmd = f.limit(0, P0, Q0, P0, target, 1.0)
    assert np.linalg.norm(cmd.angular) == pytest.approx(0.5)
    assert Rotation.from_quat(cmd.target_quaternion).magnitude() == pytest.approx(0.05)


@pytest.mark.parametrize("where", ["target", "pose", "gripper"])
def test_non_finite_values_become_a_fault_stop(where):
    tp, p, g = P0 + 0.01, P0.copy(), 0.5
    if where == "target":
        tp[1] = np.nan
    elif where == "pose":
        p[0] = np.inf
    else:
        g = np.nan
    cmd = make().limit(0, p, Q0, tp, Q0, g)
    assert cmd.is_stop and cmd.status == "fault" and cmd.is_finite()
    assert np.all(cmd.linear == 0) and np.all(cmd.angular == 0)


def test_stop_modes():
    zero = make(stop_mode="zero_twist")
    a = zero.stop(1, "stale", "x", P0, Q0, 0.2)
    b = zero.stop(2, "stale", "x", P0 + 0.1, Q0, 0.2)
    np.testing.assert_allclose(b.target_position, P0 + 0.1)  # follows the measured pose
    assert a.is_stop and np.all(a.linear == 0) and a.gripper == 0.2
    hold = make(stop_mode="hold_pose")
    hold.stop(1, "stale", "x", P0, Q0, 1.0)
    c = hold.stop(2, "stale", "x", P0 + 0.1, Q0, 1.0)
    np.testing.assert_allclose(c.target_position, P0)  # latched where the stop began
    hold.limit(3, P0, Q0, P0, Q0, 1.0)  # commanding again releases the latch
    d = hold.stop(4, "stale", "x", P0 + 0.2, Q0, 1.0)
    np.testing.assert_allclose(d.target_position, P0 + 0.2)


def test_stop_without_any_pose_is_finite_and_says_so():
    cmd = make().stop(5, "waiting", "no message yet on pose")
    assert cmd.is_finite() and cmd.is_stop and "no valid pose" in cmd.reason


def test_limit_chunk_respects_speed_and_workspace_between_points():
    dt = 100_000_000
    k = 5
    dp = np.zeros((k, 3))
    dp[:, 0] = np.arange(1, k + 1) * 0.1  # 1 m/s: four times too fast
    dp[-1, 2] = -5.0  # last point below the floor
    chunk = ActionChunk(0, dt, P0, Q0, dp, np.zeros((k, 3)), np.full(k, 1.5))
    out = make(max_linear_speed=0.25).limit_chunk(chunk, P0, Q0, 0)
    pts = np.vstack([P0, out.target_positions])
    speeds = np.linalg.norm(np.diff(pts, axis=0), axis=1) / 0.1
    assert np.all(speeds <= 0.25 + 1e-9) and speeds[0] == pytest.approx(0.25)
    assert np.all(out.target_positions[:, 2] >= 0.0)
    assert np.all(out.gripper == 1.0)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="safety.max_linear_speed"):
        SafetyConfig(max_linear_speed=0)
    with pytest.raises(ConfigError, match="workspace_min"):
        SafetyConfig(workspace_min=[0, 0])
    with pytest.raises(ConfigError, match="did you mean 'stop_mode'"):
        from_dict(SafetyConfig, {"stopmode": "hold_pose"})
