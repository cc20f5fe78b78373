"""vit_policy.messages against messages built and CDR-serialised by rosbags (an independent implementation)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation

from vit_policy import messages as M
from vit_policy.observation import ActionChunk

TS = get_typestore(Stores.ROS2_HUMBLE)
F = M.rosbags_factory(TS)
T = TS.types


def cdr_roundtrip(msg, typename: str):
    """Serialise with rosbags and read back: what a bag or the wire hands the converter."""
    return TS.deserialize_cdr(TS.serialize_cdr(msg, typename), typename)


def raw_image(height: int, width: int, encoding: str, step: int, payload: np.ndarray, bigendian: int = 0):
    """A rosbags Image whose rows are ``payload`` rows followed by (step - row) padding bytes of 0xAB."""
    rows = payload.reshape(height, -1).astype(np.uint8)
    pad = np.full((height, step - rows.shape[1]), 0xAB, np.uint8)
    data = np.concatenate([rows, pad], axis=1).reshape(-1)
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=1, nanosec=5), frame_id="cam")
    msg = T["sensor_msgs/msg/Image"](header=header, height=height, width=width, encoding=encoding,
                                     is_bigendian=bigendian, step=step, data=data)
    return cdr_roundtrip(msg, "sensor_msgs/msg/Image")


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize(
    "encoding,payload,expected",
    [
        ("rgb8", RGB, RGB),
        ("bgr8", RGB[:, :, ::-1], RGB),
        ("rgba8", np.concatenate([RGB, np.full((5, 7, 1), 9, np.uint8)], 2), RGB),
        ("bgra8", np.concatenate([RGB[:, :, ::-1], np.full((5, 7, 1), 9, np.uint8)], 2), RGB),
        ("mono8", RGB[:, :, 0], np.repeat(RGB[:, :, :1], 3, 2)),
    ],
)
def test_image_encodings_with_row_padding(encoding, payload, expected, padding):
    channels = 1 if payload.ndim == 2 else payload.shape[2]
    msg = raw_image(5, 7, encoding, 7 * channels + padding, payload)
    out = M.image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags.writeable
    assert not np.may_share_memory(out, msg.data)  # an array of its own: the middleware may reuse its buffer
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("bigendian", [0, 1])
def test_mono16_scaled_to_8_bits_in_either_byte_order(bigendian):
    values = np.array([[0, 255, 256, 65535], [4096, 32768, 1000, 60000]], np.uint16)
    payload = values.astype(">u2" if bigendian else "<u2").view(np.uint8)
    msg = raw_image(2, 4, "mono16", 8 + 2, payload, bigendian)
    out = M.image_to_rgb(msg)
    np.testing.assert_array_equal(out[:, :, 0], (values >> 8).astype(np.uint8))
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_red_pixel_stays_red_from_bgr8():
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[0, 0] = (0, 0, 255)  # red in BGR order
    rgb = M.image_to_rgb(raw_image(2, 2, "bgr8", 6, bgr))
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    assert tuple(rgb[1, 1]) == (0, 0, 0)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_rgb_to_image_roundtrip_through_rosbags_cdr(encoding):
    msg = M.rgb_to_image(F, RGB, 1_500_000_123, "cam", encoding)
    back = cdr_roundtrip(msg, "sensor_msgs/msg/Image")
    assert M.stamp_to_ns(back.header.stamp) == 1_500_000_123 and back.header.frame_id == "cam"
    np.testing.assert_array_equal(M.image_to_rgb(back), RGB)


def test_rgb_to_image_bytes_payload_matches_rosbags_numpy_payload():
    """The default factory container (bytes, for rclpy/cyclonedds) holds the same bytes as rosbags' numpy array."""
    plain = M.rgb_to_image(lambda name: T[name], RGB, 7, "cam", "bgr8")
    assert isinstance(plain.data, bytes)
    np.testing.assert_array_equal(M.image_to_rgb(plain), RGB)
    assert plain.data == M.rgb_to_image(F, RGB, 7, "cam", "bgr8").data.tobytes()


@pytest.mark.parametrize(
    "field,kwargs,match",
    [
        ("encoding", dict(encoding="yuv422"), "encoding: 'yuv422' is not supported"),
        ("depth", dict(encoding="16UC1", step=14), "depth image"),
        ("step", dict(step=20), "step: 20 bytes per row"),
        ("data", dict(height=6), "data: 105 bytes, expected step\\*height"),
        ("size", dict(height=0), "at least one pixel"),
    ],
)
def test_malformed_images_are_rejected_naming_the_field(field, kwargs, match):
    msg = raw_image(5, 7, "rgb8", 21, RGB)
    for k, v in kwargs.items():
        setattr(msg, k, v)
    with pytest.raises(M.MessageError, match=match):
        M.image_to_rgb(msg)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_image_roundtrip(fmt):
    img = np.zeros((16, 24, 3), np.uint8)
    img[:, :8] = (255, 0, 0)
    img[:, 8:16] = (0, 255, 0)
    img[:, 16:] = (0, 0, 255)
    msg = cdr_roundtrip(M.rgb_to_compressed(F, img, 42, "cam", fmt), "sensor_msgs/msg/CompressedImage")
    assert fmt in msg.format
    out = M.compressed_to_rgb(msg)
    assert out.shape == img.shape and out.dtype == np.uint8 and out.flags.writeable
    if fmt == "png":
        np.testing.assert_array_equal(out, img)
    else:  # lossy with chroma subsampling at the band edges; band interiors keep their colour
        for band in (slice(1, 7), slice(9, 15), slice(17, 23)):
            assert np.abs(out[:, band].astype(int) - img[:, band]).max() <= 40
            assert np.argmax(out[:, band].mean((0, 1))) == np.argmax(img[0, band.start])


def test_compressed_image_from_image_transport_bgr_jpeg():
    """image_transport writes 'bgr8; jpeg compressed bgr8' for an ordinary colour jpeg: decode to RGB."""
    img = np.zeros((8, 8, 3), np.uint8)
    img[...] = (250, 10, 10)
    buf = io.BytesIO()
    PILImage.fromarray(img).save(buf, format="JPEG", quality=95)
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="")
    msg = T["sensor_msgs/msg/CompressedImage"](header=header, format="bgr8; jpeg compressed bgr8",
                                               data=np.frombuffer(buf.getvalue(), np.uint8))
    out = M.compressed_to_rgb(cdr_roundtrip(msg, "sensor_msgs/msg/CompressedImage"))
    assert out[4, 4, 0] > 200 and out[4, 4, 1] < 50 and out[4, 4, 2] < 50


def test_compressed_image_bad_data_and_format():
    header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="")
    bad = T["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg", data=np.arange(50, dtype=np.uint8))
    with pytest.raises(M.MessageError, match="cannot decode 50 bytes"):
        M.compressed_to_rgb(bad)
    bad.format = "16UC1; compressedDepth"
    with pytest.raises(M.MessageError, match="not jpeg or png"):
        M.compressed_to_rgb(bad)


def test_pose_stamped_roundtrip_and_validation():
    q = Rotation.from_euler("xyz", [0.3, -0.2, 1.0]).as_quat()
    msg = cdr_roundtrip(M.make_pose_stamped(F, 3 * M.NS + 7, "base_link", [0.4, -0.1, 0.3], q), "geometry_msgs/msg/PoseStamped")
    stamp, p, qq = M.pose_from_msg(msg)
    assert stamp == 3 * M.NS + 7 and msg.header.frame_id == "base_link"
    np.testing.assert_allclose(p, [0.4, -0.1, 0.3])
    np.testing.assert_allclose(qq, q)
    msg.pose.position.y = float("nan")
    with pytest.raises(M.MessageError, match="position.*NaN"):
        M.pose_from_msg(msg)
    msg.pose.position.y = 0.0
    msg.pose.orientation.w = 3.0
    with pytest.raises(M.MessageError, match="quaternion norm"):
        M.pose_from_msg(msg)


def test_tf_chain_lookup_matches_composed_transforms():
    r1 = Rotation.from_euler("z", 90, degrees=True)
    r2 = Rotation.from_euler("x", 30, degrees=True)
    r3 = Rotation.from_euler("y", -45, degrees=True)
    p1, p2, p3 = np.array([1.0, 0, 0]), np.array([0, 0.5, 0.2]), np.array([0.1, 0, 0.3])
    tf = M.TFBuffer()
    dyn = M.make_tf_message(F, [
        M.make_transform_stamped(F, 100, "/base_link", "link1", p1, r1.as_quat()),
        M.make_transform_stamped(F, 90, "link1", "link2", p2, r2.as_quat()),
    ])
    static = M.make_tf_message(F, [M.make_transform_stamped(F, 5, "link2", "ee_link", p3, r3.as_quat())])
    tf.add(cdr_roundtrip(dyn, "tf2_msgs/msg/TFMessage"))
    tf.add(cdr_roundtrip(static, "tf2_msgs/msg/TFMessage"), static=True)
    stamp, p, q = tf.lookup("base_link", "ee_link")
    expected_p = p1 + r1.apply(p2 + r2.apply(p3))
    expected_r = r1 * r2 * r3
    np.testing.assert_allclose(p, expected_p, atol=1e-12)
    assert Rotation.from_quat(q).inv().__mul__(expected_r).magnitude() < 1e-9
    assert stamp == 90  # the oldest dynamic edge, static edges do not age
    # inverse and sibling lookups through the common ancestor
    _, p_inv, q_inv = tf.lookup("ee_link", "base_link")
    inv = Rotation.from_quat(q)
    np.testing.assert_allclose(p_inv, -inv.inv().apply(p), atol=1e-12)
    _, p12, _ = tf.lookup("link1", "ee_link")
    np.testing.assert_allclose(p12, p2 + r2.apply(p3), atol=1e-12)
    with pytest.raises(M.MessageError, match="no transform chain from 'base_link' to 'camera'"):
        tf.lookup("base_link", "camera")


def test_gripper_from_joint_state():
    msg = cdr_roundtrip(M.make_joint_state(F, 11, ["arm_j1", "finger_l", "finger_r"], [0.5, 0.01, 0.01]),
                        "sensor_msgs/msg/JointState")
    stamp, opening = M.gripper_from_joint_state(msg, ["finger_l", "finger_r"], closed=0.0, open=0.08)
    assert stamp == 11 and opening == pytest.approx(0.25)
    assert M.gripper_from_joint_state(msg, ["arm_j1"], 0.0, 0.08)[1] == 1.0  # clipped
    with pytest.raises(M.MessageError, match="gripper joint\\(s\\) \\['finger_x'\\] not in"):
        M.gripper_from_joint_state(msg, ["finger_x"], 0.0, 0.08)
    with pytest.raises(M.MessageError, match="must differ"):
        M.gripper_from_joint_state(msg, ["finger_l"], 0.1, 0.1)


def test_command_messages_serialise_with_rosbags():
    tw = cdr_roundtrip(M.make_twist_stamped(F, 5, "base_link", [0.1, 0, 0], [0, 0, 0.2]), "geometry_msgs/msg/TwistStamped")
    assert tw.twist.linear.x == 0.1 and tw.twist.angular.z == 0.2 and tw.header.frame_id == "base_link"
    assert cdr_roundtrip(M.make_float64(F, 0.7), "std_msgs/msg/Float64").data == 0.7


def test_trajectory_holds_future_targets_with_time_from_start():
    k, dt = 4, 100_000_000
    dp = np.cumsum(np.full((k, 3), 0.01), axis=0)
    dr = np.tile([0.0, 0.0, 0.1], (k, 1)) * np.arange(1, k + 1)[:, None]
    q0 = np.array([0.0, 0.0, 0.0, 1.0])
    chunk = ActionChunk(10 * M.NS, dt, np.array([0.4, 0, 0.3]), q0, dp, dr, np.linspace(1, 0, k))
    # published 150 ms after the observation: step 0 (t+100 ms) is in the past and left out
    msg = cdr_roundtrip(M.make_trajectory(F, chunk, 10 * M.NS + 150_000_000, "base_link"), "trajectory_msgs/msg/MultiDOFJointTrajectory")
    t, pos, quat = M.trajectory_to_arrays(msg)
    np.testing.assert_array_equal(t, [50_000_000, 150_000_000, 250_000_000])
    np.testing.assert_allclose(pos, chunk.target_positions[1:])
    np.testing.assert_allclose(Rotation.from_quat(quat).as_rotvec(), dr[1:], atol=1e-12)
    assert msg.joint_names == ["ee_link"] and msg.header.frame_id == "base_link"


def test_negative_stamp_rejected():
    with pytest.raises(M.MessageError, match="negative"):
        M.ns_to_stamp(F, -1)
