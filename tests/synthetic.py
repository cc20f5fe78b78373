"""Synthetic demonstration bags with exact ground truth, for tests (and benchmarks) of extraction, training and replay.

A red target lies on a table at (Tx, Ty). The scripted expert moves the end effector towards it:
the horizontal offset decays exponentially, p_xy(t) = T + (p0_xy - T) exp(-a t), the height and
the yaw (about the base z axis) settle the same way, and the gripper closes (0) once the EE is
within ``GRASP_RADIUS`` of the target. Camera 0 looks down from the wrist at the target, a large
four-colour quadrant marker: the image position of its centre shows the offset T - p_xy, which
decides the translation of every chunk step and when the gripper closes. A policy has to read it
from the image (the area of each colour in view is enough, which a small ViT learns in a few hundred
steps on a CPU), while the mean action cannot. Camera 1 is a fixed overview (target in red, EE
marker in blue).

Messages are built with ``vit_policy.messages`` (the code that the node and bag reading use) and
written as real rosbag2 files with ``rosbags`` (sqlite3 or mcap). ``SyntheticBag`` holds the analytic
trajectory, every stamp and every frame, so tests can check extraction exactly.

A test helper, not part of the package: tests import it as ``synthetic`` (pytest puts tests/ on
sys.path); benchmarks and sim_tests add tests/ to sys.path first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from vit_policy import messages as M

NS = 1_000_000_000
BASE, TORSO, EE = "base_link", "torso_link", "ee_link"
TORSO_OFFSET = (np.array([0.05, 0.0, 0.4]), Rotation.from_euler("z", 30, degrees=True))  # static base -> torso
GRIPPER_JOINTS = ("finger_left_joint", "finger_right_joint")
GRIPPER_OPEN = 0.08  # summed finger positions when fully open (closed: 0)
ARM_JOINTS = ("shoulder_joint", "elbow_joint")
RATE = 0.8  # 1/s: how fast the expert closes the offset to the target (and settles height and yaw)
Z_GOAL = 0.12  # m, grasp height
GRASP_RADIUS = 0.03  # m: the gripper closes within this horizontal distance of the target
VIEW_RANGE = 0.12  # m: target offset that puts the marker's centre at the wrist image's edge
QUADRANT_COLOURS = ((220, 30, 30), (30, 60, 220), (30, 190, 60), (230, 210, 40))  # marker quadrants TL, TR, BL, BR


def default_topics(cameras: Sequence[str], compressed: bool = False) -> dict[str, str]:
    """Camera topic per camera name, as the topic layout defines them."""
    return {c: f"/camera/{c}/image_raw" + ("/compressed" if compressed else "") for c in cameras}


@dataclass
class SyntheticBag:
    """Ground truth of one generated bag: the analytic motion and every message time."""

    path: Path
    target: np.ndarray  # (Tx, Ty) metres, base frame
    start_ns: int
    p0: np.ndarray  # start position
    yaw0: float  # start yaw (rad) of the downward-pointing gripper
    command_lead_ns: int
    topics: dict[str, str]  # camera name -> topic
    pose_stamps_ns: np.ndarray  # header stamps of the pose stream (PoseStamped or /tf)
    joint_stamps_ns: np.ndarray
    frame_stamps_ns: dict[str, np.ndarray]  # header stamps per camera
    frame_recv_ns: dict[str, np.ndarray]  # bag (receive) times per camera
    frames: dict[str, np.ndarray]  # (N, H, W, 3) the RGB frames as generated (before any compression)
    gap: tuple[int, int] | None = None  # [start, end) ns with no messages at all
    extra: dict[str, object] = field(default_factory=dict)

    def pose_at(self, t_ns: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """EE position(s) and quaternion(s) in the base frame at time(s) t (ns)."""
        t = (np.asarray(t_ns, np.int64) - self.start_ns) / 1e9
        decay = np.exp(-RATE * t)[..., None]
        goal = np.array([self.target[0], self.target[1], Z_GOAL])
        pos = goal + (self.p0 - goal) * decay
        yaw = self.yaw0 * np.exp(-RATE * np.ravel(t))
        rot = Rotation.from_euler("z", yaw[:, None]) * Rotation.from_euler("x", np.pi)
        return pos, rot.as_quat().reshape(*np.shape(t), 4)

    def gripper_at(self, t_ns: np.ndarray | int) -> np.ndarray:
        """1 (open) until the EE is within GRASP_RADIUS of the target horizontally, then 0."""
        pos = self.pose_at(t_ns)[0]
        return (np.linalg.norm(pos[..., :2] - self.target, axis=-1) > GRASP_RADIUS).astype(np.float64)

    def command_at(self, t_ns: np.ndarray | int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The expert's command at its stamp t: the pose (and gripper) command_lead_ns ahead."""
        t = np.asarray(t_ns, np.int64) + self.command_lead_ns
        return (*self.pose_at(t), self.gripper_at(t))


def render(target: np.ndarray, position: np.ndarray, camera_index: int, size: tuple[int, int]) -> np.ndarray:
    """Camera 0: wrist view of the target, a four-colour quadrant marker larger than the view whose
    centre sits at the image centre + its offset from the EE. Camera 1: fixed overview of the table,
    red target and blue EE marker at their (x, y)."""
    h, w = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = np.linspace(90, 130, w, dtype=np.float64).astype(np.uint8)[None, :, None]
    s = max(4, h // 4)

    def square(u: float, v: float, side: int, colour: tuple[int, int, int]) -> None:
        """Fill a square centred at normalised image coordinates (u, v) in [-1, 1]."""
        cx = int(round((np.clip(u, -1, 1) + 1) / 2 * (w - side)))
        cy = int(round((np.clip(v, -1, 1) + 1) / 2 * (h - side)))
        img[cy : cy + side, cx : cx + side] = colour

    if camera_index % 2 == 0:  # looking down from the wrist: image right = base -y, image down = base -x
        u, v = np.clip(-(np.asarray(target) - position[:2])[::-1] / VIEW_RANGE, -1, 1)
        cx, cy = (u + 1) / 2 * w, (v + 1) / 2 * h  # the marker's centre; it is larger than the view
        right = np.arange(w)[None, :] + 0.5 >= cx
        below = np.arange(h)[:, None] + 0.5 >= cy
        for (b, r), colour in zip([(0, 0), (0, 1), (1, 0), (1, 1)], QUADRANT_COLOURS):
            img[(below == b) & (right == r)] = colour
    else:
        square((target[1] + 0.25) / 0.25 - 1, (target[0] - 0.2) / 0.25 - 1, s, (220, 30, 30))
        square((position[1] + 0.25) / 0.25 - 1, (position[0] - 0.2) / 0.25 - 1, max(2, s // 2), (30, 40, 230))
    return img


def write_synthetic_bag(
    path: str | Path,
    *,
    storage: Literal["sqlite3", "mcap"] = "sqlite3",
    cameras: Sequence[str] = ("front",),
    compressed: bool = False,
    compression_format: Literal["jpeg", "png"] = "jpeg",
    pose_source: Literal["pose", "tf"] = "pose",
    command: bool = False,
    duration_s: float = 4.0,
    camera_hz: float = 20.0,
    pose_hz: float = 50.0,
    image_size: tuple[int, int] = (96, 128),
    seed: int = 0,
    target: Sequence[float] | None = None,
    gap_s: tuple[float, float] | None = None,
    latency_ms: float = 5.0,
    gripper_joints: Sequence[str] = GRIPPER_JOINTS,
) -> SyntheticBag:
    """Write one demonstration to ``path`` (a new rosbag2 directory) and return its ground truth.

    ``gap_s=(at, length)`` drops every message in that window (a recording pause); ``latency_ms`` is
    the delay between a camera frame's stamp and its arrival (its bag time).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    rng = np.random.default_rng(seed)
    tgt = np.asarray(target if target is not None else [0.45, 0.0] + rng.uniform(-0.06, 0.06, 2), np.float64)
    start = 1_700_000_000 * NS + seed * 1000 * NS
    p0 = np.array([0.45, 0.0, 0.30]) + rng.uniform(-0.06, 0.06, 3) * [1, 1, 1]
    yaw0 = float(rng.uniform(-0.4, 0.4))
    topics = default_topics(cameras, compressed)
    gap = None if gap_s is None else (start + int(gap_s[0] * NS), start + int((gap_s[0] + gap_s[1]) * NS))
    end = start + int(duration_s * NS)
    gt = SyntheticBag(path, tgt, start, p0, yaw0, int(NS / pose_hz) * 2, topics, np.zeros(0, np.int64), np.zeros(0, np.int64), {}, {}, {}, gap)

    def keep(t: np.ndarray) -> np.ndarray:
        t = t[t < end]
        return t if gap is None else t[(t < gap[0]) | (t >= gap[1])]

    pose_t = keep(start + np.arange(0, int(duration_s * pose_hz) + 1) * int(NS / pose_hz))
    gt.pose_stamps_ns = gt.joint_stamps_ns = pose_t
    store = get_typestore(Stores.ROS2_HUMBLE)
    factory = M.rosbags_factory(store)
    out: list[tuple[int, str, object]] = []  # (bag time, topic, message)
    for i, cam in enumerate(cameras):
        period = int(NS / camera_hz)
        stamps = keep(start + 7_000_000 + 3_000_000 * i + np.arange(int(duration_s * camera_hz) + 1) * period)
        frames = np.stack([render(tgt, gt.pose_at(t)[0], i, image_size) for t in stamps])
        recv = stamps + int(latency_ms * 1e6)
        gt.frame_stamps_ns[cam], gt.frame_recv_ns[cam], gt.frames[cam] = stamps, recv, frames
        for t, r, img in zip(stamps, recv, frames):
            if compressed:
                msg = M.rgb_to_compressed(factory, img, int(t), f"{cam}_optical_frame", fmt=compression_format)
            else:
                msg = M.rgb_to_image(factory, img, int(t), f"{cam}_optical_frame", encoding="bgr8" if i % 2 else "rgb8")
            out.append((int(r), topics[cam], msg))
    positions, quats = gt.pose_at(pose_t)
    grips = gt.gripper_at(pose_t)
    t_off, r_off = TORSO_OFFSET
    for t, p, q, g in zip(pose_t, positions, quats, grips):
        t = int(t)
        if pose_source == "pose":
            out.append((t, "/ee_pose", M.make_pose_stamped(factory, t, BASE, p, q)))
        else:  # dynamic torso -> ee such that base -> torso -> ee equals the pose
            p_te = r_off.inv().apply(p - t_off)
            q_te = (r_off.inv() * Rotation.from_quat(q)).as_quat()
            tf = M.make_transform_stamped(factory, t, TORSO, EE, p_te, q_te)
            out.append((t, "/tf", M.make_tf_message(factory, [tf])))
        names = [*ARM_JOINTS, *gripper_joints]
        fingers = [g * GRIPPER_OPEN / len(gripper_joints)] * len(gripper_joints)
        out.append((t, "/joint_states", M.make_joint_state(factory, t, names, [0.1, -0.2, *fingers])))
        if command:
            cp, cq, cg = gt.command_at(t)
            out.append((t, "/expert/target_pose", M.make_pose_stamped(factory, t, BASE, cp, cq)))
            out.append((t, "/expert/gripper", M.make_float64(factory, float(cg))))
    if pose_source == "tf":
        static = M.make_transform_stamped(factory, start, BASE, TORSO, t_off, r_off.as_quat())
        out.append((start, "/tf_static", M.make_tf_message(factory, [static])))
    out.sort(key=lambda item: item[0])

    msgtypes = {topic: _typename(msg) for _, topic, msg in out}
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3)
    with writer:
        conns = {topic: writer.add_connection(topic, typ, typestore=store) for topic, typ in msgtypes.items()}
        for t, topic, msg in out:
            writer.write(conns[topic], t, store.serialize_cdr(msg, msgtypes[topic]))
    return gt


def _typename(msg: object) -> str:
    """'sensor_msgs/msg/Image' of a rosbags message instance."""
    return str(type(msg).__msgtype__)  # type: ignore[attr-defined]


def write_synthetic_dataset(
    root: str | Path, n: int, *, seed: int = 0, storage: Literal["sqlite3", "mcap"] = "sqlite3", **kwargs: object
) -> list[SyntheticBag]:
    """``n`` bags ``root/demo_000`` ... with targets spread over the image (seeds seed, seed+1, ...)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return [write_synthetic_bag(root / f"demo_{i:03d}", storage=storage, seed=seed + i, **kwargs) for i in range(n)]  # type: ignore[arg-type]
