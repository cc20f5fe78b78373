"""Pose maths against scipy: rot6d <-> matrix <-> quaternion, sign invariance, deltas, statistics."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from vit_policy import geometry as g

RNG = np.random.default_rng(0)
ROTS = Rotation.random(64, random_state=1)


def test_rot6d_matrix_quaternion_round_trip():
    m = ROTS.as_matrix()
    d6 = g.rot6d_from_matrix(m)
    assert d6.shape == (64, 6)
    np.testing.assert_allclose(g.matrix_from_rot6d(d6), m, atol=1e-12)
    q = g.rot6d_to_quat(g.quat_to_rot6d(ROTS.as_quat()))
    np.testing.assert_allclose(q, g.canonical_quat(ROTS.as_quat()), atol=1e-9)
    assert np.all(q[:, 3] >= 0)


def test_matrix_from_rot6d_orthonormalises_noisy_input():
    d6 = g.rot6d_from_matrix(ROTS.as_matrix()) + RNG.normal(0, 0.05, (64, 6))
    m = g.matrix_from_rot6d(d6)
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-12)


@pytest.mark.parametrize("kind", ["rot6d", "quat", "rotvec"])
def test_rotation_features_sign_invariant_and_torch_matches_numpy(kind):
    q = ROTS.as_quat()
    a, b = g.rotation_features(q, kind), g.rotation_features(-q, kind)
    np.testing.assert_allclose(a, b, atol=1e-9)
    t = g.rotation_features_t(torch.tensor(-q), kind).numpy()
    np.testing.assert_allclose(t, a, atol=1e-6)
    if kind == "rotvec":
        np.testing.assert_allclose(Rotation.from_rotvec(a).as_matrix(), ROTS.as_matrix(), atol=1e-9)


def test_pose_delta_composition_and_inverse():
    p0, q0 = RNG.normal(size=3), ROTS[0].as_quat()
    p1, q1 = RNG.normal(size=(5, 3)), ROTS[1:6].as_quat()
    dp, dr = g.pose_delta(p0, q0, p1, q1)
    # left-applied convention: R1 = exp(dr) R0
    np.testing.assert_allclose((Rotation.from_rotvec(dr) * ROTS[0]).as_matrix(), ROTS[1:6].as_matrix(), atol=1e-9)
    p, q = g.apply_delta(p0, q0, dp, dr)
    np.testing.assert_allclose(p, p1, atol=1e-12)
    np.testing.assert_allclose(g.geodesic_deg(q, q1), 0.0, atol=1e-5)
    # composing two deltas equals the delta to the end pose
    dp2, dr2 = g.pose_delta(p1[0], q1[0], p1[1], q1[1])
    pc, qc = g.apply_delta(*g.apply_delta(p0, q0, dp[0], dr[0]), dp2, dr2)
    np.testing.assert_allclose(pc, p1[1], atol=1e-12)
    np.testing.assert_allclose(g.geodesic_deg(qc, q1[1]), 0.0, atol=1e-5)
    # rotvec <-> rot6d of the delta
    np.testing.assert_allclose(g.rot6d_to_rotvec(g.rotvec_to_rot6d(dr)), dr, atol=1e-9)


def test_quat_relative_torch_matches_scipy():
    qa, qb = ROTS[:10].as_quat(), ROTS[10:20].as_quat()
    rel = g.quat_relative_t(torch.tensor(qa), torch.tensor(qb)).numpy()
    np.testing.assert_allclose(Rotation.from_quat(rel).as_matrix(), (ROTS[10:20] * ROTS[:10].inv()).as_matrix(), atol=1e-9)


def test_geodesic_known_angle():
    q = Rotation.from_euler("z", [[0], [30]], degrees=True).as_quat()
    assert g.geodesic_deg(q[0], q[1]) == pytest.approx(30.0)


def test_bad_quaternions_name_the_field():
    with pytest.raises(g.PoseError, match="orientation.*NaN"):
        g.check_quaternion(np.array([0, 0, np.nan, 1.0]), "orientation")
    with pytest.raises(g.PoseError, match=r"ee\.orientation: quaternion norm"):
        g.check_quaternion(np.array([0, 0, 0, 1.5]), "ee.orientation")
    np.testing.assert_allclose(g.check_quaternion(np.array([0, 0, 0, 1.001])), [0, 0, 0, 1.0], atol=1e-12)


def test_normalisation_with_constant_dimension():
    x = np.stack([RNG.normal(2.0, 3.0, 500), np.full(500, 7.0)], axis=1)
    st = g.NormStats.from_data(x)
    for mode in ("mean_std", "min_max"):
        n = st.normalize(x, mode)
        assert np.all(np.isfinite(n))
        np.testing.assert_allclose(n[:, 1], 0.0)  # constant: centred, not divided by ~0
        np.testing.assert_allclose(st.unnormalize(n, mode), x, atol=1e-4)
    assert abs(st.normalize(x)[:, 0].std() - 1.0) < 1e-3


def test_normalisation_with_mask_ignores_padding():
    x = np.zeros((4, 3, 2))
    x[:, :2] = RNG.normal(size=(4, 2, 2))
    x[:, 2] = 1e6  # padding values that must not leak into the statistics
    mask = np.ones((4, 3), bool)
    mask[:, 2] = False
    mask[0, 2] = True
    st = g.NormStats.from_data(x, mask)
    assert st.mean.shape == (3, 2)
    np.testing.assert_allclose(st.mean[:2], x[:, :2].mean(0), rtol=1e-5)
    np.testing.assert_allclose(st.mean[2], 1e6)  # only the one valid sample
    with pytest.raises(ValueError, match="no valid sample"):
        g.NormStats.from_data(x, np.zeros((4, 3), bool))


def test_stats_round_trip_and_missing_is_an_error():
    st = g.NormStats.from_data(RNG.normal(size=(10, 3)))
    back = g.NormStats.from_tensors(st.to_tensors("state"), "state")
    np.testing.assert_array_equal(back.mean, st.mean)
    with pytest.raises(KeyError, match="missing normalisation statistics"):
        g.NormStats.from_tensors(st.to_tensors("state"), "action")


def test_interpolate_poses_is_linear_and_slerp_exact_at_stamps_and_held_outside():
    """The one pose interpolation of the live timing rule (inputs.interpolate_pose) and the training labels (bags)."""
    from scipy.spatial.transform import Slerp

    t = np.array([0, 10, 30, 35], np.int64) * 1_000_000
    quats = Rotation.random(4, random_state=3)
    v = np.concatenate([RNG.normal(0, 0.3, (4, 3)), quats.as_quat()], axis=1)
    s = np.array([-5, 0, 4, 10, 17, 30, 34, 35, 50], np.int64) * 1_000_000
    out = g.interpolate_poses(t, v, s)
    at, held = [1, 3, 5, 7, 0, 8], [0, 1, 2, 3, 0, 3]  # at each stamp; held before the first pose and after the last
    np.testing.assert_array_equal(out[at, :3], v[held, :3])
    assert np.all((Rotation.from_quat(out[at, 3:]) * Rotation.from_quat(v[held, 3:]).inv()).magnitude() < 1e-12)
    inside = (s > t[0]) & (s < t[-1])
    np.testing.assert_allclose(out[inside, :3], np.stack([np.interp(s[inside], t, v[:, k]) for k in range(3)], 1), atol=1e-12)
    expected = Slerp(t.astype(float), quats)(s[inside].astype(float))
    assert np.all((Rotation.from_quat(out[inside, 3:]) * expected.inv()).magnitude() < 1e-9)
    # one pose at a time (the live rule) gives the same numbers as the vectorised call (the labels)
    for k in np.flatnonzero(inside):
        i = int(np.searchsorted(t, s[k], side="right")) - 1
        np.testing.assert_array_equal(g.lerp_pose(v[i], v[i + 1], (s[k] - t[i]) / (t[i + 1] - t[i])), out[k])
    # f outside [0, 1] extrapolates along the same rotation
    np.testing.assert_allclose(g.lerp_pose(v[0], v[1], 2.0)[:3], 2 * v[1, :3] - v[0, :3], atol=1e-12)
