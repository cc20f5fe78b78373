"""ROS 2 messages <-> core types (RGB arrays, poses in ns), duck-typed and free of ROS imports.

The same functions read and build rclpy, rosbags and cyclonedds message objects: they only touch
field names (``msg.header.stamp.sec``, ``msg.data``...). Outbound builders take a ``factory``: a
callable ``typename -> message class`` (for example ``"sensor_msgs/msg/Image"``) whose classes accept
every field as a keyword argument. A factory may also define ``uint8_array(bytes)`` and
``float64_array(list)`` to hold ``uint8[]`` / ``float64[]`` fields the way its library wants them
(rosbags: numpy arrays); the default is ``bytes`` and ``list``, which rclpy and the cyclonedds types
of ``ros_nodes.transport`` accept.
"""

from __future__ import annotations

import io
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from vit_policy.images import ImageEncodingError, as_uint8_buffer, check_ros_image, decode_ros_image, encode_ros_image
from vit_policy.observation import ActionChunk

Factory = Callable[[str], Any]
NS = 1_000_000_000


class MessageError(ValueError):
    """A ROS message cannot be converted; the message names the field and the fix."""


# --------------------------------------------------------------------------------------------------
# Factories and field containers
# --------------------------------------------------------------------------------------------------


class rosbags_factory:  # noqa: N801 - used like a function: rosbags_factory(typestore)
    """Factory over a rosbags typestore: classes from ``typestore.types``, arrays as numpy."""

    def __init__(self, typestore: Any) -> None:
        self.typestore = typestore

    def __call__(self, typename: str) -> Any:
        try:
            return self.typestore.types[typename]
        except KeyError:
            raise MessageError(f"message type {typename!r} is not in the rosbags typestore; register it first") from None

    @staticmethod
    def uint8_array(data: bytes) -> np.ndarray:
        return np.frombuffer(data, np.uint8).copy()

    @staticmethod
    def float64_array(values: Sequence[float]) -> np.ndarray:
        return np.asarray(values, np.float64)


def _uint8(factory: Factory, data: bytes) -> Any:
    conv = getattr(factory, "uint8_array", None)
    return conv(data) if conv else data


def _float64(factory: Factory, values: Sequence[float]) -> Any:
    conv = getattr(factory, "float64_array", None)
    return conv(values) if conv else [float(v) for v in values]


def _byte(factory: Factory, value: int) -> Any:
    """A ROS ``byte`` field: an int for rosbags / cyclonedds; rclpy factories define ``byte_value`` (bytes of length 1)."""
    conv = getattr(factory, "byte_value", None)
    return conv(int(value)) if conv else int(value)


# --------------------------------------------------------------------------------------------------
# Time and headers
# --------------------------------------------------------------------------------------------------


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (sec, nanosec) -> integer nanoseconds."""
    try:
        return int(stamp.sec) * NS + int(stamp.nanosec)
    except AttributeError:
        raise MessageError(f"header.stamp: expected a builtin_interfaces/Time with sec and nanosec, got {type(stamp).__name__}") from None


def ns_to_stamp(factory: Factory, ns: int) -> Any:
    """Integer nanoseconds -> builtin_interfaces/Time."""
    ns = int(ns)
    if ns < 0:
        raise MessageError(f"stamp: {ns} ns is negative; ROS time starts at 0")
    return factory("builtin_interfaces/msg/Time")(sec=ns // NS, nanosec=ns % NS)


def ns_to_duration(factory: Factory, ns: int) -> Any:
    """Integer nanoseconds (may be negative) -> builtin_interfaces/Duration (nanosec in [0, 1e9))."""
    ns = int(ns)
    return factory("builtin_interfaces/msg/Duration")(sec=ns // NS, nanosec=ns % NS)


def make_header(factory: Factory, stamp_ns: int, frame_id: str) -> Any:
    return factory("std_msgs/msg/Header")(stamp=ns_to_stamp(factory, stamp_ns), frame_id=str(frame_id))


def _header_ns(msg: Any, what: str) -> int:
    header = getattr(msg, "header", None)
    if header is None:
        raise MessageError(f"{what}.header: missing; expected a stamped message")
    return stamp_to_ns(header.stamp)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def image_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> RGB uint8 (H, W, 3). Raises MessageError naming the bad field."""
    try:
        return decode_ros_image(msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian, msg.data)
    except ImageEncodingError as exc:
        raise MessageError(f"sensor_msgs/Image {exc}") from None


def check_image_fields(msg: Any) -> None:
    """Validate a sensor_msgs/Image's size, encoding and step without decoding its pixels."""
    try:
        check_ros_image(msg.height, msg.width, msg.encoding, msg.step, msg.data)
    except ImageEncodingError as exc:
        raise MessageError(f"sensor_msgs/Image {exc}") from None


def rgb_to_image(factory: Factory, rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Any:
    """RGB uint8 (H, W, 3) -> sensor_msgs/Image in ``encoding`` (rgb8, bgr8, rgba8, bgra8, mono8)."""
    try:
        data, step = encode_ros_image(rgb, encoding)
    except ImageEncodingError as exc:
        raise MessageError(str(exc)) from None
    return factory("sensor_msgs/msg/Image")(
        header=make_header(factory, stamp_ns, frame_id), height=int(rgb.shape[0]), width=int(rgb.shape[1]),
        encoding=encoding, is_bigendian=0, step=int(step), data=_uint8(factory, data),
    )


def compressed_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png, as image_transport writes them) -> RGB uint8 (H, W, 3)."""
    from PIL import Image as PILImage

    fmt = str(msg.format).lower()
    if "jpeg" not in fmt and "jpg" not in fmt and "png" not in fmt:
        raise MessageError(f"sensor_msgs/CompressedImage format: {msg.format!r} is not jpeg or png (compressedDepth is not a colour image)")
    buf = as_uint8_buffer(msg.data)
    try:
        img = PILImage.open(io.BytesIO(buf.tobytes()))
        img.load()
    except Exception as exc:  # PIL raises several types for corrupt data
        raise MessageError(f"sensor_msgs/CompressedImage data: cannot decode {len(buf)} bytes as {msg.format!r}: {exc}") from None
    if img.mode in ("I;16", "I;16B", "I"):
        gray = (np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.array(img.convert("RGB"))  # a writable array of its own


def rgb_to_compressed(factory: Factory, rgb: np.ndarray, stamp_ns: int, frame_id: str, fmt: str = "jpeg", quality: int = 90) -> Any:
    """RGB uint8 -> sensor_msgs/CompressedImage with image_transport's format string ("rgb8; jpeg compressed bgr8")."""
    from PIL import Image as PILImage

    if fmt not in ("jpeg", "png"):
        raise MessageError(f"fmt: {fmt!r} is not 'jpeg' or 'png'")
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MessageError(f"rgb: expected a uint8 (H, W, 3) array, got {getattr(rgb, 'shape', type(rgb))}")
    out = io.BytesIO()
    PILImage.fromarray(rgb).save(out, format="JPEG" if fmt == "jpeg" else "PNG", **({"quality": quality} if fmt == "jpeg" else {}))
    return factory("sensor_msgs/msg/CompressedImage")(
        header=make_header(factory, stamp_ns, frame_id), format=f"rgb8; {fmt} compressed bgr8", data=_uint8(factory, out.getvalue())
    )


# --------------------------------------------------------------------------------------------------
# Poses and TF
# --------------------------------------------------------------------------------------------------


def _vec3(v: Any) -> np.ndarray:
    return np.array([v.x, v.y, v.z], np.float64)


def _quat(q: Any) -> np.ndarray:
    return np.array([q.x, q.y, q.z, q.w], np.float64)


def _checked_pose(position: np.ndarray, quaternion: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not np.all(np.isfinite(position)):
        raise MessageError(f"{what} position: {position.tolist()} contains NaN or Inf")
    if not np.all(np.isfinite(quaternion)):
        raise MessageError(f"{what} orientation: {quaternion.tolist()} contains NaN or Inf")
    norm = float(np.linalg.norm(quaternion))
    if abs(norm - 1.0) > 1e-2:
        raise MessageError(f"{what} orientation: quaternion norm {norm:.4f} is not 1; send a unit quaternion (x, y, z, w)")
    return position, quaternion / norm


def pose_from_msg(msg: Any) -> tuple[int, np.ndarray, np.ndarray]:
    """geometry_msgs/PoseStamped -> (stamp_ns, position (3,), unit quaternion (4,) x, y, z, w)."""
    pos, quat = _checked_pose(_vec3(msg.pose.position), _quat(msg.pose.orientation), "PoseStamped pose")
    return _header_ns(msg, "PoseStamped"), pos, quat


def _make_point(factory: Factory, p: Sequence[float]) -> Any:
    return factory("geometry_msgs/msg/Point")(x=float(p[0]), y=float(p[1]), z=float(p[2]))


def _make_vector3(factory: Factory, v: Sequence[float]) -> Any:
    return factory("geometry_msgs/msg/Vector3")(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _make_quaternion(factory: Factory, q: Sequence[float]) -> Any:
    return factory("geometry_msgs/msg/Quaternion")(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))


def make_pose_stamped(factory: Factory, stamp_ns: int, frame_id: str, position: Sequence[float], quaternion: Sequence[float]) -> Any:
    pose = factory("geometry_msgs/msg/Pose")(position=_make_point(factory, position), orientation=_make_quaternion(factory, quaternion))
    return factory("geometry_msgs/msg/PoseStamped")(header=make_header(factory, stamp_ns, frame_id), pose=pose)


def _make_transform(factory: Factory, position: Sequence[float], quaternion: Sequence[float]) -> Any:
    return factory("geometry_msgs/msg/Transform")(translation=_make_vector3(factory, position), rotation=_make_quaternion(factory, quaternion))


def make_transform_stamped(
    factory: Factory, stamp_ns: int, parent: str, child: str, position: Sequence[float], quaternion: Sequence[float]
) -> Any:
    return factory("geometry_msgs/msg/TransformStamped")(
        header=make_header(factory, stamp_ns, parent), child_frame_id=child, transform=_make_transform(factory, position, quaternion)
    )


def make_tf_message(factory: Factory, transforms: Iterable[Any]) -> Any:
    """tf2_msgs/TFMessage holding the given TransformStamped messages."""
    return factory("tf2_msgs/msg/TFMessage")(transforms=list(transforms))


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1, z1, w1 = a
    x2, y2, z2, w2 = b
    return np.array([
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
    ])


def _quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    u, w = q[:3], q[3]
    return v + 2.0 * np.cross(u, np.cross(u, v) + w * v)


class TFBuffer:
    """Latest value of each TF edge (parent -> child), with chain lookup between any two frames of a tree.

    Frame names lose a leading '/' as in tf2. The stamp of a lookup is the oldest dynamic edge on the
    chain (static edges do not age), so staleness checks see the oldest information used.
    """

    def __init__(self) -> None:
        self._edges: dict[str, tuple[str, int, np.ndarray, np.ndarray, bool]] = {}  # child -> (parent, ns, p, q, static)
        self._lock = threading.Lock()  # /tf and /tf_static callbacks may run on different threads

    def add(self, tf_msg: Any, static: bool = False) -> int:
        """Store every TransformStamped of a tf2_msgs/TFMessage (or one TransformStamped). Returns how many."""
        transforms = getattr(tf_msg, "transforms", None)
        items = [tf_msg] if transforms is None else list(transforms)
        for t in items:
            parent, child = str(t.header.frame_id).lstrip("/"), str(t.child_frame_id).lstrip("/")
            if not parent or not child:
                raise MessageError("TransformStamped header.frame_id / child_frame_id: must not be empty")
            pos, quat = _checked_pose(_vec3(t.transform.translation), _quat(t.transform.rotation), f"transform {parent}->{child}")
            with self._lock:
                self._edges[child] = (parent, stamp_to_ns(t.header.stamp), pos, quat, static)
        return len(items)

    def _to_root(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges:
            chain.append(self._edges[chain[-1]][0])
            if len(chain) > 64:
                raise MessageError(f"TF: the chain from {frame!r} loops or is deeper than 64 frames")
        return chain

    def _root_pose(self, chain: list[str]) -> tuple[np.ndarray, np.ndarray, list[int], list[int]]:
        """Pose of chain[0] in chain[-1] (the chain's root) and the stamps of its (dynamic, static) edges."""
        p, q = np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0])
        dyn, sta = [], []
        for child in chain[:-1]:
            _, ns, ep, eq, static = self._edges[child]
            p, q = ep + _quat_rotate(eq, p), _quat_mul(eq, q)
            (sta if static else dyn).append(ns)
        return p, q, dyn, sta

    def lookup(self, parent: str, child: str) -> tuple[int, np.ndarray, np.ndarray]:
        """Pose of ``child`` in ``parent``: (stamp_ns, position, quaternion). MessageError if not connected."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        with self._lock:
            return self._lookup(parent, child)

    def _lookup(self, parent: str, child: str) -> tuple[int, np.ndarray, np.ndarray]:
        up_c, up_p = self._to_root(child), self._to_root(parent)
        if up_c[-1] != up_p[-1]:
            known = sorted(set(self._edges) | {e[0] for e in self._edges.values()})
            raise MessageError(f"TF: no transform chain from {parent!r} to {child!r} (known frames: {known}); check /tf and /tf_static")
        common = next(f for f in up_c if f in set(up_p))
        pc, qc, dc, sc = self._root_pose(up_c[: up_c.index(common) + 1])
        pp, qp, dp, sp = self._root_pose(up_p[: up_p.index(common) + 1])
        qpi = qp * np.array([-1.0, -1.0, -1.0, 1.0])
        pos, quat = _quat_rotate(qpi, pc - pp), _quat_mul(qpi, qc)
        dynamic, static = dc + dp, sc + sp
        stamp = min(dynamic) if dynamic else max(static, default=0)
        return stamp, pos, quat / np.linalg.norm(quat)


# --------------------------------------------------------------------------------------------------
# Joint states (gripper)
# --------------------------------------------------------------------------------------------------


def gripper_from_joint_state(msg: Any, joints: list[str], closed: float, open: float) -> tuple[int, float]:  # noqa: A002
    """sensor_msgs/JointState -> (stamp_ns, opening in [0, 1]): the named joints' positions summed, mapped linearly."""
    if closed == open:
        raise MessageError(f"gripper range: closed ({closed}) and open ({open}) must differ")
    names = list(msg.name)
    positions = np.asarray(msg.position, np.float64)
    if len(positions) != len(names):
        raise MessageError(f"JointState position: {len(positions)} values for {len(names)} names; they must match")
    missing = [j for j in joints if j not in names]
    if missing:
        raise MessageError(f"JointState name: gripper joint(s) {missing} not in {names}; set gripper_joints to the right names")
    total = float(sum(positions[names.index(j)] for j in joints))
    if not np.isfinite(total):
        raise MessageError(f"JointState position: gripper joint(s) {joints} are NaN or Inf")
    opening = (total - closed) / (open - closed)
    return _header_ns(msg, "JointState"), float(min(max(opening, 0.0), 1.0))


def make_joint_state(factory: Factory, stamp_ns: int, names: Sequence[str], positions: Sequence[float]) -> Any:
    if len(names) != len(positions):
        raise MessageError(f"positions: {len(positions)} values for {len(names)} joint names")
    return factory("sensor_msgs/msg/JointState")(
        header=make_header(factory, stamp_ns, ""), name=[str(n) for n in names], position=_float64(factory, positions),
        velocity=_float64(factory, []), effort=_float64(factory, []),
    )


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


def make_twist_stamped(factory: Factory, stamp_ns: int, frame_id: str, linear: Sequence[float], angular: Sequence[float]) -> Any:
    twist = factory("geometry_msgs/msg/Twist")(linear=_make_vector3(factory, linear), angular=_make_vector3(factory, angular))
    return factory("geometry_msgs/msg/TwistStamped")(header=make_header(factory, stamp_ns, frame_id), twist=twist)


def make_float64(factory: Factory, value: float) -> Any:
    return factory("std_msgs/msg/Float64")(data=float(value))


def make_trajectory(factory: Factory, chunk: ActionChunk, stamp_ns: int, frame_id: str, joint_name: str = "ee_link") -> Any:
    """trajectory_msgs/MultiDOFJointTrajectory of the chunk's absolute targets in ``frame_id``.

    Point k carries time_from_start = step time - ``stamp_ns``; steps at or before ``stamp_ns`` are
    left out (a controller cannot reach a point in the past).
    """
    times = chunk.step_times_ns - int(stamp_ns)
    positions, quats = chunk.target_positions, chunk.target_quaternions
    Point = factory("trajectory_msgs/msg/MultiDOFJointTrajectoryPoint")
    points = [
        Point(transforms=[_make_transform(factory, positions[k], quats[k])], velocities=[], accelerations=[],
              time_from_start=ns_to_duration(factory, int(times[k])))
        for k in range(len(chunk)) if times[k] > 0
    ]
    return factory("trajectory_msgs/msg/MultiDOFJointTrajectory")(
        header=make_header(factory, stamp_ns, frame_id), joint_names=[joint_name], points=points
    )


def trajectory_to_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MultiDOFJointTrajectory -> (time_from_start ns (N,), positions (N, 3), quaternions (N, 4)) of its first joint."""
    t = np.array([int(p.time_from_start.sec) * NS + int(p.time_from_start.nanosec) for p in msg.points], np.int64)
    pos = np.array([_vec3(p.transforms[0].translation) for p in msg.points]).reshape(-1, 3)
    quat = np.array([_quat(p.transforms[0].rotation) for p in msg.points]).reshape(-1, 4)
    return t, pos, quat


# --------------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------------

DIAG_OK, DIAG_WARN, DIAG_ERROR, DIAG_STALE = 0, 1, 2, 3


def make_diagnostic_array(
    factory: Factory, stamp_ns: int, name: str, level: int, message: str, values: dict[str, Any], hardware_id: str = ""
) -> Any:
    """diagnostic_msgs/DiagnosticArray with one status; ``values`` become KeyValue pairs (str())."""
    KeyValue = factory("diagnostic_msgs/msg/KeyValue")
    status = factory("diagnostic_msgs/msg/DiagnosticStatus")(
        level=_byte(factory, level), name=name, message=message, hardware_id=hardware_id,
        values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()],
    )
    return factory("diagnostic_msgs/msg/DiagnosticArray")(header=make_header(factory, stamp_ns, ""), status=[status])


def diagnostic_values(msg: Any) -> dict[str, str]:
    """The KeyValue pairs of the first status of a DiagnosticArray, as a dict."""
    return {kv.key: kv.value for kv in msg.status[0].values} if msg.status else {}
