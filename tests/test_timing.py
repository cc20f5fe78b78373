"""Extraction on recordings with real robot timing (issue 19, point 3: legal data that must work).

The bags come from ``tests/realtime_bags.py``, a writer independent of ``vit_policy`` (rosbags typestore
classes, an analytic ground truth). What ARCHITECTURE.md promises is checked against that ground truth
with the default DataConfig timing (sync_tolerance_s 0.05, max_age_s 0.5) at control_rate_hz 10:

* an observation is stamped at a frame of the reference (first configured) camera, and its image is
  that very frame (read back from the marker each frame carries);
* the EE pose (PoseStamped or a /tf + /tf_static chain) and the gripper are interpolated at that stamp:
  position within 0.5 mm, orientation within 0.1 deg, gripper within 0.01 of the ground truth;
* another camera's frame lies within sync_tolerance_s of the stamp;
* nearly every reference frame is used: every frame of a stretch of recording from one pose (or
  gripper) period after all streams have begun up to K control periods (the last chunk) before the
  first stream ends, whose other cameras have a frame within the tolerance (less 1 ms);
* labels (future_pose) are the ground truth at stamp + (k+1) dt;
* a 2 s pause in the recording splits it into two episodes.

``test_writer_reads_back`` checks the writer itself (rosbags AnyReader, vit_policy's image decoders);
it does not depend on the extraction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from realtime_bags import (
    ARM_JOINTS, BLUE, NS, RED, T0_NS, CameraSpec, RealtimeBag, Scenario, colour_band, decode_marker, gripper_at,
    position_at, quaternion_at, write_scenario,
)
from vit_policy.data.configuration import DataConfig, GripperConfig

K = 5  # chunk size
CONTROL_HZ = 10.0
POS_TOL_M, ROT_TOL_DEG, GRIP_TOL = 0.5e-3, 0.1, 0.01

C = CameraSpec
SCENARIOS = [
    # one camera at 10 / 15 / 30 Hz against PoseStamped at 50 / 500 Hz, every encoding, both storages
    Scenario("c10_p50_rgb8_lead0_sqlite3", (C("front", 10, 0.0371, "rgb8", latency_s=0.0),), pose_rate_hz=50, pose_phase_s=0.0117),
    Scenario("c10_p500_mono8_lead100_mcap", (C("front", 10, 0.0823, "mono8", latency_s=0.1),), storage="mcap", pose_rate_hz=500, pose_phase_s=0.0009),
    Scenario("c15_p50_bgr8pad_combined_mcap", (C("front", 15, 0.0191, "bgr8", latency_s=0.045, row_padding=16),), storage="mcap",
             pose_rate_hz=50, pose_phase_s=0.003, joint_states="combined"),
    Scenario("c15_p500_rgba8_sqlite3", (C("front", 15, 0.0507, "rgba8", latency_s=0.07),), pose_rate_hz=500, pose_phase_s=0.0013),
    Scenario("c30_p50_jpeg_lead100_robotiq_sqlite3", (C("front", 30, 0.0049, "jpeg", latency_s=0.1),), pose_rate_hz=50, pose_phase_s=0.0151,
             gripper_joints=("finger_joint",), gripper_closed=0.8, gripper_open=0.0, gripper_rate_hz=50),
    Scenario("c30_p500_png_mcap", (C("front", 30, 0.0277, "png", latency_s=0.02),), storage="mcap", pose_rate_hz=500, pose_phase_s=0.0004),
    # two cameras at different rates: stamped at the first; the other within sync_tolerance_s
    Scenario("cams_10_15_jpeg_bgr8pad_mcap", (C("front", 10, 0.013, "jpeg", latency_s=0.06), C("wrist", 15, 0.029, "bgr8", latency_s=0.03, row_padding=8)),
             storage="mcap", pose_rate_hz=100, pose_phase_s=0.0061),
    Scenario("cams_15_10_png_mono8_sqlite3", (C("front", 15, 0.0, "png", latency_s=0.04), C("wrist", 10, 0.02, "mono8", latency_s=0.09)),
             pose_rate_hz=200, pose_phase_s=0.0023),
    # TF chain: base_link -> flange on /tf at 100 Hz, flange -> tool on /tf_static
    Scenario("tf_c15_png_sqlite3", (C("front", 15, 0.0412, "png", latency_s=0.08),), pose_source="tf", pose_rate_hz=100, pose_phase_s=0.0057),
    Scenario("tf_c30_rgb8_mcap", (C("front", 30, 0.0111, "rgb8", latency_s=0.035),), storage="mcap", pose_source="tf", pose_rate_hz=100, pose_phase_s=0.0089),
    # a 2 s pause: two episodes
    Scenario("gap_c10_p200_rgb8_sqlite3", (C("front", 10, 0.0333, "rgb8", latency_s=0.05),), pose_rate_hz=200, pose_phase_s=0.0021,
             gap=(1.6, 2.0), duration_s=5.2),
    Scenario("gap_tf_c15_jpeg_mcap", (C("front", 15, 0.0244, "jpeg", latency_s=0.07),), storage="mcap", pose_source="tf", pose_rate_hz=100,
             pose_phase_s=0.0035, gap=(1.6, 2.0), duration_s=5.2),
]
IDS = [s.name for s in SCENARIOS]


def data_config(bag: RealtimeBag) -> DataConfig:
    """The bag's topics; every timing value is DataConfig's default, control at 10 Hz."""
    sc = bag.scenario
    data = DataConfig(
        cameras=bag.camera_topics,
        pose_topic="/ee_pose" if sc.pose_source == "pose" else None,
        tf_base_frame="base_link", tf_ee_frame="tool",
        gripper=GripperConfig(topic="/joint_states", kind="joint_state", joints=list(sc.gripper_joints), closed=sc.gripper_closed, open=sc.gripper_open),
        control_rate_hz=CONTROL_HZ,
    )
    assert (data.sync_tolerance_s, data.max_age_s) == (0.05, 0.5)  # the defaults this file is about
    return data


_bags: dict[str, RealtimeBag] = {}
_extracted: dict[str, object] = {}  # name -> list of episodes, or the exception extraction raised


@pytest.fixture(scope="module")
def bag_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("realtime_bags")


def get_bag(root: Path, sc: Scenario) -> RealtimeBag:
    if sc.name not in _bags:
        _bags[sc.name] = write_scenario(root / sc.name, sc)
    return _bags[sc.name]


def get_episodes(root: Path, sc: Scenario) -> tuple[RealtimeBag, list]:
    from vit_policy.data.bags import extract_episodes

    bag = get_bag(root, sc)
    if sc.name not in _extracted:
        try:
            _extracted[sc.name] = extract_episodes(bag.path, data_config(bag), K, None)
        except Exception as exc:  # reported by every test of this scenario
            _extracted[sc.name] = exc
    got = _extracted[sc.name]
    if isinstance(got, Exception):  # not re-raised: the same exception raised again grows its traceback each time
        pytest.fail(f"extract_episodes({sc.name}) raised {type(got).__name__}: {got}", pytrace=False)
    return bag, got  # type: ignore[return-value]


def geodesic_deg(qa: np.ndarray, qb: np.ndarray) -> np.ndarray:
    return np.degrees((Rotation.from_quat(np.reshape(qa, (-1, 4))).inv() * Rotation.from_quat(np.reshape(qb, (-1, 4)))).magnitude())


def in_segment(t: np.ndarray, seg: tuple[int, int]) -> np.ndarray:
    return (t >= seg[0]) & (t < seg[1])


def required_and_allowed(bag: RealtimeBag, tol_ns: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per segment, the reference frames that must be observations; and all that may be (partner within tol)."""
    sc, ref = bag.scenario, bag.reference
    others = [c.name for c in sc.cameras[1:]]
    ref_t = bag.frame_stamps[ref]
    period = int(NS / min(sc.pose_rate_hz, sc.gripper_rate_hz))

    def partner_gap(t: np.ndarray, stamps: np.ndarray) -> np.ndarray:
        return np.min(np.abs(stamps[None, :] - t[:, None]), axis=1) if len(stamps) else np.full(len(t), np.iinfo(np.int64).max)

    allowed = np.ones(len(ref_t), bool)
    for o in others:
        allowed &= partner_gap(ref_t, bag.frame_stamps[o]) <= tol_ns
    required = []
    for seg in bag.segments():
        streams = [bag.pose_stamps, bag.gripper_stamps] + [bag.frame_stamps[o] for o in others]
        streams = [s[in_segment(s, seg)] for s in streams]
        start, end = max(int(s[0]) for s in streams), min(int(s[-1]) for s in streams)
        t = ref_t[in_segment(ref_t, seg)]
        ok = (t >= start + period) & (t <= end - K * int(NS / CONTROL_HZ))
        for o in others:
            ok &= partner_gap(t, bag.frame_stamps[o][in_segment(bag.frame_stamps[o], seg)]) <= tol_ns - 1_000_000
        required.append(t[ok])
    return required, ref_t[allowed]


# --------------------------------------------------------------------------------------------------
# The writer itself (must pass whatever the extraction does)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sc", SCENARIOS, ids=IDS)
def test_writer_reads_back(bag_root: Path, sc: Scenario) -> None:
    from rosbags.highlevel import AnyReader
    from rosbags.interfaces import QosDurability
    from rosbags.typesys import Stores, get_typestore

    from vit_policy.messages import compressed_to_rgb, image_to_rgb

    bag = get_bag(bag_root, sc)
    assert (bag.path / "metadata.yaml").exists()
    assert any(p.suffix == (".mcap" if sc.storage == "mcap" else ".db3") for p in bag.path.iterdir())
    gripper_seen, arm_only = [], []  # stamps in bag order of the two JointState publishers
    poses: list = []  # (stamp, position, quaternion) of /ee_pose, or of base_link -> flange on /tf
    tf_tool = None
    with AnyReader([bag.path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        assert {c.topic: c.msgtype for c in reader.connections} == {t: w.msgtype for t, w in bag.written.items()}
        assert {c.topic: c.msgcount for c in reader.connections} == {t: len(w.bag_ns) for t, w in bag.written.items()}
        for c in reader.connections:
            (qos,) = c.ext.offered_qos_profiles
            assert (qos.durability == QosDurability.TRANSIENT_LOCAL) == (c.topic == "/tf_static")
        seen: dict[str, list[tuple[int, int | None]]] = {t: [] for t in bag.written}
        last_bag = 0
        cams = {c.topic: c for c in sc.cameras}
        for conn, t_bag, raw in reader.messages():
            assert t_bag >= last_bag
            last_bag = t_bag
            msg = reader.deserialize(raw, conn.msgtype)
            topic = conn.topic
            if hasattr(msg, "header"):
                stamp = msg.header.stamp.sec * NS + msg.header.stamp.nanosec
            else:  # TFMessage: every transform of a message carries the same stamp
                stamps = {tr.header.stamp.sec * NS + tr.header.stamp.nanosec for tr in msg.transforms}
                assert len(stamps) == 1
                (stamp,) = stamps
            seen[topic].append((t_bag, stamp))
            lead = t_bag - stamp
            if sc.gap is not None:
                g0, g1 = bag.gap_ns  # nothing is stamped in the gap; nothing arrives after the first 0.2 s of it
                assert not g0 <= stamp < g1 and not g0 + NS // 5 <= t_bag < g1
            if topic in cams:
                cam = cams[topic]
                assert max(cam.latency_s - cam.jitter_s, 0.0) * NS - 1 <= lead <= (cam.latency_s + cam.jitter_s) * NS + 1
                h, w = sc.image_size
                if cam.encoding in ("jpeg", "png"):
                    assert msg.format == f"bgr8; {cam.encoding} compressed bgr8"
                    rgb = compressed_to_rgb(msg)
                else:
                    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "mono8": 1}[cam.encoding]
                    assert (msg.encoding, msg.height, msg.width, msg.step) == (cam.encoding, h, w, w * channels + cam.row_padding)
                    assert len(msg.data) == msg.step * h
                    rgb = image_to_rgb(msg)
                assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8
                index, number = decode_marker(rgb)
                assert number == bag.camera_number(cam.name) and bag.frame_stamps[cam.name][index] == stamp
                left, right = colour_band(rgb)
                if cam.encoding == "mono8":
                    assert np.ptp(rgb.astype(int), axis=2).max() == 0
                else:
                    tol = 30 if cam.encoding == "jpeg" else 1
                    assert np.abs(left - RED).max() <= tol and np.abs(right - BLUE).max() <= tol, (left, right)
            elif topic == "/ee_pose":
                assert 0 <= lead <= 3_000_001 and msg.header.frame_id == "base_link"
                p, o = msg.pose.position, msg.pose.orientation
                poses.append((stamp, [p.x, p.y, p.z], [o.x, o.y, o.z, o.w]))
            elif topic == "/tf":
                assert 0 <= lead <= 3_000_001
                (flange,) = [tr for tr in msg.transforms if tr.child_frame_id == "flange"]
                assert flange.header.frame_id == "base_link"
                tr = flange.transform
                poses.append((stamp, [tr.translation.x, tr.translation.y, tr.translation.z], [tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w]))
            elif topic == "/tf_static":
                assert t_bag == T0_NS and lead > 30 * NS  # latched long before the recording started
                (tool,) = [tr for tr in msg.transforms if tr.child_frame_id == "tool"]
                assert tool.header.frame_id == "flange"
                tf_tool = tool.transform
            elif topic == "/joint_states":
                assert 0 <= lead <= 2_000_001
                names = list(msg.name)
                assert len(msg.position) == len(names)
                if set(sc.gripper_joints) <= set(names):
                    total = sum(msg.position[names.index(j)] for j in sc.gripper_joints)
                    gripper_seen.append(stamp)
                    opening = (total - sc.gripper_closed) / (sc.gripper_open - sc.gripper_closed)
                    assert abs(opening - gripper_at(stamp)) < 1e-9
                    assert (set(ARM_JOINTS) <= set(names)) == (sc.joint_states == "combined")
                else:
                    assert names == list(ARM_JOINTS)
                    arm_only.append(stamp)
    # the pose: PoseStamped, or the chain base_link -> flange -> tool (/tf_static recorded first), is the ground truth
    stamps = np.array([st for st, _, _ in poses], np.int64)
    np.testing.assert_array_equal(stamps, bag.pose_stamps)
    pos, rot = np.array([p for _, p, _ in poses]), Rotation.from_quat([q for _, _, q in poses])
    if sc.pose_source == "tf":
        assert tf_tool is not None
        tool_p = np.array([tf_tool.translation.x, tf_tool.translation.y, tf_tool.translation.z])
        tool_r = Rotation.from_quat([tf_tool.rotation.x, tf_tool.rotation.y, tf_tool.rotation.z, tf_tool.rotation.w])
        pos, rot = pos + rot.apply(tool_p), rot * tool_r
    np.testing.assert_allclose(pos, position_at(stamps), atol=1e-12)
    assert geodesic_deg(rot.as_quat(), quaternion_at(stamps)).max() < 1e-6
    for topic, w in bag.written.items():
        assert seen[topic] == list(zip(w.bag_ns, w.stamp_ns)), topic
        if topic != "/joint_states":  # one publisher: arrival order is stamp order (jitter delays, never reorders)
            assert np.all(np.diff([st for _, st in seen[topic]]) > 0), topic
    assert np.all(np.diff(gripper_seen) > 0) and np.all(np.diff(arm_only) > 0)
    for cam in sc.cameras:
        stamps = bag.frame_stamps[cam.name]
        assert len(stamps) == len(bag.written[cam.topic].bag_ns)
        expected_n = sc.duration_s * cam.rate_hz - (sc.gap[1] * cam.rate_hz if sc.gap else 0)
        assert abs(len(stamps) - expected_n) <= 2
        periods = np.diff(stamps)
        assert np.all(np.abs(periods - NS / cam.rate_hz) <= 1) or sc.gap  # exact period (one jump at a gap)
    np.testing.assert_array_equal(gripper_seen, bag.gripper_stamps)
    assert (len(arm_only) > 0) == (sc.joint_states == "split")
    if sc.gap:
        assert len(bag.segments()) == 2


# --------------------------------------------------------------------------------------------------
# Extraction (issue 19: fails until observations are stamped at the camera frame)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sc", SCENARIOS, ids=IDS)
def test_extraction_succeeds_with_default_timing(bag_root: Path, sc: Scenario) -> None:
    bag, episodes = get_episodes(bag_root, sc)
    assert len(episodes) == len(bag.segments()) == (2 if sc.gap else 1)
    for ep, seg in zip(episodes, bag.segments()):  # each episode inside its own stretch of recording
        assert len(ep) > 0 and in_segment(ep.stamps_ns, seg).all()


@pytest.mark.parametrize("sc", SCENARIOS, ids=IDS)
def test_pose_and_gripper_are_the_ground_truth_at_the_frame_stamp(bag_root: Path, sc: Scenario) -> None:
    _, episodes = get_episodes(bag_root, sc)
    for ep in episodes:
        pos_err = np.linalg.norm(ep.position - position_at(ep.stamps_ns), axis=1)
        rot_err = geodesic_deg(ep.quaternion, quaternion_at(ep.stamps_ns))
        grip_err = np.abs(ep.gripper - gripper_at(ep.stamps_ns))
        assert pos_err.max() < POS_TOL_M, f"position off by up to {pos_err.max() * 1e3:.3f} mm"
        assert rot_err.max() < ROT_TOL_DEG, f"orientation off by up to {rot_err.max():.4f} deg"
        assert grip_err.max() < GRIP_TOL, f"gripper off by up to {grip_err.max():.4f}"


@pytest.mark.parametrize("sc", SCENARIOS, ids=IDS)
def test_observations_are_reference_frames_with_their_own_images(bag_root: Path, sc: Scenario) -> None:
    bag, episodes = get_episodes(bag_root, sc)
    data = data_config(bag)
    tol = int(round(data.sync_tolerance_s * NS))
    ref = bag.reference
    for ep in episodes:
        assert np.all(np.diff(ep.stamps_ns) > 0)
        not_frames = np.setdiff1d(ep.stamps_ns, bag.frame_stamps[ref])
        assert not len(not_frames), f"{len(not_frames)} of {len(ep)} observation stamps are not {ref!r} frame stamps, e.g. {not_frames[:3]}"
        assert set(ep.images) == {c.name for c in sc.cameras}
        for cam in sc.cameras:
            imgs = ep.images[cam.name]
            assert imgs.shape == (len(ep), *sc.image_size, 3) and imgs.dtype == np.uint8
            for t, img in zip(ep.stamps_ns.tolist(), imgs):
                index, number = decode_marker(img)
                assert number == bag.camera_number(cam.name)
                frame_t = int(bag.frame_stamps[cam.name][index])
                if cam.name == ref:
                    assert frame_t == t, f"observation at {t}: {ref!r} image is the frame stamped {frame_t} ({(frame_t - t) / 1e6:+.1f} ms)"
                else:
                    assert abs(frame_t - t) <= tol, f"observation at {t}: {cam.name!r} frame {(frame_t - t) / 1e6:+.1f} ms away (tolerance {tol / 1e6:.0f} ms)"


@pytest.mark.parametrize("sc", SCENARIOS, ids=IDS)
def test_nearly_every_reference_frame_is_used(bag_root: Path, sc: Scenario) -> None:
    bag, episodes = get_episodes(bag_root, sc)
    required, allowed = required_and_allowed(bag, int(round(data_config(bag).sync_tolerance_s * NS)))
    used = np.concatenate([ep.stamps_ns for ep in episodes])
    for ep, need in zip(episodes, required):
        assert len(need) >= 5  # the scenario leaves room for a real check
        missing = np.setdiff1d(need, ep.stamps_ns)
        assert not len(missing), (f"{len(missing)} of {len(need)} reference frames that must be observations are missing, "
                                  f"e.g. at {[(int(m) - T0_NS) / 1e9 for m in missing[:4]]} s; {len(ep)} observations")
    assert np.isin(used, allowed).all()


@pytest.mark.parametrize("sc", SCENARIOS, ids=IDS)
def test_labels_are_the_ground_truth_one_to_k_periods_later(bag_root: Path, sc: Scenario) -> None:
    from vit_policy.geometry import rot6d_to_rotvec

    bag, episodes = get_episodes(bag_root, sc)
    dt = int(NS / CONTROL_HZ)
    pose_period = int(NS / sc.pose_rate_hz)
    for ep, seg in zip(episodes, bag.segments()):
        assert ep.action.shape == (len(ep), K, 10)
        steps = ep.stamps_ns[:, None] + dt * np.arange(1, K + 1)
        pose_end = int(bag.pose_stamps[in_segment(bag.pose_stamps, seg)][-1])
        assert ep.action_mask[steps <= pose_end - pose_period].all()
        assert not ep.action_mask[steps > pose_end + pose_period].any()
        m = ep.action_mask
        p0, r0 = position_at(ep.stamps_ns), Rotation.from_quat(quaternion_at(ep.stamps_ns))
        p1 = position_at(steps)
        dp_err = np.linalg.norm(ep.action[..., :3] - (p1 - p0[:, None]), axis=-1)[m]
        assert dp_err.max() < POS_TOL_M, f"label position off by up to {dp_err.max() * 1e3:.3f} mm"
        r1 = Rotation.from_quat(quaternion_at(steps.ravel()))
        want = (r1 * Rotation.from_quat(np.repeat(r0.as_quat(), K, axis=0)).inv())
        got = Rotation.from_rotvec(rot6d_to_rotvec(ep.action[..., 3:9].reshape(-1, 6).astype(np.float64)))
        rot_err = np.degrees((want.inv() * got).magnitude()).reshape(-1, K)[m]
        assert rot_err.max() < ROT_TOL_DEG, f"label rotation off by up to {rot_err.max():.4f} deg"
        g_err = np.abs(ep.action[..., 9] - gripper_at(steps))[m]
        assert g_err.max() < GRIP_TOL, f"label gripper off by up to {g_err.max():.4f}"
