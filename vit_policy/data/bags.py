"""rosbag2 recordings -> episodes of observations and action-chunk labels.

Messages are routed and paired by :mod:`vit_policy.inputs`, the code the live node runs, so the policy
is trained on what it sees on the robot:

* Every frame of the reference camera (the first of ``data.cameras``) is a sample, stamped at the
  frame's header stamp; the other cameras, the EE pose and the gripper are taken at that stamp
  (nearest frame within ``sync_tolerance_s``; pose and gripper interpolated). Frames the rule cannot
  pair are dropped and counted, with their reasons, in a warning.
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

from vit_policy import messages as M
from vit_policy.data.configuration import DataConfig
from vit_policy.geometry import interpolate_poses, pose_delta, rotvec_to_rot6d
from vit_policy.images import resize_uint8
from vit_policy.inputs import (
    COMPRESSED_TYPE, FLOAT64_TYPE, IMAGE_TYPE, JOINT_STATE_TYPE, POSE_TYPE, TF_TYPE, Frame, InputRouter, InputSpec, Resolved,
    Synchronizer, SyncRule, camera_key, interpolate_pose,
)

log = logging.getLogger(__name__)

IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)


class BagError(ValueError):
    """A bag cannot be used as configured; the message names the bag path, the topic and the fix."""


@dataclass
class Episode:
    """T synchronised samples of one demonstration with their K-step action labels."""

    source: str
    stamps_ns: np.ndarray  # (T,) int64 observation stamps (the pose's)
    images: dict[str, np.ndarray]  # camera -> (T, H, W, 3) uint8 RGB (a list of T undecoded Frames with decode=False)
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


def drop_non_bags(paths: list[str | Path]) -> list[Path]:
    """``paths`` without the files that cannot be a recording (a ``demos.yaml`` or notes beside the bags, caught by
    ``dir/*``), with a warning naming them; directories and missing paths stay, for the checks that name them."""
    keep: list[Path] = []
    skipped: list[str] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix not in (".db3", ".mcap"):
            skipped.append(str(p))
        else:
            keep.append(p)
    if skipped:
        log.warning("skipped %d file(s) that are not bags (a bag is a rosbag2 directory, .db3 or .mcap): %s", len(skipped), skipped)
    return keep


def _open(path: str | Path) -> Any:
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag {str(path)!r} does not exist")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        storage = sorted(p.name for p in path.iterdir() if p.suffix in (".db3", ".mcap"))
        inner = sorted(str(d) for d in path.iterdir() if (d / "metadata.yaml").is_file())
        if storage:  # the recording is there, its index is not
            raise BagError(f"bag {str(path)!r} has no metadata.yaml (its storage {', '.join(storage[:3])} is there: the metadata "
                           f"was lost or the recording was cut short); rebuild it with: ros2 bag reindex {path}"
                           f"{' -s mcap' if storage[0].endswith('.mcap') else ''} (or copy the bag's metadata.yaml back)")
        if inner:
            raise BagError(f"{str(path)!r} is not a rosbag2 bag (no metadata.yaml) but holds {len(inner)} bag(s); "
                           f"give the bag directories themselves, e.g. {inner[0]}")
        raise BagError(f"{str(path)!r} is not a rosbag2 bag: no metadata.yaml and no .db3 or .mcap storage file; give the "
                       "directory that ros2 bag record -o wrote (it holds metadata.yaml)")
    try:
        reader = AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        reader.open()
    except Exception as exc:  # rosbags raises several types for corrupt or truncated storage
        fix = ("give a bag directory (with metadata.yaml) or its .db3 / .mcap file" if path.is_file() and path.suffix not in (".db3", ".mcap", ".bag")
               else f"copy or record the bag again (if the recording was cut short, ros2 bag reindex {path if path.is_dir() else path.parent} "
                    "rebuilds its metadata.yaml)")
        cause = " ".join(str(exc).split())
        raise BagError(f"bag {str(path)!r} cannot be read as rosbag2 (sqlite3 or mcap): {type(exc).__name__}: {cause}; {fix}") from None
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


def _pose_track(stamps: list[int], pos: list[np.ndarray], quat: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Poses as received (commands: no synchroniser admitted them) -> a track for
    ``geometry.interpolate_poses``: stamps sorted (stable), one pose per stamp, [x y z qx qy qz qw] rows."""
    order = np.argsort(np.asarray(stamps, np.int64), kind="stable")
    t = np.asarray(stamps, np.int64)[order]
    keep = np.r_[True, np.diff(t) > 0]
    v = np.concatenate([np.asarray(pos, np.float64).reshape(-1, 3), np.asarray(quat, np.float64).reshape(-1, 4)], axis=1)
    return t[keep], v[order][keep]


def _hold_index(stamps: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
    """Zero-order hold: index of the latest stamp <= t (the first one before the series starts)."""
    return np.clip(np.searchsorted(stamps, t_ns, side="right") - 1, 0, len(stamps) - 1)


def _interp(stamps: np.ndarray, values: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
    return np.interp(np.asarray(t_ns, np.float64), stamps.astype(np.float64), values)


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


@dataclass
class InputPass:
    """One bag read through the input path: the synchroniser's buffers, the reference frames, the commands."""

    path: Path
    data: DataConfig
    router: InputRouter
    sync: Synchronizer
    ref_frames: list[Frame]
    cmds: tuple[list[int], list[np.ndarray], list[np.ndarray]]
    cmd_grips: tuple[list[int], list[float]]

    def pair(self) -> list[Resolved]:
        """Every reference frame the timing rule pairs (the recording is over: a wait is a drop, counted)."""
        out = []
        for frame in self.ref_frames:
            obs, why = self.sync.resolve(frame.stamp_ns, final=True, frame=frame)
            if obs is None:
                self.sync.count_drop(frame.stamp_ns, why)
            else:
                out.append(obs)
        return out

    def check(self, paired: int) -> None:
        """BagError naming the bag, the missing input and the setting when nothing can be learnt from it."""
        data, sync, path = self.data, self.sync, str(self.path)
        if not len(sync.poses):
            where = (f"data.pose_topic {data.pose_topic!r}" if data.pose_topic else
                     f"the TF chain {data.tf_base_frame!r} -> {data.tf_ee_frame!r} (data.tf_base_frame, data.tf_ee_frame)")
            detail = self.router.tf_waiting or sync.rejected and sync.last_rejection or "no message"
            raise BagError(f"bag {path!r}: no EE pose from {where}: {detail}")
        if not len(sync.grippers):
            g = data.gripper
            seen = f"; its JointStates name {sorted(self.router.joints_seen)}" if self.router.joints_seen else ""
            raise BagError(f"bag {path!r}: no gripper value on {g.topic!r}: no JointState names the gripper joints "
                           f"{list(g.joints)} (data.gripper.joints){seen}")
        ref = next(iter(data.cameras))
        if not paired:
            why = sync.last_drop or sync.last_rejection or f"no frame on {data.cameras[ref]!r} (data.cameras.{ref})"
            raise BagError(f"bag {path!r}: no usable observation ({len(self.ref_frames)} {ref} frames); last reason: {why}")
        if data.labels == "command" and not self.cmds[0]:
            raise BagError(f"bag {path!r}: no message on data.command_topic {data.command_topic!r}; use labels: future_pose")


def read_inputs(path: str | Path, data: DataConfig) -> InputPass:
    """Read a bag in record order through the node's router and synchroniser (pixels stay undecoded)."""
    path = Path(path)
    roles = check_topics(path, data, bag_topics(path))
    router = InputRouter(InputSpec.from_data(data))
    sync = Synchronizer(list(data.cameras), SyncRule.of(data), bounded=False)
    out = InputPass(path, data, router, sync, [], ([], [], []), ([], []))
    ref = next(iter(data.cameras))
    inputs = router.topics
    for topic, t_bag, msg in iter_bag_messages(path, set(roles) | inputs):
        if topic in inputs:
            item = router.route(topic, msg, t_bag)
            if not sync.add(item, t_bag) and item.kind == "image" and item.name == ref:
                if not out.ref_frames or out.ref_frames[-1].stamp_ns != item.stamp_ns:
                    out.ref_frames.append(item.value)
        try:
            if topic == data.command_topic:
                for lst, v in zip(out.cmds, M.pose_from_msg(msg)):
                    lst.append(v)
            if topic == data.command_gripper_topic:
                out.cmd_grips[0].append(t_bag)  # Float64 has no header: arrival time
                out.cmd_grips[1].append(float(np.clip(msg.data, 0.0, 1.0)))
        except M.MessageError as exc:
            sync.reject(topic, str(exc))
    return out


def dry_run(path: str | Path, data: DataConfig) -> dict[str, Any]:
    """Whether a bag would extract, without decoding a pixel: frames paired, why others were dropped, and
    per camera the fraction of its frames at which the EE pose can be had. Raises BagError as extraction does."""
    p = read_inputs(path, data)
    paired = p.pair()
    p.check(len(paired))
    stamps = np.array([o.stamp_ns for o in paired], np.int64)
    segments = int(np.sum(np.diff(stamps) > int(data.gap_split_s * 1e9))) + 1
    t, v = p.sync.poses.arrays()
    coverage = {}
    for cam in data.cameras:
        frames = [f.stamp_ns for f in p.sync.frames[cam]]
        ok = sum(not interpolate_pose(t, v, s, p.sync.rule)[1] for s in frames)
        coverage[cam] = {"frames": len(frames), "with_pose": ok, "fraction": round(ok / len(frames), 6) if frames else None}
    return {"frames": len(p.ref_frames), "paired": len(paired), "segments": segments, "coverage": coverage,
            "dropped": dict(p.sync.dropped), "rejected": dict(p.sync.rejected),
            "last_drop": p.sync.last_drop, "last_rejection": p.sync.last_rejection}


def extract_episodes(
    path: str | Path, data: DataConfig, chunk_size: int, image_size: tuple[int, int] | None = None, decode: bool = True
) -> list[Episode]:
    """Read one bag into episodes (split at gaps longer than ``data.gap_split_s``).

    Messages go through the node's input path (:mod:`vit_policy.inputs`) in record order; every frame
    of the reference camera that the timing rule can pair with a pose becomes a sample. Images are
    resized to ``image_size`` (H, W) when given (the encoder's input size, for the cache). With
    ``decode=False`` each camera's images are a list of undecoded :class:`~vit_policy.inputs.Frame`
    (the dataset export decodes them one at a time; a frame that cannot be decoded is then its to drop). Rejected
    messages and dropped frames are counted and logged, never fatal; a bag with no usable observation,
    a missing topic or an unsupported type raises BagError naming the bag.
    """
    p = read_inputs(path, data)
    path, sync, cmds, cmd_grips = p.path, p.sync, p.cmds, p.cmd_grips
    samples: list[tuple[Resolved, dict[str, Any]]] = []
    decoded: dict[int, np.ndarray] = {}
    for obs in p.pair():
        if not decode:
            samples.append((obs, dict(obs.frames)))
            continue
        try:
            images = {c: _decode(f, image_size, decoded) for c, f in obs.frames.items()}
        except M.MessageError as exc:
            sync.reject(camera_key(next(iter(data.cameras))), str(exc))
            continue
        samples.append((obs, images))
    _log_losses(path, sync, len(p.ref_frames), len(samples))
    p.check(len(samples))

    track = sync.poses.arrays()  # admitted by the synchroniser: increasing stamps, one pose each
    grip_t, grip_v = sync.grippers.arrays()
    cmd = _pose_track(*cmds) if cmds[0] else None
    cmd_g = (np.asarray(cmd_grips[0], np.int64), np.asarray(cmd_grips[1])) if cmd_grips[0] else None

    stamps = np.array([o.stamp_ns for o, _ in samples], np.int64)
    cuts = np.flatnonzero(np.diff(stamps) > int(data.gap_split_s * 1e9)) + 1
    episodes = []
    for seg in np.split(np.arange(len(samples)), cuts):
        ep = _episode(path, [samples[i] for i in seg], track, grip_t, grip_v, cmd, cmd_g, data, chunk_size, decode)
        if ep is not None:
            episodes.append(ep)
    if not episodes:
        raise BagError(f"bag {str(path)!r}: every observation lies at the end of its episode; nothing to learn from")
    return episodes


def _log_losses(path: Path, sync: Synchronizer, frames: int, used: int) -> None:
    """One warning per bag for rejected messages and dropped frames, with the most common reasons."""
    if sync.rejected or sync.dropped:
        rej = ", ".join(f"{k} {v}" for k, v in sync.rejected.most_common(4)) or "none"
        drop = ", ".join(f"{v} x {k}" for k, v in sync.dropped.most_common(3)) or "none"
        log.warning("bag %s: %d of %d frames used; rejected messages: %s (last: %s); dropped frames: %s",
                    path, used, frames, rej, sync.last_rejection or "-", drop)


def _stream_end(stamps: np.ndarray, after: int, gap_ns: int) -> int:
    """The last stamp reachable from ``after`` without a jump longer than ``gap_ns`` (the segment's end)."""
    i = max(int(np.searchsorted(stamps, after, side="right")) - 1, 0)
    jumps = np.flatnonzero(np.diff(stamps[i:]) > gap_ns)
    return int(stamps[i + jumps[0]] if len(jumps) else stamps[-1])


def _episode(
    path: Path, samples: list, track: tuple[np.ndarray, np.ndarray], grip_t: np.ndarray, grip_v: np.ndarray,
    cmd: tuple[np.ndarray, np.ndarray] | None,
    cmd_g: tuple[np.ndarray, np.ndarray] | None, data: DataConfig, k: int, stack: bool = True,
) -> Episode | None:
    stamps = np.array([o.stamp_ns for o, _ in samples], np.int64)
    pos = np.stack([o.pose[:3] for o, _ in samples])
    quat = np.stack([o.pose[3:] for o, _ in samples])
    grip = np.array([o.gripper for o, _ in samples], np.float64)
    gap = int(data.gap_split_s * 1e9)
    steps = stamps[:, None] + data.dt_ns * np.arange(1, k + 1, dtype=np.int64)[None]  # (T, K)
    if data.labels == "future_pose":
        end = _stream_end(track[0], int(stamps[-1]), gap)
        target = interpolate_poses(*track, steps.ravel())
    else:
        assert cmd is not None
        end = _stream_end(cmd[0], int(stamps[-1]), gap)
        target = cmd[1][_hold_index(cmd[0], steps.ravel())]
    tp, tq = target[:, :3], target[:, 3:]
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
    images = {c: [imgs[c] for (_, imgs), ok in zip(samples, keep) if ok] for c in data.cameras}
    return Episode(
        source=str(path),
        stamps_ns=stamps[keep],
        images={c: np.stack(v) if stack else v for c, v in images.items()},  # type: ignore[misc]
        position=pos[keep].astype(np.float64),
        quaternion=quat[keep].astype(np.float64),
        gripper=grip[keep].astype(np.float32),
        action=action[keep].astype(np.float32),
        action_mask=mask[keep],
    )


def _decode(frame: Frame, image_size: tuple[int, int] | None, decoded: dict[int, np.ndarray]) -> np.ndarray:
    """A frame's pixels at the encoder's input size, decoded once even when several samples share it."""
    key = id(frame)
    if key not in decoded:
        rgb = frame.rgb()
        decoded[key] = resize_uint8(rgb, image_size) if image_size is not None else rgb
    return decoded[key]
