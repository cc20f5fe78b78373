"""The one input path: ROS messages -> routed inputs -> observations stamped at their camera frame.

Bag extraction (training), faithful replay, the live node (both transports) and the DDS simulator
bridge all go through these classes; nothing else routes messages or pairs frames with poses.

* :class:`InputRouter` turns ``(topic, message)`` into an image, a pose, a gripper value, an ignored
  message or a rejection with its reason. It owns the TF buffer and knows which topics to subscribe.
* :class:`Synchronizer` keeps short buffers and applies the timing rule:

  - An observation is stamped at a frame of the reference camera (the first camera). Every other
    camera contributes its frame nearest that stamp, within ``sync_tolerance_s``.
  - The EE pose is *interpolated at that stamp* (linear position, slerp orientation) from the two
    poses around it, at most 2 x ``sync_tolerance_s`` apart. Past the newest pose it is
    extrapolated by at most ``max_extrapolation_s``; beyond that the frame waits for the next pose
    (live) or is dropped (recording finished), counted with its reason.
  - The gripper is interpolated the same way, or held from its latest value up to ``max_age_s``.
  - A stamp more than ``max_stamp_lead_s`` ahead of its arrival, or older than the previous one on
    the same input, is rejected and counted; arrival minus stamp (the clock offset plus transport
    and exposure delay) is kept per input for diagnostics.

Decisions that used to differ between training, replay and the node, settled here once: the gripper
is synchronised everywhere; a JointState without the gripper joints (an arm-only message on the same
topic) is ignored everywhere; a PoseStamped whose frame_id is not the base frame is rejected
everywhere; Float64 grippers are accepted everywhere (stamped at arrival: Float64 has no header).
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vit_policy import messages as M
from vit_policy.config import ConfigError
from vit_policy.geometry import lerp_pose

POSE, GRIPPER = "pose", "gripper"
IMAGE_TYPE, COMPRESSED_TYPE = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
POSE_TYPE, TF_TYPE = "geometry_msgs/msg/PoseStamped", "tf2_msgs/msg/TFMessage"
JOINT_STATE_TYPE, FLOAT64_TYPE = "sensor_msgs/msg/JointState", "std_msgs/msg/Float64"


def camera_key(camera: str) -> str:
    """The name of a camera input in statistics and reasons."""
    return f"camera/{camera}"


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


def period_ns(rate_hz: float) -> int:
    """One control period in integer nanoseconds: the grid that data labels, runtime ticks and chunk steps share."""
    return int(round(1e9 / rate_hz))


TIMING_FIELDS = ("sync_tolerance_s", "max_age_s", "max_extrapolation_s", "max_stamp_lead_s", "position_bound_m")
TIMING_HELP = {  # the timing rule's fields that mean the same in data: and runtime: (max_age_s, max_extrapolation_s differ)
    "sync_tolerance_s": "other cameras within this of the reference frame; the EE poses around a frame at most 2x this apart (s)",
    "max_stamp_lead_s": "a stamp further ahead of its arrival (record time in a bag) is rejected: clocks out of sync (s)",
    "position_bound_m": "an EE position further than this from the base on any axis is rejected (m)",
}


def check_timing(section: str, cfg: Any) -> None:
    """Validate the timing-rule fields that data: (DataConfig) and runtime: (RuntimeConfig) share."""
    if not 0 <= cfg.max_extrapolation_s <= cfg.max_age_s:
        raise ConfigError(f"{section}.max_extrapolation_s: {cfg.max_extrapolation_s} must be in [0, max_age_s] seconds (e.g. 0.02)")
    if not cfg.max_stamp_lead_s >= 0:
        raise ConfigError(f"{section}.max_stamp_lead_s: {cfg.max_stamp_lead_s} must be >= 0 seconds (e.g. 0.2)")
    if not cfg.position_bound_m > 0:
        raise ConfigError(f"{section}.position_bound_m: {cfg.position_bound_m} must be > 0 metres (e.g. 10)")


@dataclass(frozen=True)
class SyncRule:
    """The timing rule's limits in ns, read from a DataConfig or a RuntimeConfig (the same field names)."""

    tolerance_ns: int
    max_age_ns: int
    max_extrapolation_ns: int
    max_lead_ns: int
    position_bound_m: float

    @classmethod
    def of(cls, cfg: Any) -> "SyncRule":
        """From any config with the TIMING_FIELDS (data: or runtime:)."""
        tol, age, extra, lead, bound = (float(getattr(cfg, f)) for f in TIMING_FIELDS)
        ns = lambda s: int(round(s * 1e9))  # noqa: E731
        return cls(ns(tol), ns(age), ns(extra), ns(lead), bound)


@dataclass(frozen=True)
class InputSpec:
    """Where each input comes from: camera topics, the EE pose (PoseStamped or TF chain) and the gripper."""

    cameras: dict[str, str]  # camera -> topic (first = reference camera)
    pose_topic: str | None  # PoseStamped topic; None: TF chain base_frame -> ee_frame on /tf, /tf_static
    base_frame: str = "base_link"
    ee_frame: str = "ee_link"
    gripper_topic: str | None = "/joint_states"  # None: no gripper feedback (opening 1.0)
    gripper_kind: str = "joint_state"  # joint_state | float64
    gripper_joints: tuple[str, ...] = ()
    gripper_closed: float = 0.0
    gripper_open: float = 0.08
    image_type: str = IMAGE_TYPE  # subscription type for live cameras (bags: whatever was recorded)
    image_qos: str = "sensor_data"
    settings: tuple[str, ...] = ("cameras", "base_frame", "gripper_joints", "gripper_closed / gripper_open")  # names in errors

    @classmethod
    def from_data(cls, data: Any) -> "InputSpec":
        """The inputs of a DataConfig (bags)."""
        g = data.gripper
        return cls(dict(data.cameras), data.pose_topic, data.tf_base_frame, data.tf_ee_frame, g.topic, g.kind,
                   tuple(g.joints), float(g.closed), float(g.open),
                   settings=("data.cameras", "data.tf_base_frame", "data.gripper.joints", "data.gripper.closed / open"))

    @classmethod
    def from_node(cls, cfg: Any, cameras: list[str]) -> "InputSpec":
        """The inputs of the policy node's NodeConfig (ros_nodes/configuration.py) for the policy's cameras."""
        compressed = cfg.image_transport == "compressed"
        topics = {c: cfg.topics.image.format(camera=c) + ("/compressed" if compressed else "") for c in cameras}
        return cls(topics, None if cfg.pose_source == "tf" else cfg.topics.ee_pose, cfg.base_frame, cfg.ee_frame,
                   cfg.topics.joint_states if cfg.gripper_joints else None, "joint_state", tuple(cfg.gripper_joints),
                   float(cfg.gripper_closed), float(cfg.gripper_open), COMPRESSED_TYPE if compressed else IMAGE_TYPE,
                   cfg.image_qos)

    def check(self, spec: Any) -> None:
        """These inputs feed a checkpoint with this ObservationSpec: its cameras mapped, its frame, its gripper range."""
        spec.check_inputs(self.cameras, self.base_frame,
                          () if self.gripper_topic is None else self.gripper_joints if self.gripper_kind == "joint_state" else None,
                          (self.gripper_closed, self.gripper_open), dict(zip(("cameras", "base_frame", "gripper_joints", "gripper_range"), self.settings)))

    @property
    def reference(self) -> str:
        return next(iter(self.cameras))


# --------------------------------------------------------------------------------------------------
# Routing
# --------------------------------------------------------------------------------------------------


class Frame:
    """A camera frame whose pixels are decoded only when an observation uses it (then cached)."""

    __slots__ = ("stamp_ns", "_msg", "_rgb")

    def __init__(self, stamp_ns: int, msg: Any = None, rgb: np.ndarray | None = None) -> None:
        self.stamp_ns, self._msg, self._rgb = int(stamp_ns), msg, rgb

    def rgb(self) -> np.ndarray:
        """RGB uint8 (H, W, 3); raises MessageError for pixels that cannot be decoded."""
        if self._rgb is None:
            msg = self._msg
            rgb = M.compressed_to_rgb(msg) if hasattr(msg, "format") else M.image_to_rgb(msg)
            self._rgb, self._msg = (rgb if rgb.flags.writeable else rgb.copy()), None
        return self._rgb


@dataclass
class Routed:
    """One message's meaning: kind is image | pose | gripper | ignore | reject."""

    kind: str
    name: str = ""  # camera name, 'pose' or 'gripper'
    stamp_ns: int = 0
    value: Any = None  # Frame | (position, quaternion) | float
    reason: str = ""


class InputRouter:
    """``(topic, message)`` -> :class:`Routed`. Stateful only for the TF chain."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.cam_of = {t: c for c, t in spec.cameras.items()}
        self.tf = M.TFBuffer() if spec.pose_topic is None else None
        self._tf_stamp: int | None = None
        self.tf_waiting = ""  # why the TF chain has not connected yet (empty once it has)
        self.joints_seen: set[str] = set()  # joint names of JointStates ignored for lacking the gripper joints

    def subscriptions(self) -> list[tuple[str, str, str]]:
        """(topic, message type, QoS name) of every input topic."""
        s = self.spec
        subs = [(t, s.image_type, s.image_qos) for t in s.cameras.values()]
        if s.pose_topic:
            subs.append((s.pose_topic, POSE_TYPE, "reliable"))
        else:
            subs += [("/tf", TF_TYPE, "reliable"), ("/tf_static", TF_TYPE, "latched")]
        if s.gripper_topic:
            subs.append((s.gripper_topic, JOINT_STATE_TYPE if s.gripper_kind == "joint_state" else FLOAT64_TYPE, "reliable"))
        return subs

    @property
    def topics(self) -> set[str]:
        return {t for t, _, _ in self.subscriptions()}

    def input_of(self, topic: str) -> str:
        """The input name a topic feeds (for counting a message that failed before routing)."""
        if topic in self.cam_of:
            return camera_key(self.cam_of[topic])
        return GRIPPER if topic == self.spec.gripper_topic and topic != self.spec.pose_topic else POSE

    def route(self, topic: str, msg: Any, arrival_ns: int) -> Routed:
        """Classify and convert one message. Never raises for bad content: that is a 'reject'."""
        s = self.spec
        name = self.input_of(topic)
        try:
            if topic in self.cam_of:
                cam = self.cam_of[topic]
                if not hasattr(msg, "format"):  # raw: check the header fields now, decode pixels only if used
                    M.check_image_fields(msg)
                elif not any(f in str(msg.format).lower() for f in ("jpeg", "jpg", "png")):
                    raise M.MessageError(f"sensor_msgs/CompressedImage format: {msg.format!r} is not jpeg or png")
                stamp = M.stamp_to_ns(msg.header.stamp)
                return Routed("image", cam, stamp, Frame(stamp, msg))
            if topic == s.pose_topic:
                frame = str(msg.header.frame_id).lstrip("/")
                if frame and frame != s.base_frame:
                    return Routed("reject", POSE, reason=f"{topic}: PoseStamped header.frame_id {frame!r} is not the base "
                                  f"frame {s.base_frame!r}; publish the EE pose in {s.base_frame!r} or set the base frame")
                stamp, pos, quat = M.pose_from_msg(msg)
                return Routed("pose", POSE, stamp, (pos, quat))
            if topic in ("/tf", "/tf_static") and self.tf is not None:
                self.tf.add(msg, static=topic == "/tf_static")
                try:
                    stamp, pos, quat = self.tf.lookup(s.base_frame, s.ee_frame)
                except M.MessageError as exc:
                    if "no transform chain" in str(exc):
                        self.tf_waiting = str(exc)
                        return Routed("ignore", POSE, reason=str(exc))  # not connected yet: normal at start-up
                    raise
                if self._tf_stamp is not None and stamp == self._tf_stamp:
                    return Routed("ignore", POSE, reason="TF message did not move the chain's stamp")
                self._tf_stamp, self.tf_waiting = stamp, ""
                return Routed("pose", POSE, stamp, (pos, quat))
            if topic == s.gripper_topic:
                if s.gripper_kind == "float64":
                    value = float(msg.data)
                    if not np.isfinite(value):
                        raise M.MessageError(f"{topic}: Float64 gripper value {value} is not finite")
                    return Routed("gripper", GRIPPER, int(arrival_ns), min(max(value, 0.0), 1.0))
                if not any(j in list(msg.name) for j in s.gripper_joints):
                    self.joints_seen.update(map(str, msg.name))
                    return Routed("ignore", GRIPPER, reason=f"JointState without the gripper joints {list(s.gripper_joints)}")
                stamp, value = M.gripper_from_joint_state(msg, list(s.gripper_joints), s.gripper_closed, s.gripper_open)
                return Routed("gripper", GRIPPER, stamp, value)
        except M.MessageError as exc:
            return Routed("reject", name, reason=f"{topic}: {exc}")
        except (AttributeError, TypeError, ValueError) as exc:  # a message of another type on the topic
            return Routed("reject", name, reason=f"{topic}: cannot read {type(msg).__name__}: {exc}")
        return Routed("ignore", reason=f"{topic} is not an input")


# --------------------------------------------------------------------------------------------------
# Buffers and the timing rule
# --------------------------------------------------------------------------------------------------


class _Series:
    """Increasing stamps with values; bounded (live: the newest ``maxlen``) or not (extraction).

    Kept in numpy buffers with room for twice the window, so :meth:`arrays` returns views without copying
    (the live buffers hold hundreds of poses and are read on every resolve; rebuilding them took 0.4 ms).
    A written row is never written again: appends go past the end, and a full buffer (or :meth:`clear`)
    moves the window into new arrays, so views handed out stay valid.
    """

    def __init__(self, maxlen: int | None) -> None:
        self.maxlen = maxlen
        self._t = np.empty(0, np.int64)
        self._v = np.empty(0, np.float64)
        self._start = self._end = 0

    def append(self, t: int, v: Any) -> None:
        value = np.asarray(v, np.float64)
        if self._end == len(self._t):
            n = self._end - self._start
            cap = 2 * (self.maxlen or max(32, n))
            t_buf, v_buf = np.empty(cap, np.int64), np.empty((cap, *value.shape), np.float64)
            if n:
                t_buf[:n], v_buf[:n] = self._t[self._start:self._end], self._v[self._start:self._end]
            self._t, self._v, self._start, self._end = t_buf, v_buf, 0, n
        self._t[self._end], self._v[self._end] = t, value
        self._end += 1
        if self.maxlen is not None and self._end - self._start > self.maxlen:
            self._start += 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Stamps and values, oldest first: views, valid until the next append."""
        return self._t[self._start:self._end], self._v[self._start:self._end]

    @property
    def t(self) -> np.ndarray:
        return self._t[self._start:self._end]

    @property
    def v(self) -> np.ndarray:
        return self._v[self._start:self._end]

    def clear(self) -> None:
        self._t, self._v = np.empty(0, np.int64), np.empty(0, np.float64)
        self._start = self._end = 0

    def __len__(self) -> int:
        return self._end - self._start


WAIT, DROP = "wait", "drop"


def interpolate_pose(t: np.ndarray, v: np.ndarray, s: int, rule: SyncRule) -> tuple[np.ndarray, str]:
    """Pose [x y z qx qy qz qw] at stamp ``s`` from stamps ``t`` / poses ``v``, or (empty, 'wait: why' | 'drop: why')."""
    n = len(t)
    if n == 0:
        return np.zeros(0), f"{WAIT}: no EE pose yet"
    i = int(np.searchsorted(t, s, side="right")) - 1
    if i >= 0 and t[i] == s:
        return v[i], ""
    if i < 0:  # before the first pose: extrapolate a little backwards, as past the newest
        if t[0] - s > rule.max_extrapolation_ns:
            return np.zeros(0), f"{DROP}: frame {(t[0] - s) / 1e6:.0f} ms before the first EE pose"
        if n < 2 or t[1] - t[0] > 2 * rule.tolerance_ns:
            return v[0], ""
        return lerp_pose(v[0], v[1], (s - t[0]) / (t[1] - t[0])), ""
    if i == n - 1:  # after the newest pose: extrapolate a little, or wait for the next pose
        ahead = s - t[i]
        if ahead > rule.max_extrapolation_ns:
            return np.zeros(0), (f"{WAIT}: the newest EE pose is {ahead / 1e6:.0f} ms older than the frame "
                                 f"(extrapolation limit {rule.max_extrapolation_ns / 1e6:.0f} ms)")
        if n < 2 or t[i] - t[i - 1] > 2 * rule.tolerance_ns:
            return v[i], ""
        return lerp_pose(v[i - 1], v[i], (s - t[i - 1]) / (t[i] - t[i - 1])), ""
    before, after = s - t[i], t[i + 1] - s
    if before + after > 2 * rule.tolerance_ns:
        return np.zeros(0), (f"{DROP}: EE pose gap around the frame (poses {before / 1e6:.0f} ms before and "
                             f"{after / 1e6:.0f} ms after; at most 2 x sync_tolerance_s = {2 * rule.tolerance_ns / 1e6:.0f} ms apart)")
    return lerp_pose(v[i], v[i + 1], before / (t[i + 1] - t[i])), ""


def interpolate_gripper(t: np.ndarray, v: np.ndarray, s: int, rule: SyncRule) -> tuple[float, str]:
    """Gripper opening at ``s``: interpolated between values around it, else the latest held up to max_age."""
    n = len(t)
    if n == 0:
        return 0.0, f"{WAIT}: no gripper value yet"
    i = int(np.searchsorted(t, s, side="right")) - 1
    if i < 0:
        if t[0] - s <= rule.max_extrapolation_ns:
            return float(v[0]), ""
        return 0.0, f"{DROP}: frame {(t[0] - s) / 1e6:.0f} ms before the first gripper value"
    if i + 1 < n and t[i + 1] - t[i] <= 2 * rule.tolerance_ns:
        return float(v[i] + (s - t[i]) / (t[i + 1] - t[i]) * (v[i + 1] - v[i])), ""
    if s - t[i] <= rule.max_age_ns:
        return float(v[i]), ""
    return 0.0, (f"{WAIT if i == n - 1 else DROP}: the gripper value before the frame is {(s - t[i]) / 1e6:.0f} ms old "
                 f"(max_age {rule.max_age_ns / 1e6:.0f} ms)")


def _nearest(buf: deque[Frame], s: int) -> Frame | None:
    """The buffered frame whose stamp is nearest ``s`` (stamps increase along the buffer)."""
    if not buf:
        return None
    i = bisect.bisect_left(buf, s, key=lambda f: f.stamp_ns)
    near = [buf[j] for j in (i - 1, i) if 0 <= j < len(buf)]
    return min(near, key=lambda f: abs(f.stamp_ns - s))


@dataclass
class Resolved:
    """An observation's inputs at one reference frame stamp (pixels still undecoded)."""

    stamp_ns: int
    frames: dict[str, Frame]
    pose: np.ndarray  # [x y z qx qy qz qw] at stamp_ns
    gripper: float


@dataclass
class _Input:
    last_stamp: int | None = None
    offsets: deque = field(default_factory=lambda: deque(maxlen=200))  # arrival - stamp, ns


class Synchronizer:
    """Buffers of frames, poses and gripper values, and the rule that pairs them (module docstring)."""

    def __init__(self, cameras: list[str], rule: SyncRule, gripper: bool = True, bounded: bool = True) -> None:
        """``bounded``: live buffers (recent frames, 1024 poses); unbounded for a whole recording."""
        self.cameras, self.rule, self.has_gripper, self.bounded = list(cameras), rule, gripper, bounded
        self.frames: dict[str, deque[Frame]] = {c: deque(maxlen=64 if bounded else None) for c in self.cameras}
        self.poses = _Series(1024 if bounded else None)  # 2 s at 500 Hz: pairing and pose history look back less
        self.grippers = _Series(1024 if bounded else None)
        self.inputs: dict[str, _Input] = {}
        self.rejected: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.last_rejection = ""
        self.last_drop = ""

    def reset(self) -> None:
        """Forget every buffer and stamp (a new episode; counters are kept)."""
        for q in self.frames.values():
            q.clear()
        self.poses.clear()
        self.grippers.clear()
        self.inputs.clear()

    # ---- inputs: each returns a rejection reason, or '' when kept ----------------------------------------

    def _admit(self, name: str, stamp: int, arrival: int) -> tuple[bool, str]:
        """(keep, rejection reason): a stamp too far ahead of its arrival or going backwards is rejected
        and counted; a repeat of the previous stamp is ignored; anything else is kept (its clock offset noted)."""
        inp = self.inputs.setdefault(name, _Input())
        lead = stamp - arrival
        if lead > self.rule.max_lead_ns:
            return False, self.reject(name, f"stamp {lead / 1e9:.3f} s in the future of its arrival (tolerance "
                                      f"{self.rule.max_lead_ns / 1e9:.3f} s); synchronise the clocks (chrony / PTP) or check use_sim_time")
        if inp.last_stamp is not None and stamp < inp.last_stamp:
            return False, self.reject(name, f"stamp goes backwards by {(inp.last_stamp - stamp) / 1e6:.1f} ms (older than the previous message)")
        if inp.last_stamp == stamp:
            return False, ""
        inp.last_stamp = stamp
        inp.offsets.append(arrival - stamp)
        return True, ""

    def reject(self, name: str, reason: str) -> str:
        self.rejected[name] += 1
        self.last_rejection = reason if reason.startswith(name) else f"{name}: {reason}"
        return self.last_rejection

    def add_frame(self, camera: str, frame: Frame, arrival_ns: int) -> str:
        key = camera_key(camera)
        if camera not in self.frames:
            return self.reject(key, f"image from unknown camera {camera!r}; the policy uses {self.cameras}")
        keep, why = self._admit(key, frame.stamp_ns, arrival_ns)
        if keep:
            buf = self.frames[camera]
            buf.append(frame)
            if self.bounded:  # a frame older than max_age (plus the pairing tolerance) can never be used again
                self.prune(frame.stamp_ns - self.rule.max_age_ns - self.rule.tolerance_ns)
        return why

    def add_pose(self, stamp_ns: int, position: Any, quaternion: Any, arrival_ns: int) -> str:
        try:
            p = np.asarray(position, np.float64).reshape(3)
            q = np.asarray(quaternion, np.float64).reshape(4)
        except (TypeError, ValueError):
            return self.reject(POSE, f"expected 3 position and 4 quaternion values, got {np.shape(position)} and {np.shape(quaternion)}")
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            return self.reject(POSE, f"NaN or Inf in the EE pose {p.tolist()} {q.tolist()}")
        if np.any(np.abs(p) > self.rule.position_bound_m):
            return self.reject(POSE, f"EE position {p.tolist()} lies beyond {self.rule.position_bound_m:g} m of the base "
                               "(position_bound_m); check the pose's units and frame")
        norm = float(np.linalg.norm(q))
        if abs(norm - 1.0) > 1e-2:
            return self.reject(POSE, f"quaternion norm {norm:.4f} is not 1; send a unit quaternion (x, y, z, w)")
        keep, why = self._admit(POSE, int(stamp_ns), arrival_ns)
        if keep:
            self.poses.append(int(stamp_ns), np.concatenate([p, q / norm]))
        return why

    def add_gripper(self, stamp_ns: int, value: float, arrival_ns: int) -> str:
        value = float(value)
        if not np.isfinite(value) or not -0.05 <= value <= 1.05:
            return self.reject(GRIPPER, f"gripper opening {value} is not in [0, 1] (0 closed, 1 open)")
        keep, why = self._admit(GRIPPER, int(stamp_ns), arrival_ns)
        if keep:
            self.grippers.append(int(stamp_ns), min(max(value, 0.0), 1.0))
        return why

    def add(self, item: Routed, arrival_ns: int) -> str:
        """Hand a routed message to its buffer; returns the rejection reason, or ''."""
        if item.kind == "image":
            return self.add_frame(item.name, item.value, arrival_ns)
        if item.kind == "pose":
            return self.add_pose(item.stamp_ns, item.value[0], item.value[1], arrival_ns)
        if item.kind == "gripper":
            return self.add_gripper(item.stamp_ns, item.value, arrival_ns) if self.has_gripper else ""
        if item.kind == "reject":
            return self.reject(item.name or POSE, item.reason)
        return ""

    # ---- the rule ------------------------------------------------------------------------------------------

    def resolve(self, stamp_ns: int, final: bool = False, frame: Frame | None = None) -> tuple[Resolved | None, str]:
        """The observation at reference frame ``stamp_ns``: (Resolved, '') or (None, 'wait: ...' / 'drop: ...').

        ``final``: no more messages will come (end of a recording), so a wait becomes a drop.
        """
        rule, s = self.rule, int(stamp_ns)
        ref = self.cameras[0]
        frames = {ref: frame or _nearest(self.frames[ref], s)}
        if frames[ref] is None or frames[ref].stamp_ns != s:  # type: ignore[union-attr]
            return None, f"{DROP}: frame {s} is no longer buffered"
        for cam in self.cameras[1:]:
            buf = self.frames[cam]
            best = _nearest(buf, s)
            if best is None or abs(best.stamp_ns - s) > rule.tolerance_ns:
                newest = buf[-1].stamp_ns if buf else None
                kind = WAIT if newest is None or newest < s + rule.tolerance_ns else DROP
                near = "no frame yet" if best is None else f"nearest frame {(best.stamp_ns - s) / 1e6:+.0f} ms"
                return None, self._final(f"{kind}: camera {cam}: {near} from the {ref} frame (tolerance "
                                         f"{rule.tolerance_ns / 1e6:.0f} ms)", final)
            frames[cam] = best
        pose, why = interpolate_pose(*self.poses.arrays(), s, rule)
        if why:
            return None, self._final(why, final)
        grip = 1.0
        if self.has_gripper:
            grip, why = interpolate_gripper(*self.grippers.arrays(), s, rule)
            if why:
                return None, self._final(why, final)
        return Resolved(s, frames, pose, grip), ""

    @staticmethod
    def _final(reason: str, final: bool) -> str:
        return DROP + reason[len(WAIT):] + " (end of the recording)" if final and reason.startswith(WAIT) else reason

    def count_drop(self, stamp_ns: int, reason: str) -> None:
        key = reason.split(":", 2)[1].strip() if reason.count(":") >= 2 else reason
        self.dropped[key] += 1
        self.last_drop = f"frame {stamp_ns}: {reason[len(DROP) + 2:]}"

    def newest(self, now_ns: int, after_ns: int | None) -> tuple[Resolved | None, str]:
        """The newest observation (stamp > ``after_ns``) that forms now; frames that never can are dropped and counted.

        Returns (None, reason) when none forms: 'wait: ...' while the newest frame waits for its pose.
        """
        ref = self.frames[self.cameras[0]]
        reason = f"{WAIT}: no {self.cameras[0]} frame yet" if not ref else f"{WAIT}: no new {self.cameras[0]} frame"
        first_reason = ""
        for frame in list(reversed(ref)):
            if after_ns is not None and frame.stamp_ns <= after_ns:
                break
            if now_ns - frame.stamp_ns > self.rule.max_age_ns:
                break
            obs, why = self.resolve(frame.stamp_ns)
            if obs is not None:
                return obs, ""
            if why.startswith(DROP):
                self.count_drop(frame.stamp_ns, why)
                ref.remove(frame)
            first_reason = first_reason or why
        return None, first_reason or reason

    def prune(self, before_ns: int) -> None:
        """Forget frames stamped before ``before_ns`` (live: older than the observation just used, less the tolerance)."""
        for buf in self.frames.values():
            while buf and buf[0].stamp_ns < before_ns:
                buf.popleft()

    def ages_ns(self, now_ns: int) -> dict[str, int | None]:
        """Age of the newest stamp of each input at ``now_ns`` (None: nothing yet)."""
        out: dict[str, int | None] = {}
        for cam in self.cameras:
            buf = self.frames[cam]
            out[camera_key(cam)] = now_ns - buf[-1].stamp_ns if buf else None
        out[POSE] = now_ns - self.poses.t[-1] if len(self.poses) else None
        if self.has_gripper:
            out[GRIPPER] = now_ns - self.grippers.t[-1] if len(self.grippers) else None
        return out

    def stale(self, now_ns: int) -> tuple[str, str]:
        """('', '') when every input has arrived and is fresh; else ('waiting' | 'stale', reason)."""
        ages = self.ages_ns(now_ns)
        missing = [k for k, v in ages.items() if v is None]
        if missing:
            return "waiting", f"no message yet on {', '.join(missing)}"
        old = {k: v for k, v in ages.items() if v is not None and v > self.rule.max_age_ns}
        if old:
            text = ", ".join(f"{k} {v / 1e6:.0f} ms" for k, v in old.items())
            return "stale", f"stale input: {text} old (max {self.rule.max_age_ns / 1e6:.0f} ms)"
        return "", ""

    def latest_pose(self) -> tuple[int, np.ndarray] | None:
        """(stamp, [x y z qx qy qz qw]) of the newest valid measured pose."""
        return (int(self.poses.t[-1]), self.poses.v[-1].copy()) if len(self.poses) else None

    def latest_gripper(self) -> float | None:
        return float(self.grippers.v[-1]) if len(self.grippers) else None

    def pose_history(self, stamp_ns: int, dt_ns: int, length: int) -> np.ndarray:
        """(length, 7) poses at stamp - k dt (k = length..1), interpolated; the oldest buffered pose before that."""
        t, v = self.poses.arrays()
        times = stamp_ns - dt_ns * np.arange(length, 0, -1)
        out = []
        for s in times:
            pose, why = interpolate_pose(t, v, int(max(s, t[0])), self.rule)
            out.append(pose if not why else v[int(np.clip(np.searchsorted(t, s, side="right") - 1, 0, len(t) - 1))])
        return np.stack(out)

    def clock_offsets_ms(self) -> dict[str, float]:
        """Median arrival minus stamp per input (ms): clock offset plus exposure and transport delay."""
        return {k: float(np.median(inp.offsets)) / 1e6 for k, inp in self.inputs.items() if inp.offsets}
