"""Independent rosbag2 recordings with real robot timing, for the timing tests (issue 19: legal data that must work).

Nothing here imports ``vit_policy``: the messages are built from the ``rosbags`` typestore classes
(ROS 2 Humble) and written with ``rosbags.rosbag2.Writer``, so the extraction is checked against data
its own builders did not make. A :class:`Scenario` describes one recording:

* an analytic ground-truth EE trajectory (sums of sines: a few cm/s, ~10-20 deg/s) and gripper opening,
  exposed by :class:`RealtimeBag` as functions of the stamp (``position_at``, ``quaternion_at``,
  ``gripper_at``);
* cameras at their own rate and phase; a frame's header stamp is its exposure time and it is recorded
  (bag time = arrival) ``latency_s`` +- ``jitter_s`` after it (never before it);
* the EE pose as ``geometry_msgs/PoseStamped`` (frame ``base_link``), recorded 0-3 ms after its stamp
  (a jittered arrival is delayed, never reordered: one publisher's messages arrive in the order sent),
  or a TF chain: ``base_link -> flange`` on ``/tf`` (with an unrelated edge in the same messages) and
  ``flange -> tool`` (plus ``world -> base_link``) on ``/tf_static``, one message recorded once at the
  start with transient-local QoS and stamped long before the recording began; the ground truth is
  then the pose of ``tool`` in ``base_link``;
* ``sensor_msgs/JointState`` on ``/joint_states``: gripper finger joints at ``gripper_rate_hz`` and,
  interleaved on the same topic, arm-only messages with other joint names (``joint_states="split"``,
  as a gripper driver beside a joint_state_broadcaster publishes), or every joint in every message
  (``"combined"``);
* an optional gap: no message on any topic is stamped inside it;
* encodings rgb8, bgr8 (with row padding: step > width * 3, padding bytes garbage), mono8, rgba8, and
  ``sensor_msgs/CompressedImage`` jpeg / png with image_transport's format strings
  (``"bgr8; jpeg compressed bgr8"``); storage sqlite3 or mcap.

Every frame carries a marker: 4x4-pixel black/white blocks in the top 16 rows holding the frame's
index into ``RealtimeBag.frame_stamps[camera]``, the camera's number and a checksum (robust to JPEG and
to mono8), and a colour band below it (red left, blue right) that shows a swapped channel order.
:func:`decode_marker` reads it back from an RGB array.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.spatial.transform import Rotation

NS = 1_000_000_000
T0_NS = 1_718_000_000 * NS + 123_456_789  # the recording's start (an arbitrary wall-clock time)

Encoding = Literal["rgb8", "bgr8", "mono8", "rgba8", "jpeg", "png"]
RAW_ENCODINGS = ("rgb8", "bgr8", "mono8", "rgba8")
COMPRESSED_FORMATS = {"jpeg": "bgr8; jpeg compressed bgr8", "png": "bgr8; png compressed bgr8"}  # image_transport's strings
ARM_JOINTS = tuple(f"arm_joint_{i}" for i in range(1, 8))
RED, BLUE = (200, 30, 60), (40, 80, 220)  # the colour band: left half, right half
BLACK, WHITE = 20, 235
BLOCK = 4  # marker block size in pixels
MARKER_ROWS = 4  # block rows of the marker: 4 x (width / 4) bits; the colour band below


@dataclass
class CameraSpec:
    """One camera: ``rate_hz`` frames per second from ``phase_s`` after the recording's start."""

    name: str
    rate_hz: float
    phase_s: float = 0.0
    encoding: Encoding = "rgb8"
    latency_s: float = 0.03  # arrival - exposure stamp, 0..0.1 s on real cameras
    jitter_s: float = 0.005  # arrival jitter, uniform +- this (arrival never precedes the stamp)
    row_padding: int = 0  # raw encodings: extra bytes at the end of each row (step > width * channels)
    jpeg_quality: int = 80

    @property
    def topic(self) -> str:
        base = f"/camera/{self.name}/image_raw"
        return f"{base}/compressed" if self.encoding in COMPRESSED_FORMATS else base


@dataclass
class Scenario:
    """One recording with real robot timing (see the module docstring)."""

    name: str
    cameras: tuple[CameraSpec, ...]
    duration_s: float = 2.5
    storage: Literal["sqlite3", "mcap"] = "sqlite3"
    pose_source: Literal["pose", "tf"] = "pose"
    pose_rate_hz: float = 100.0  # PoseStamped rate, or the /tf rate of base_link -> flange
    pose_phase_s: float = 0.004
    pose_latency_s: tuple[float, float] = (0.0, 0.003)  # arrival - stamp, uniform in this range
    gripper_rate_hz: float = 100.0
    gripper_phase_s: float = 0.002
    arm_rate_hz: float = 125.0  # arm-only JointState messages (joint_states="split")
    joint_states: Literal["split", "combined"] = "split"
    gripper_joints: tuple[str, ...] = ("panda_finger_joint1", "panda_finger_joint2")
    gripper_closed: float = 0.0  # sum of the finger joints when closed
    gripper_open: float = 0.08  # ... and when fully open
    gap: tuple[float, float] | None = None  # (start after the recording's start, length) in seconds
    image_size: tuple[int, int] = (24, 32)  # H, W
    seed: int = 0

    def __post_init__(self) -> None:
        h, w = self.image_size
        if w % BLOCK or h < BLOCK * MARKER_ROWS + 8 or (w // BLOCK) * MARKER_ROWS < 32:
            raise ValueError(f"image_size {self.image_size}: need W divisible by {BLOCK}, W >= 32 and H >= {BLOCK * MARKER_ROWS + 8}")
        if len({c.name for c in self.cameras}) != len(self.cameras) or len(self.cameras) > 15:
            raise ValueError("cameras: unique names, at most 15")


# --------------------------------------------------------------------------------------------------
# Ground truth
# --------------------------------------------------------------------------------------------------

P0 = np.array([0.45, -0.05, 0.32])
POS_AMP = np.array([0.030, 0.025, 0.020])  # m
POS_FREQ = np.array([0.31, 0.23, 0.40])  # Hz: peak speeds 5.8, 3.6, 5.0 cm/s
POS_PHASE = np.array([0.3, 1.1, 2.0])
R0 = Rotation.from_euler("xyz", [np.pi, 0.15, 0.6])  # tool pointing down, yawed
ROT_AMP = np.array([0.12, 0.10, 0.20])  # rad
ROT_FREQ = np.array([0.29, 0.37, 0.21])  # Hz: peaks 12.5, 13.3, 15.1 deg/s per axis
ROT_PHASE = np.array([0.5, 2.2, 1.4])
GRIP_MID, GRIP_AMP, GRIP_FREQ, GRIP_PHASE = 0.5, 0.45, 0.27, 0.4
# /tf chain: flange -> tool (static, Franka-hand-like) and the static world -> base_link
FLANGE_TOOL_P, FLANGE_TOOL_R = np.array([0.0, 0.0, 0.1034]), Rotation.from_euler("z", -np.pi / 4)
WORLD_BASE_P, WORLD_BASE_R = np.array([0.2, 0.1, 0.75]), Rotation.from_euler("z", 0.3)


def _seconds(t_ns: np.ndarray | int) -> np.ndarray:
    return (np.asarray(t_ns, np.int64) - T0_NS).astype(np.float64) / NS  # subtract in int64: exact


def position_at(t_ns: np.ndarray | int) -> np.ndarray:
    """Ground-truth position (..., 3) in base_link of the EE (the ``tool`` frame with TF) at stamps ``t_ns``."""
    t = _seconds(t_ns)[..., None]
    return P0 + POS_AMP * np.sin(2 * np.pi * POS_FREQ * t + POS_PHASE)


def rotation_at(t_ns: np.ndarray | int) -> Rotation:
    """R(t) = exp(w(t)) R0 with w(t) a sum of sines (rotation vector, base frame)."""
    t = _seconds(t_ns).reshape(-1, 1)
    w = ROT_AMP * np.sin(2 * np.pi * ROT_FREQ * t + ROT_PHASE)
    return Rotation.from_rotvec(w) * R0


def quaternion_at(t_ns: np.ndarray | int) -> np.ndarray:
    """Ground-truth orientation (..., 4), x y z w, at stamps ``t_ns``."""
    return rotation_at(t_ns).as_quat().reshape(*np.shape(t_ns), 4)


def gripper_at(t_ns: np.ndarray | int) -> np.ndarray:
    """Ground-truth gripper opening in [0.05, 0.95] (0 closed, 1 open) at stamps ``t_ns``."""
    return GRIP_MID + GRIP_AMP * np.sin(2 * np.pi * GRIP_FREQ * _seconds(t_ns) + GRIP_PHASE)


def arm_joints_at(t_ns: int) -> np.ndarray:
    """Arbitrary arm joint positions (not used by the policy; they only have to be there)."""
    t = float(_seconds(t_ns))
    return np.array([0.1, -0.4, 0.05, -2.1, 0.0, 1.7, 0.8]) + 0.05 * np.sin(t + np.arange(7))


# --------------------------------------------------------------------------------------------------
# Frames and markers
# --------------------------------------------------------------------------------------------------


def _checksum(index: int, cam: int) -> int:
    return (index * 7 + (index >> 8) * 13 + cam * 29 + 0x5A) & 0xFF


def marker_frame(index: int, cam: int, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H, W, 3) frame carrying ``index`` (16 bits), ``cam`` (8 bits) and a checksum (8 bits)."""
    if not 0 <= index < 1 << 16 or not 0 <= cam < 1 << 8:
        raise ValueError(f"marker: index {index} or camera {cam} out of range")
    h, w = size
    bits = [(index >> i) & 1 for i in range(16)] + [(cam >> i) & 1 for i in range(8)] + [(_checksum(index, cam) >> i) & 1 for i in range(8)]
    img = np.empty((h, w, 3), np.uint8)
    cols = w // BLOCK
    grid = np.full(MARKER_ROWS * cols, 0, np.uint8)
    grid[: len(bits)] = bits
    grid = grid.reshape(MARKER_ROWS, cols).repeat(BLOCK, 0).repeat(BLOCK, 1)
    img[: MARKER_ROWS * BLOCK] = np.where(grid[..., None] == 1, WHITE, BLACK).astype(np.uint8)
    img[MARKER_ROWS * BLOCK :, : w // 2] = RED
    img[MARKER_ROWS * BLOCK :, w // 2 :] = BLUE
    return img


def decode_marker(rgb: np.ndarray) -> tuple[int, int]:
    """(frame index, camera number) of a marker frame in RGB; ValueError when the checksum fails."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"decode_marker: expected (H, W, 3), got {rgb.shape}")
    cols = rgb.shape[1] // BLOCK
    gray = rgb[: MARKER_ROWS * BLOCK].astype(np.float64).mean(axis=2)
    inner = gray.reshape(MARKER_ROWS, BLOCK, cols, BLOCK)[:, 1:-1, :, 1:-1].mean(axis=(1, 3))  # 2x2 block centres
    bits = (inner.ravel() > (BLACK + WHITE) / 2).astype(int)
    index = int(sum(int(b) << i for i, b in enumerate(bits[:16])))
    cam = int(sum(int(b) << i for i, b in enumerate(bits[16:24])))
    chk = int(sum(int(b) << i for i, b in enumerate(bits[24:32])))
    if chk != _checksum(index, cam):
        raise ValueError(f"decode_marker: checksum {chk} != {_checksum(index, cam)} (index {index}, camera {cam}): not a marker frame")
    return index, cam


def colour_band(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB of the inner parts of the band's left (red) and right (blue) halves."""
    band = np.asarray(rgb, np.float64)[MARKER_ROWS * BLOCK + 2 : -2]
    w = band.shape[1]
    return band[:, 2 : w // 2 - 2].mean(axis=(0, 1)), band[:, w // 2 + 2 : -2].mean(axis=(0, 1))


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]), 0, 255).astype(np.uint8)


def encode_raw(rgb: np.ndarray, encoding: str, padding: int) -> tuple[bytes, int]:
    """(data, step) of a raw sensor_msgs/Image; padding bytes are garbage (0xAB) a decoder must skip."""
    if encoding == "rgb8":
        px = rgb
    elif encoding == "bgr8":
        px = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        px = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    elif encoding == "mono8":
        px = _gray(rgb)[:, :, None]
    else:
        raise ValueError(f"encode_raw: {encoding!r}")
    h, w, c = px.shape
    rows = np.full((h, w * c + padding), 0xAB, np.uint8)
    rows[:, : w * c] = np.ascontiguousarray(px).reshape(h, w * c)
    return rows.tobytes(), w * c + padding


def encode_compressed(rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    from PIL import Image as PILImage

    out = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(rgb)).save(out, format="JPEG" if fmt == "jpeg" else "PNG", **({"quality": quality} if fmt == "jpeg" else {}))
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# The recording
# --------------------------------------------------------------------------------------------------


@dataclass
class Written:
    """What went into one topic: per message its bag time and header stamp (None: several / none)."""

    msgtype: str
    bag_ns: list[int] = field(default_factory=list)
    stamp_ns: list[int | None] = field(default_factory=list)


@dataclass
class RealtimeBag:
    """A written scenario: its path, what was written and the ground truth."""

    path: Path
    scenario: Scenario
    frame_stamps: dict[str, np.ndarray]  # camera -> (N,) int64 header stamps (exposure), the marker's index order
    frame_recv: dict[str, np.ndarray]  # camera -> (N,) int64 bag times (arrival)
    pose_stamps: np.ndarray  # PoseStamped stamps, or /tf base_link -> flange stamps
    gripper_stamps: np.ndarray  # JointState stamps carrying the finger joints
    written: dict[str, Written]  # topic -> messages as written
    gap_ns: tuple[int, int] | None

    position_at = staticmethod(position_at)
    quaternion_at = staticmethod(quaternion_at)
    gripper_at = staticmethod(gripper_at)
    decode_marker = staticmethod(decode_marker)

    @property
    def reference(self) -> str:
        return self.scenario.cameras[0].name

    @property
    def camera_topics(self) -> dict[str, str]:
        return {c.name: c.topic for c in self.scenario.cameras}

    def camera_number(self, name: str) -> int:
        return [c.name for c in self.scenario.cameras].index(name) + 1

    def segments(self) -> list[tuple[int, int]]:
        """[start, end) in stamp time of each stretch of recording (two around a gap)."""
        end = T0_NS + int(round(self.scenario.duration_s * NS))
        if self.gap_ns is None:
            return [(T0_NS, end)]
        return [(T0_NS, self.gap_ns[0]), (self.gap_ns[1], end)]


def _stamps(rate_hz: float, phase_s: float, duration_s: float) -> np.ndarray:
    n = int(np.floor((duration_s - phase_s) * rate_hz - 1e-9)) + 1
    return T0_NS + np.rint((phase_s + np.arange(n) / rate_hz) * NS).astype(np.int64)


def _in_order(recv: np.ndarray) -> np.ndarray:
    """One publisher's messages arrive in the order it sent them (DDS keeps a writer's order): jitter delays, never reorders."""
    return np.maximum.accumulate(recv)


def _qos(transient_local: bool = False, best_effort: bool = False, depth: int = 10) -> list:
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    infinite = QosTime(9223372036, 854775807)  # rosbag2's 'infinite' deadline / lifespan / lease
    return [Qos(
        QosHistory.KEEP_LAST, depth, QosReliability.BEST_EFFORT if best_effort else QosReliability.RELIABLE,
        QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE, infinite, infinite,
        QosLiveliness.AUTOMATIC, infinite, False,
    )]


def write_scenario(path: str | Path, sc: Scenario) -> RealtimeBag:
    """Write ``sc`` as a new rosbag2 directory at ``path`` (sqlite3 or mcap) and return its ground truth."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]
    rng = np.random.default_rng(sc.seed)
    gap = None if sc.gap is None else (T0_NS + int(round(sc.gap[0] * NS)), T0_NS + int(round((sc.gap[0] + sc.gap[1]) * NS)))

    def keep(stamps: np.ndarray) -> np.ndarray:
        return stamps if gap is None else stamps[(stamps < gap[0]) | (stamps >= gap[1])]

    def header(stamp: int, frame_id: str) -> object:
        return Header(stamp=Time(sec=int(stamp // NS), nanosec=int(stamp % NS)), frame_id=frame_id)

    def quat_msg(q: np.ndarray) -> object:
        return T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))

    def transform(stamp: int, parent: str, child: str, p: np.ndarray, r: Rotation) -> object:
        tr = T["geometry_msgs/msg/Transform"](translation=T["geometry_msgs/msg/Vector3"](x=float(p[0]), y=float(p[1]), z=float(p[2])), rotation=quat_msg(r.as_quat()))
        return T["geometry_msgs/msg/TransformStamped"](header=header(stamp, parent), child_frame_id=child, transform=tr)

    def joint_state(stamp: int, names: list[str], pos: np.ndarray, with_vel: bool) -> object:
        n = len(names)
        return T["sensor_msgs/msg/JointState"](
            header=header(stamp, ""), name=list(names), position=np.asarray(pos, np.float64),
            velocity=np.zeros(n if with_vel else 0, np.float64), effort=np.zeros(n if with_vel else 0, np.float64),
        )

    out: list[tuple[int, int, str, str, object, int | None]] = []  # (bag time, order, topic, type, message, stamp)

    def emit(bag: int, topic: str, msgtype: str, msg: object, stamp: int | None) -> None:
        out.append((int(bag), len(out), topic, msgtype, msg, stamp))

    # cameras
    frame_stamps, frame_recv = {}, {}
    h, w = sc.image_size
    for number, cam in enumerate(sc.cameras, start=1):
        stamps = keep(_stamps(cam.rate_hz, cam.phase_s, sc.duration_s))
        lat = cam.latency_s + rng.uniform(-cam.jitter_s, cam.jitter_s, len(stamps))
        recv = _in_order(stamps + np.rint(np.maximum(lat, 0.0) * NS).astype(np.int64))
        frame_stamps[cam.name], frame_recv[cam.name] = stamps, recv
        for index, (stamp, arrival) in enumerate(zip(stamps.tolist(), recv.tolist())):
            rgb = marker_frame(index, number, sc.image_size)
            if cam.encoding in COMPRESSED_FORMATS:
                msg = T["sensor_msgs/msg/CompressedImage"](
                    header=header(stamp, f"{cam.name}_optical_frame"), format=COMPRESSED_FORMATS[cam.encoding],
                    data=np.frombuffer(encode_compressed(rgb, cam.encoding, cam.jpeg_quality), np.uint8),
                )
                emit(arrival, cam.topic, "sensor_msgs/msg/CompressedImage", msg, stamp)
            else:
                data, step = encode_raw(rgb, cam.encoding, cam.row_padding)
                msg = T["sensor_msgs/msg/Image"](
                    header=header(stamp, f"{cam.name}_optical_frame"), height=h, width=w, encoding=cam.encoding,
                    is_bigendian=0, step=step, data=np.frombuffer(data, np.uint8),
                )
                emit(arrival, cam.topic, "sensor_msgs/msg/Image", msg, stamp)

    # EE pose: PoseStamped or the /tf chain
    pose_stamps = keep(_stamps(sc.pose_rate_hz, sc.pose_phase_s, sc.duration_s))
    pose_recv = _in_order(pose_stamps + np.rint(rng.uniform(*sc.pose_latency_s, len(pose_stamps)) * NS).astype(np.int64))
    positions, rotations = position_at(pose_stamps), rotation_at(pose_stamps)
    for i, (stamp, arrival) in enumerate(zip(pose_stamps.tolist(), pose_recv.tolist())):
        if sc.pose_source == "pose":
            pose = T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=float(positions[i, 0]), y=float(positions[i, 1]), z=float(positions[i, 2])),
                orientation=quat_msg(rotations[i].as_quat()),
            )
            emit(arrival, "/ee_pose", "geometry_msgs/msg/PoseStamped", T["geometry_msgs/msg/PoseStamped"](header=header(stamp, "base_link"), pose=pose), stamp)
        else:  # base_link -> flange such that base_link -> flange -> tool is the ground truth
            r_bf = rotations[i] * FLANGE_TOOL_R.inv()
            p_bf = positions[i] - r_bf.apply(FLANGE_TOOL_P)
            other = transform(stamp, "base_link", "arm_link1", np.array([0.0, 0.0, 0.333]), Rotation.from_euler("z", 0.1 * i / len(pose_stamps)))
            msg = T["tf2_msgs/msg/TFMessage"](transforms=[other, transform(stamp, "base_link", "flange", p_bf, r_bf)])
            emit(arrival, "/tf", "tf2_msgs/msg/TFMessage", msg, stamp)
    if sc.pose_source == "tf":  # latched long before the recording; rosbag2 records it once when it subscribes
        static_stamp = T0_NS - 37 * NS
        msg = T["tf2_msgs/msg/TFMessage"](transforms=[
            transform(static_stamp, "world", "base_link", WORLD_BASE_P, WORLD_BASE_R),
            transform(static_stamp, "flange", "tool", FLANGE_TOOL_P, FLANGE_TOOL_R),
        ])
        emit(T0_NS, "/tf_static", "tf2_msgs/msg/TFMessage", msg, static_stamp)

    # joint states: finger joints (+ arm joints when combined), and arm-only messages interleaved
    grip_stamps = keep(_stamps(sc.gripper_rate_hz, sc.gripper_phase_s, sc.duration_s))
    grip_recv = _in_order(grip_stamps + np.rint(rng.uniform(0.0, 0.002, len(grip_stamps)) * NS).astype(np.int64))
    n_fingers = len(sc.gripper_joints)
    for stamp, arrival in zip(grip_stamps.tolist(), grip_recv.tolist()):
        total = sc.gripper_closed + float(gripper_at(stamp)) * (sc.gripper_open - sc.gripper_closed)
        fingers = [total / n_fingers] * n_fingers
        if sc.joint_states == "combined":
            msg = joint_state(stamp, [*ARM_JOINTS, *sc.gripper_joints], np.r_[arm_joints_at(stamp), fingers], True)
        else:
            msg = joint_state(stamp, list(sc.gripper_joints), np.asarray(fingers), False)
        emit(arrival, "/joint_states", "sensor_msgs/msg/JointState", msg, stamp)
    if sc.joint_states == "split":
        arm_stamps = keep(_stamps(sc.arm_rate_hz, 0.0013, sc.duration_s))
        arm_recv = _in_order(arm_stamps + np.rint(rng.uniform(0.0, 0.002, len(arm_stamps)) * NS).astype(np.int64))
        for stamp, arrival in zip(arm_stamps.tolist(), arm_recv.tolist()):
            emit(arrival, "/joint_states", "sensor_msgs/msg/JointState", joint_state(stamp, list(ARM_JOINTS), arm_joints_at(stamp), True), stamp)

    out.sort(key=lambda m: (m[0], m[1]))  # the recorder writes in arrival order
    qos = {"/tf_static": _qos(transient_local=True, depth=1)}
    qos.update({c.topic: _qos(best_effort=True, depth=5) for c in sc.cameras})
    written: dict[str, Written] = {}
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if sc.storage == "mcap" else StoragePlugin.SQLITE3)
    with writer:
        conns = {}
        for _, _, topic, msgtype, _, _ in out:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts, offered_qos_profiles=qos.get(topic, _qos()))
                written[topic] = Written(msgtype)
        for bag, _, topic, msgtype, msg, stamp in out:
            writer.write(conns[topic], bag, ts.serialize_cdr(msg, msgtype))
            written[topic].bag_ns.append(bag)
            written[topic].stamp_ns.append(stamp)
    return RealtimeBag(path, sc, frame_stamps, frame_recv, pose_stamps, grip_stamps, written, gap)
