"""rosbag2 recordings -> episodes of synchronised observations and action-chunk labels.

Decoding goes through ``vit_policy.messages`` and synchronisation through ``observation.check_sync``,
the code the live node runs, so the policy is trained on what it sees on the robot:

* A control clock ticks every ``1 / control_rate_hz`` from the bag's first message. At a tick, the
  inputs are the latest message of each topic that had *arrived* (bag time <= tick); they form an
  observation when ``check_sync`` accepts their header stamps (present, fresh, within tolerance of the
  pose). The observation is stamped with the pose's stamp, as at run time.
* Labels (ARCHITECTURE.md): step k is the target for ``stamp + (k+1) dt``: the EE pose interpolated
  at that time (``future_pose``) or the latest recorded command at that time (``command``), as a
  delta to the observed pose (``geometry.pose_delta``; rotation as rot6d). A step after the last pose
  (or command) of its episode is padding: mask False, value held from the last real step.
* One bag is one episode, unless no observation forms for longer than ``gap_split_s``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from scipy.spatial.transform import Rotation

from vit_policy import messages as M
from vit_policy.config import DataConfig
from vit_policy.geometry import pose_delta, rotvec_to_rot6d
from vit_policy.images import resize_uint8
from vit_policy.observation import check_sync

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
POSE_TYPE, TF_TYPE = "geometry_msgs/msg/PoseStamped", "tf2_msgs/msg/TFMessage"
JOINT_STATE_TYPE, FLOAT64_TYPE = "sensor_msgs/msg/JointState", "std_msgs/msg/Float64"


class BagError(ValueError):
    """A bag cannot be used as configured; the message names the bag path, the topic and the fix."""


@dataclass
class Episode:
    """T synchronised samples of one demonstration with their K-step action labels."""

    source: str
    stamps_ns: np.ndarray  # (T,) int64 observation stamps (the pose's)
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8 RGB
    position: np.ndarray  # (T, 3)
    quaternion: np.ndarray  # (T, 4) x, y, z, w
    gripper: np.ndarray  # (T,) in [0, 1]
    action: np.ndarray  # (T, K, 10) raw labels [dp, rot6d of the delta rotation, gripper target]
    action_mask: np.ndarray  # (T, K) bool, False = padding past the episode end

    def __len__(self) -> int:
        return int(self.stamps_ns.shape[0])


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _open(path: str | Path) -> Any:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {str(path)!r} does not exist")
    reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
    try:
        reader.open()
    except Exception as exc:  # rosbags raises several types for corrupt or truncated storage
        raise BagError(f"bag {str(path)!r} cannot be read as rosbag2 (sqlite3 or mcap): {type(exc).__name__}: {exc}") from None
    return reader


def bag_topics(path: str | Path) -> dict[str, str]:
    """Topic -> message type of a bag; a corrupt or unreadable bag raises BagError naming the path."""
    reader = _open(path)
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def iter_bag_messages(path: str | Path, topics: Iterable[str]) -> Iterator[tuple[str, int, object]]:
    """(topic, bag time ns, deserialised message) of the given topics, in bag-time order."""
    reader = _open(path)
    wanted = set(topics)
    try:
        conns = [c for c in reader.connections if c.topic in wanted]
        try:
            for conn, t, raw in reader.messages(connections=conns):
                yield conn.topic, int(t), reader.deserialize(raw, conn.msgtype)
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"bag {str(path)!r}: cannot read its messages (truncated or corrupt?): {type(exc).__name__}: {exc}") from None
    finally:
        reader.close()


def with_control_ticks(messages: Iterable[tuple[str, int, Any]], period_ns: int) -> Iterator[tuple[int, tuple[str, Any] | None]]:
    """Interleave control ticks with bag messages: ``(t, (topic, msg))`` for a message, ``(t, None)`` for a tick.

    The one clock of extraction and faithful replay: ticks every ``period_ns`` from the first message's
    bag time; a message arriving exactly at a tick is seen by it; the last ticks run up to and
    including the last message's time.
    """
    next_tick: int | None = None
    last = 0
    for topic, t, msg in messages:
        if next_tick is None:
            next_tick = t
        while next_tick < t:
            yield next_tick, None
            next_tick += period_ns
        last = t
        yield t, (topic, msg)
    while next_tick is not None and next_tick <= last:
        yield next_tick, None
        next_tick += period_ns


def check_topics(path: str | Path, data: DataConfig, have: dict[str, str]) -> dict[str, str]:
    """Required topic -> config field, after checking each exists with a supported type."""
    listing = ", ".join(f"{t} ({m})" for t, m in sorted(have.items())) or "no topics at all"
    need: list[tuple[str, str, tuple[str, ...]]] = [(t, f"data.cameras.{c}", IMAGE_TYPES) for c, t in data.cameras.items()]
    if data.pose_topic:
        need.append((data.pose_topic, "data.pose_topic", (POSE_TYPE,)))
    else:
        need.append(("/tf", "data.pose_topic: null (TF pose)", (TF_TYPE,)))
    need.append((data.gripper.topic, "data.gripper.topic", (JOINT_STATE_TYPE,) if data.gripper.kind == "joint_state" else (FLOAT64_TYPE,)))
    if data.command_topic:
        need.append((data.command_topic, "data.command_topic", (POSE_TYPE,)))
    if data.command_gripper_topic:
        need.append((data.command_gripper_topic, "data.command_gripper_topic", (FLOAT64_TYPE,)))
    for topic, where, types in need:
        if topic not in have:
            raise BagError(f"bag {str(path)!r} has no topic {topic!r} ({where}); the bag has: {listing}")
        if have[topic] not in types:
            raise BagError(f"bag {str(path)!r}: topic {topic!r} has type {have[topic]}, but {where} needs {' or '.join(types)}")
    roles: dict[str, str] = {}
    for topic, where, _ in need:
        roles[topic] = f"{roles[topic]}, {where}" if topic in roles else where
    return roles




# --------------------------------------------------------------------------------------------------
# Streams and interpolation
# --------------------------------------------------------------------------------------------------


class _PoseTrack:
    """A time series of poses (stamps ns, positions, quaternions): linear + slerp interpolation."""

    def __init__(self, stamps: list[int], pos: list[np.ndarray], quat: list[np.ndarray]) -> None:
        order = np.argsort(np.asarray(stamps, np.int64), kind="stable")
        t = np.asarray(stamps, np.int64)[order]
        keep = np.r_[True, np.diff(t) > 0]  # one pose per stamp
        self.t = t[keep]
        self.p = np.asarray(pos, np.float64).reshape(-1, 3)[order][keep]
        self.q = np.asarray(quat, np.float64).reshape(-1, 4)[order][keep]

    def at(self, t_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Poses at times inside [t[0], t[-1]] (callers clip); exact at sample stamps."""
        t = np.clip(np.asarray(t_ns, np.int64), self.t[0], self.t[-1])
        i = np.clip(np.searchsorted(self.t, t, side="right") - 1, 0, len(self.t) - 1)
        j = np.minimum(i + 1, len(self.t) - 1)
        span = (self.t[j] - self.t[i]).astype(np.float64)
        a = np.where(span > 0, (t - self.t[i]) / np.where(span > 0, span, 1.0), 0.0)
        pos = self.p[i] + a[:, None] * (self.p[j] - self.p[i])
        r_i = Rotation.from_quat(self.q[i])
        step = (Rotation.from_quat(self.q[j]) * r_i.inv()).as_rotvec()  # slerp: a fraction of the rotation i -> j
        return pos, (Rotation.from_rotvec(step * a[:, None]) * r_i).as_quat()


def _hold_index(stamps: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
    """Zero-order hold: index of the latest stamp <= t (the first one before the series starts)."""
    return np.clip(np.searchsorted(stamps, t_ns, side="right") - 1, 0, len(stamps) - 1)


def _interp(stamps: np.ndarray, values: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
    return np.interp(np.asarray(t_ns, np.float64), stamps.astype(np.float64), values)


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


def extract_episodes(
    path: str | Path, data: DataConfig, chunk_size: int, image_size: tuple[int, int] | None = None
) -> list[Episode]:
    """Read one bag into episodes (split at gaps longer than ``data.gap_split_s``).

    Images are resized to ``image_size`` (H, W) when given (the encoder's input size, for the cache).
    Raises BagError naming the bag for a missing topic, an unsupported type or no usable observation.
    """
    path = Path(path)
    roles = check_topics(path, data, bag_topics(path))
    cam_of = {t: c for c, t in data.cameras.items()}
    tf_topics = {"/tf", "/tf_static"} if not data.pose_topic else set()
    dt = data.dt_ns
    tol, max_age = int(data.sync_tolerance_s * 1e9), int(data.max_age_s * 1e9)

    latest: dict[str, tuple[int, Any] | None] = {c: None for c in data.cameras}  # camera -> (stamp, raw msg)
    pose_now: tuple[int, np.ndarray, np.ndarray] | None = None
    grip_now: tuple[int, float] | None = None
    poses: tuple[list[int], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    grips: tuple[list[int], list[float]] = ([], [])
    cmds: tuple[list[int], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    cmd_grips: tuple[list[int], list[float]] = ([], [])
    tf = M.TFBuffer()
    samples: list[tuple[int, dict[str, Any], np.ndarray, np.ndarray, float]] = []
    last_reason = "the bag has no messages on the configured topics"

    def tick(now: int) -> None:
        """One control tick on the inputs that had arrived by ``now``: a sample if they are in sync."""
        nonlocal last_reason
        stamps: dict[str, int | None] = {"pose": pose_now[0] if pose_now else None}
        stamps.update({c: (v[0] if v else None) for c, v in latest.items()})
        stamps["gripper"] = grip_now[0] if grip_now else None
        sync = check_sync(stamps, now, tol, max_age, reference="pose")
        if not sync.ok:
            last_reason = f"at {now} ns: {sync.reason}"
            return
        assert pose_now is not None and grip_now is not None
        if samples and samples[-1][0] == pose_now[0]:
            return  # no new pose since the last tick: the same observation again (pose slower than control)
        samples.append((pose_now[0], {c: v[1] for c, v in latest.items() if v}, pose_now[1], pose_now[2], grip_now[1]))

    for t_bag, item in with_control_ticks(iter_bag_messages(path, set(roles) | tf_topics), dt):
        if item is None:
            tick(t_bag)
            continue
        topic, msg = item
        try:
            if topic in cam_of:
                latest[cam_of[topic]] = (M.stamp_to_ns(msg.header.stamp), msg)
            elif topic == data.pose_topic:
                pose_now = M.pose_from_msg(msg)
                for lst, v in zip(poses, pose_now):
                    lst.append(v)
            elif topic in tf_topics:
                tf.add(msg, static=topic == "/tf_static")
                try:
                    pose_now = tf.lookup(data.tf_base_frame, data.tf_ee_frame)
                except M.MessageError:
                    continue  # chain not complete yet
                for lst, v in zip(poses, pose_now):
                    lst.append(v)
            elif topic == data.gripper.topic:
                g = data.gripper
                if g.kind == "joint_state":
                    grip_now = M.gripper_from_joint_state(msg, g.joints, g.closed, g.open)
                else:
                    grip_now = (t_bag, float(np.clip(msg.data, 0.0, 1.0)))  # Float64 has no header: arrival time
                grips[0].append(grip_now[0])
                grips[1].append(grip_now[1])
            if topic == data.command_topic:
                s, p, q = M.pose_from_msg(msg)
                for lst, v in zip(cmds, (s, p, q)):
                    lst.append(v)
            if topic == data.command_gripper_topic:
                cmd_grips[0].append(t_bag)
                cmd_grips[1].append(float(np.clip(msg.data, 0.0, 1.0)))
        except M.MessageError as exc:
            raise BagError(f"bag {str(path)!r}, topic {topic!r} ({roles.get(topic, 'TF')}) at bag time {t_bag}: {exc}") from None
    if not samples:
        raise BagError(f"bag {str(path)!r}: no usable (synchronised) observation; last reason {last_reason}")

    track = _PoseTrack(*poses)
    grip_t, grip_v = np.asarray(grips[0], np.int64), np.asarray(grips[1], np.float64)
    order = np.argsort(grip_t, kind="stable")
    grip_t, grip_v = grip_t[order], grip_v[order]
    if data.labels == "command" and not cmds[0]:
        raise BagError(f"bag {str(path)!r}: no message on data.command_topic {data.command_topic!r}; use labels: future_pose")
    cmd = _PoseTrack(*cmds) if cmds[0] else None
    cmd_g = (np.asarray(cmd_grips[0], np.int64), np.asarray(cmd_grips[1])) if cmd_grips[0] else None

    # split where no observation formed for longer than gap_split_s
    stamps = np.array([s[0] for s in samples], np.int64)
    cuts = np.flatnonzero(np.diff(stamps) > int(data.gap_split_s * 1e9)) + 1
    episodes = []
    decoded: dict[int, np.ndarray] = {}
    for seg in np.split(np.arange(len(samples)), cuts):
        ep = _episode(path, [samples[i] for i in seg], track, grip_t, grip_v, cmd, cmd_g, data, chunk_size, image_size, decoded)
        if ep is not None:
            episodes.append(ep)
    if not episodes:
        raise BagError(f"bag {str(path)!r}: every observation lies at the end of its episode; nothing to learn from")
    return episodes


def _stream_end(stamps: np.ndarray, after: int, gap_ns: int) -> int:
    """The last stamp reachable from ``after`` without a jump longer than ``gap_ns`` (the segment's end)."""
    i = max(int(np.searchsorted(stamps, after, side="right")) - 1, 0)
    jumps = np.flatnonzero(np.diff(stamps[i:]) > gap_ns)
    return int(stamps[i + jumps[0]] if len(jumps) else stamps[-1])


def _episode(
    path: Path, samples: list, track: _PoseTrack, grip_t: np.ndarray, grip_v: np.ndarray, cmd: _PoseTrack | None,
    cmd_g: tuple[np.ndarray, np.ndarray] | None, data: DataConfig, k: int, image_size: tuple[int, int] | None,
    decoded: dict[int, np.ndarray],
) -> Episode | None:
    stamps = np.array([s[0] for s in samples], np.int64)
    pos = np.stack([s[2] for s in samples])
    quat = np.stack([s[3] for s in samples])
    grip = np.array([s[4] for s in samples], np.float64)
    gap = int(data.gap_split_s * 1e9)
    steps = stamps[:, None] + data.dt_ns * np.arange(1, k + 1, dtype=np.int64)[None]  # (T, K)
    if data.labels == "future_pose":
        end = _stream_end(track.t, int(stamps[-1]), gap)
        tp, tq = track.at(steps.ravel())
    else:
        assert cmd is not None
        end = _stream_end(cmd.t, int(stamps[-1]), gap)
        held = _hold_index(cmd.t, steps.ravel())
        tp, tq = cmd.p[held], cmd.q[held]
    mask = steps <= end
    if cmd_g is not None:
        tg = cmd_g[1][_hold_index(cmd_g[0], steps.ravel())]
    else:
        tg = _interp(grip_t, grip_v, steps.ravel())
    dp, dr = pose_delta(np.repeat(pos, k, axis=0), np.repeat(quat, k, axis=0), tp, tq)
    action = np.concatenate([dp, rotvec_to_rot6d(dr), tg[:, None]], axis=-1).reshape(-1, k, 10)
    keep = mask.any(axis=1)
    if not keep.any():
        return None
    # padding: hold the last real step (the loss ignores it; the statistics skip it)
    last = np.maximum(mask.sum(axis=1) - 1, 0)
    held = np.take_along_axis(action, last[:, None, None].repeat(10, axis=2), axis=1)
    action = np.where(mask[..., None], action, held)
    images: dict[str, list[np.ndarray]] = {c: [] for c in data.cameras}
    for s, ok in zip(samples, keep):
        if not ok:
            continue
        for cam, msg in s[1].items():
            key = id(msg)
            if key not in decoded:
                decoded[key] = _decode(path, cam, msg, image_size)
            images[cam].append(decoded[key])
    return Episode(
        source=str(path),
        stamps_ns=stamps[keep],
        images={c: np.stack(v) for c, v in images.items()},
        position=pos[keep].astype(np.float64),
        quaternion=quat[keep].astype(np.float64),
        gripper=grip[keep].astype(np.float32),
        action=action[keep].astype(np.float32),
        action_mask=mask[keep],
    )


def _decode(path: Path, cam: str, msg: Any, image_size: tuple[int, int] | None) -> np.ndarray:
    try:
        rgb = M.compressed_to_rgb(msg) if hasattr(msg, "format") else M.image_to_rgb(msg)
    except M.MessageError as exc:
        raise BagError(f"bag {str(path)!r}, camera {cam!r}: {exc}") from None
    rgb = rgb if rgb.flags.writeable else rgb.copy()  # decoded views of the bag's buffer are read-only
    return resize_uint8(rgb, image_size) if image_size is not None else rgb
