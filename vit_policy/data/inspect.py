"""What a rosbag2 recording holds and whether it would extract: ``vit-policy inspect`` and the pre-flight of train / replay.

Two passes over the bag, neither decodes a pixel:

* Statistics (message headers only): per topic the message type, count, rate, gaps (longest silence
  and silences longer than ``data.gap_split_s``), header stamp minus bag record time (negative: stamped
  before it was recorded, as cameras are stamped at exposure), stamps going backwards and stamps in
  the future of their record time; the joint names of JointState topics and the edges of TF topics
  (parent -> child as their headers name them; no lookup).
* The verdict: :func:`vit_policy.data.bags.dry_run`, the extraction's own input path (InputRouter,
  Synchronizer and the timing rule of vit_policy/inputs.py) without the pixels: frames paired,
  segments (episodes), per camera the frames at which the EE pose can be had (pose coverage), dropped
  frames and rejected messages with their reasons, or the extraction's exact BagError.

From those numbers the fixes: the setting that would make the frames usable (a topic,
``data.sync_tolerance_s``, ``data.max_extrapolation_s``, ``data.max_stamp_lead_s``, ...) where the
numbers tell. Only the pixels can still differ: the extraction drops a frame that cannot be decoded,
and the last samples of an episode whose first label step lies past its pose stream, so it may yield a
few frames fewer than are paired here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from vit_policy import messages as M
from vit_policy.config import apply_overrides, from_dict, read_yaml
from vit_policy.data.configuration import DataConfig
from vit_policy.data.bags import (
    FLOAT64_TYPE,
    IMAGE_TYPES,
    JOINT_STATE_TYPE,
    POSE_TYPE,
    TF_TYPE,
    BagError,
    bag_topics,
    dry_run,
    iter_bag_messages,
    read_inputs,
)
from vit_policy.inputs import GRIPPER, POSE, camera_key

NS = 1_000_000_000
MAX_GAPS = 10  # gaps listed per topic (the count covers all)
FIX_LOSS_SHARE = 0.05  # a bag that extracts gets fixes too when it loses more than this share of its frames


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def load_data_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DataConfig:
    """The ``data`` section of a train / replay YAML, or a data YAML, or the DataConfig defaults; then overrides.

    Overrides are ``data.key=value`` (as in replay's ``--set``) or ``key=value``.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        doc = read_yaml(path)
        raw = doc["data"] if isinstance(doc.get("data"), dict) else doc
        raw = dict(raw or {})
    raw = apply_overrides(raw, [o[len("data."):] if o.strip().startswith("data.") else o for o in overrides or []])
    return from_dict(DataConfig, raw, "data")


def requirements(data: DataConfig) -> list[tuple[str, str, tuple[str, ...]]]:
    """(topic, config key, accepted types) of every topic the extraction reads (as ``bags.check_topics``)."""
    need = [(t, f"data.cameras.{c}", IMAGE_TYPES) for c, t in data.cameras.items()]
    need.append((data.pose_topic, "data.pose_topic", (POSE_TYPE,)) if data.pose_topic else ("/tf", "data.pose_topic", (TF_TYPE,)))
    need.append((data.gripper.topic, "data.gripper.topic", (JOINT_STATE_TYPE,) if data.gripper.kind == "joint_state" else (FLOAT64_TYPE,)))
    if data.command_topic:
        need.append((data.command_topic, "data.command_topic", (POSE_TYPE,)))
    if data.command_gripper_topic:
        need.append((data.command_gripper_topic, "data.command_gripper_topic", (FLOAT64_TYPE,)))
    return need


def _input_topics(data: DataConfig) -> dict[str, str]:
    """Topic -> the input name the synchroniser counts its rejections under (vit_policy.inputs)."""
    out = {t: camera_key(c) for c, t in data.cameras.items()}
    out[data.pose_topic or "/tf"] = POSE
    if data.gripper.topic not in out:
        out[data.gripper.topic] = GRIPPER
    return out


# --------------------------------------------------------------------------------------------------
# Statistics pass (headers only)
# --------------------------------------------------------------------------------------------------


class _Topic:
    def __init__(self, msgtype: str) -> None:
        self.msgtype = msgtype
        self.record: list[int] = []
        self.lead: list[int] = []  # header stamp - record time, ns (set stamps only)
        self.unset = 0  # header stamps of 0 (never set)
        self.backwards = 0
        self.future = 0
        self.last_stamp: dict[str, int] = {}  # per child frame on TF topics, else one key
        self.joints: dict[str, None] = {}  # every joint name seen, in order

    def stamp(self, key: str, stamp: int, t: int) -> None:
        if stamp == 0:
            self.unset += 1
            return
        self.lead.append(stamp - t)
        if stamp > t:
            self.future += 1
        prev = self.last_stamp.get(key)
        if prev is not None and stamp < prev:
            self.backwards += 1
        self.last_stamp[key] = stamp


def _headers(msg: Any) -> list[tuple[str, Any]]:
    """(key, header) of a stamped message: one per transform of a TFMessage (key: child frame), else its header."""
    transforms = getattr(msg, "transforms", None)
    if transforms is not None:
        return [(str(t.child_frame_id), t.header) for t in transforms]
    header = getattr(msg, "header", None)
    return [("", header)] if header is not None and hasattr(header, "stamp") else []


def _ms(x: float) -> float:
    return round(float(x) / 1e6, 3)


def _topic_report(tp: _Topic, start: int, gap_ns: int) -> dict[str, Any]:
    t = np.asarray(tp.record, np.int64)
    d = np.diff(t)
    span = int(t[-1] - t[0]) if len(t) else 0
    big = np.flatnonzero(d > gap_ns)
    out: dict[str, Any] = {
        "type": tp.msgtype,
        "count": int(len(t)),
        "rate_hz": round((len(t) - 1) * NS / span, 4) if len(t) > 1 and span > 0 else None,
        "first_s": round((int(t[0]) - start) / NS, 6) if len(t) else None,
        "last_s": round((int(t[-1]) - start) / NS, 6) if len(t) else None,
        "longest_gap_s": round(int(d.max()) / NS, 6) if len(d) else None,
        "gaps_over_split": int(len(big)),
        "gaps": [{"at_s": round((int(t[i]) - start) / NS, 6), "length_s": round(int(d[i]) / NS, 6)} for i in big[:MAX_GAPS]],
        "stamped": bool(tp.lead or tp.unset),
        "stamp_minus_record_ms": None,
        "backwards": tp.backwards,
        "future": tp.future,
        "unset_stamps": tp.unset,
    }
    if tp.lead:
        lead = np.asarray(tp.lead, np.float64)
        out["stamp_minus_record_ms"] = {
            "median": _ms(np.median(lead)), "p5": _ms(np.percentile(lead, 5)), "p95": _ms(np.percentile(lead, 95)),
            "min": _ms(lead.min()), "max": _ms(lead.max()),
        }
    if tp.joints:
        out["joints"] = list(tp.joints)
    return out


def _statistics(path: Path, data: DataConfig, have: dict[str, str]) -> dict[str, Any]:
    """One pass over every message's header: per-topic statistics, joint names, TF edges."""
    topics = {t: _Topic(m) for t, m in have.items()}
    tf_edges: set[tuple[str, str]] = set()
    first = last = None
    for topic, t, msg in iter_bag_messages(path, have):
        first = t if first is None else first
        last = t
        tp = topics[topic]
        tp.record.append(t)
        headers = _headers(msg)
        for key, header in headers:
            try:
                tp.stamp(key, M.stamp_to_ns(header.stamp), t)
            except M.MessageError:
                pass
        if have[topic] == TF_TYPE:
            tf_edges.update((str(h.frame_id).lstrip("/"), key.lstrip("/")) for key, h in headers)
        elif have[topic] == JOINT_STATE_TYPE:
            tp.joints.update((str(n), None) for n in getattr(msg, "name", []))
    start = first if first is not None else 0
    gap_ns = int(data.gap_split_s * NS)
    return {
        "start_ns": start, "end_ns": last if last is not None else 0,
        "duration_s": round(((last or 0) - start) / NS, 6), "messages": sum(len(tp.record) for tp in topics.values()),
        "topics": {t: _topic_report(tp, start, gap_ns) for t, tp in sorted(topics.items())},
        "tf_edges": sorted(f"{a}->{b}" for a, b in tf_edges),
    }


# --------------------------------------------------------------------------------------------------
# Verdict: the extraction's input path, without pixels
# --------------------------------------------------------------------------------------------------


def _verdict(path: Path, data: DataConfig) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(dry_run's report or None, the verdict): episodes ~ segments, frames = frames paired, or the BagError."""
    try:
        dr = dry_run(path, data)
    except (BagError, FileNotFoundError) as exc:
        return None, {"ok": False, "episodes": 0, "frames": 0, "reference_frames": None, "reason": str(exc), "fixes": []}
    return dr, {"ok": True, "episodes": dr["segments"], "frames": dr["paired"], "reference_frames": dr["frames"], "reason": None,
                "fixes": []}


def _losses_of_failure(path: Path, data: DataConfig) -> dict[str, Any]:
    """Dropped frames and rejected messages of a bag dry_run refused (it raises before it reports them): the same
    pass through ``read_inputs``, unchecked. Empty when the bag cannot be read through it at all."""
    try:
        p = read_inputs(path, data)
    except (BagError, FileNotFoundError):
        return {"frames": 0, "dropped": {}, "rejected": {}, "last_drop": "", "last_rejection": ""}
    p.pair()
    s = p.sync
    return {"frames": len(p.ref_frames), "dropped": dict(s.dropped), "rejected": dict(s.rejected), "last_drop": s.last_drop,
            "last_rejection": s.last_rejection}


# the timing rule's drop reasons (vit_policy.inputs) with the number that tells, ms: (kind, pattern)
_DROP_KINDS = (
    ("EE pose gap", re.compile(r"EE pose gap around the frame \(poses (\d+) ms before and (\d+) ms after")),
    ("before the first EE pose", re.compile(r"(\d+) ms before the first EE pose")),
    ("after the last EE pose", re.compile(r"newest EE pose is (\d+) ms older than the frame")),
    ("gripper value too old", re.compile(r"gripper value before the frame is (\d+) ms old")),
    ("before the first gripper value", re.compile(r"(\d+) ms before the first gripper value")),
)
_EDGES = ("before the first EE pose", "after the last EE pose", "before the first gripper value")


def _drops(dropped: dict[str, int], data: DataConfig) -> tuple[dict[str, int], dict[str, list[tuple[int, int]]]]:
    """Dropped frames per reason, most frequent first (a label with the range of its number and the limit it broke),
    and per kind its (ms, count) pairs. The synchroniser's keys carry the numbers (or a camera: 'camera wrist')."""
    counts: Counter[str] = Counter()
    values: dict[str, list[tuple[int, int]]] = {}
    for key, n in dropped.items():
        for kind, pattern in _DROP_KINDS:
            m = pattern.search(key)
            if m:
                counts[kind] += n
                values.setdefault(kind, []).append((sum(int(g) for g in m.groups()), n))
                break
        else:
            counts[re.sub(r"^drop: ", "", key)] += n
    tol, ext, age = (round(x * 1e3) for x in (data.sync_tolerance_s, data.max_extrapolation_s, data.max_age_s))
    ref = next(iter(data.cameras))
    labels = {}
    for kind, n in counts.most_common():
        rng = _range(values.get(kind, []))
        label = {
            "EE pose gap": f"EE pose gap: the poses around the frame {rng} ms apart (at most 2 x sync_tolerance_s = {2 * tol} ms)",
            "before the first EE pose": f"{rng} ms before the first EE pose (max_extrapolation_s {ext} ms)",
            "after the last EE pose": f"{rng} ms after the last EE pose (max_extrapolation_s {ext} ms)",
            "gripper value too old": f"gripper value {rng} ms old (max_age_s {age} ms)",
            "before the first gripper value": f"{rng} ms before the first gripper value (max_extrapolation_s {ext} ms)",
        }.get(kind, f"{kind}: no frame within sync_tolerance_s = {tol} ms of the {ref} frame" if kind.startswith("camera ") else kind)
        labels[label] = n
    return labels, values


def _range(pairs: list[tuple[int, int]]) -> str:
    lo, hi = min(pairs, default=(0, 0))[0], max(pairs, default=(0, 0))[0]
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _quantile(pairs: list[tuple[int, int]], q: float) -> int:
    """The value below or at which a share ``q`` of the counted items lie."""
    pairs = sorted(pairs)
    total, seen = sum(n for _, n in pairs), 0
    for value, n in pairs:
        seen += n
        if seen >= q * total:
            return value
    return pairs[-1][0]


def _fixes(data: DataConfig, have: dict[str, str], stats: dict[str, Any] | None, losses: dict[str, Any], reason: str) -> list[str]:
    """Settings that fix the extraction's failure or its losses, where the topics, statistics and drops tell."""
    fixes: list[str] = []
    for topic, key, types in requirements(data):
        if have.get(topic) in types:
            continue
        what = f"has no topic {topic!r}" if topic not in have else f"records {topic!r} as {have[topic]}"
        if key == "data.pose_topic" and not data.pose_topic:  # TF pose: a PoseStamped topic would do too
            types, what = (POSE_TYPE,), f"{what} (data.pose_topic is null: the pose comes from TF)"
        candidates = sorted(t for t, m in have.items() if m in types)
        if candidates:
            fixes.append(f"{key}: the bag {what}; its {' / '.join(types)} topics: {', '.join(candidates)} "
                         f"(e.g. set {key}={candidates[0]})")
        elif key == "data.pose_topic" and data.pose_topic and have.get("/tf") == TF_TYPE:
            fixes.append(f"data.pose_topic: the bag {what} and no PoseStamped topic, but it has /tf: set data.pose_topic=null "
                         f"(TF {data.tf_base_frame} -> {data.tf_ee_frame})")
        else:
            fixes.append(f"{key}: the bag {what} and no topic of type {' / '.join(types)}: it was not recorded")
    if fixes or stats is None:
        return fixes
    tops = stats["topics"]
    for topic, key, _ in requirements(data):
        if tops.get(topic, {}).get("count") == 0:
            fixes.append(f"{key}: {topic!r} is in the bag but holds no message")
    if data.gripper.kind == "joint_state" and data.gripper.topic in tops:
        joints = tops[data.gripper.topic].get("joints") or []
        absent = [j for j in data.gripper.joints if j not in joints]
        if joints and absent:
            fixes.append(f"data.gripper.joints: {absent} not in {data.gripper.topic}; its joints: {joints}")
    if not data.pose_topic and "no EE pose" in reason and stats["tf_edges"]:
        fixes.append(f"data.tf_base_frame / data.tf_ee_frame: no TF chain {data.tf_base_frame} -> {data.tf_ee_frame}; "
                     f"the bag's TF edges: {', '.join(stats['tf_edges'])}")
    text = " ".join((reason, losses["last_rejection"], losses["last_drop"]))
    m = re.search(r"header\.frame_id '([^']*)' is not the base frame '([^']*)'", text)
    if m:
        fixes.append(f"data.tf_base_frame: the EE pose is published in {m[1]!r}, not {m[2]!r}: set data.tf_base_frame={m[1]} "
                     f"(if that is the robot's base) or record the pose in {m[2]!r}")
    rejected = losses["rejected"]
    for topic, name in _input_topics(data).items():
        rep = tops.get(topic)
        if not rep or not (rejected.get(name) or "no EE pose" in reason and name == POSE):
            continue
        lead = (rep["stamp_minus_record_ms"] or {}).get("max")
        if lead is not None and lead > data.max_stamp_lead_s * 1e3:
            fixes.append(f"data.max_stamp_lead_s: {topic} is stamped up to {lead:.0f} ms after it was recorded (limit "
                         f"{data.max_stamp_lead_s * 1e3:.0f} ms; {rejected.get(name, 0)} {name} message(s) rejected): synchronise "
                         f"the clocks (chrony / PTP), or set data.max_stamp_lead_s={math.ceil(lead + 1) / 1e3:g}")
        if rep["backwards"]:
            fixes.append(f"{topic}: {rep['backwards']} header stamp(s) go backwards; the synchroniser rejects them and no setting "
                         "accepts them: the publisher's clock stepped (use_sim_time?) or two publishers share the topic")
    fixes += _drop_fixes(data, tops, losses)
    return fixes


def _drop_fixes(data: DataConfig, tops: dict[str, Any], losses: dict[str, Any]) -> list[str]:
    """Settings of the timing rule that would pair the dropped frames, from the numbers in their reasons."""
    out: list[str] = []
    labels, values = _drops(losses["dropped"], data)
    tol_ms = data.sync_tolerance_s * 1e3
    ref = next(iter(data.cameras))

    def max_age(tol_s: float) -> str:
        return f" and data.max_age_s={math.ceil(2 * tol_s * 100) / 100:g} (it must stay above the tolerance)" if tol_s >= data.max_age_s else ""

    gaps = [(g, n) for g, n in values.get("EE pose gap", []) if g < data.gap_split_s * 1e3]  # longer: a pause, not a setting
    if gaps:
        g = _quantile(gaps, 0.95)
        tol = math.ceil((g + 1) / 2) / 1e3  # the printed ms are rounded: +1 ms covers the exact gap
        n, covered = sum(k for _, k in gaps), sum(k for x, k in gaps if x <= g)
        hz = tops.get(data.pose_topic, {}).get("rate_hz") if data.pose_topic else None
        slow = hz and 0 < 2 * tol_ms < 1e3 / hz  # the pose's own period is longer than the interpolation window
        out.append(f"data.sync_tolerance_s: {n} frame(s) dropped in EE pose gaps of {_range(gaps)} ms (poses at most "
                   f"2 x sync_tolerance_s = {2 * tol_ms:.0f} ms apart are interpolated); set data.sync_tolerance_s={tol:g} to "
                   f"interpolate across gaps up to {g} ms ({covered} of them){max_age(tol)}"
                   + (f", or record the EE pose faster (it is at {hz:.1f} Hz)" if slow else ""))
    edges = [(ms, n) for kind in _EDGES for ms, n in values.get(kind, [])]
    near = [(ms, n) for ms, n in edges if ms <= tol_ms]  # within a tolerance of the stream's ends: extrapolation reaches them
    far = [(ms, n) for ms, n in edges if ms > tol_ms]
    if near:
        ext = (max(near)[0] + 1) / 1e3
        out.append(f"data.max_extrapolation_s: {sum(n for _, n in near)} frame(s) lie just outside the EE pose / gripper stream "
                   f"(at most {max(near)[0]} ms beyond its ends; max_extrapolation_s = {data.max_extrapolation_s * 1e3:.0f} ms): set "
                   f"data.max_extrapolation_s={ext:g} to extrapolate to them")
    frames = losses.get("frames") or 0
    if far and sum(n for _, n in far) * 2 >= frames and max(far)[0] > data.gap_split_s * 1e3:
        pose_lead = (tops.get(data.pose_topic or "/tf", {}).get("stamp_minus_record_ms") or {}).get("median")
        cam_lead = (tops.get(data.cameras[ref], {}).get("stamp_minus_record_ms") or {}).get("median")
        leads = (f"; {ref} is stamped {cam_lead:+.0f} ms from its record time, the EE pose {pose_lead:+.0f} ms"
                 if pose_lead is not None and cam_lead is not None else "")
        out.append(f"{sum(n for _, n in far)} of {frames} {ref} frames lie up to {max(far)[0] / 1e3:.1f} s outside the EE pose stream"
                   f"{leads}: check that the cameras and the pose are stamped by one clock (chrony / PTP, use_sim_time)")
    old = values.get("gripper value too old", [])
    if old:
        hi = max(old)[0]
        hz = tops.get(data.gripper.topic, {}).get("rate_hz")
        out.append(f"data.max_age_s: {sum(n for _, n in old)} frame(s) have a gripper value up to {hi} ms old (a value is held at most "
                   f"max_age_s = {data.max_age_s * 1e3:.0f} ms); set data.max_age_s={math.ceil(hi + 1) / 1e3:g}"
                   + (f", or record the gripper faster (it is at {hz:.1f} Hz)" if hz else ""))
    for cam, topic in list(data.cameras.items())[1:]:
        n = losses["dropped"].get(f"camera {cam}", 0)
        if not n:
            continue
        need = []
        m = re.search(rf"camera {re.escape(cam)}: nearest frame ([-+]\d+) ms", losses["last_drop"])
        if m:
            need.append(abs(int(m[1])))
        hz = tops.get(topic, {}).get("rate_hz")
        if hz:
            need.append(1e3 / hz / 2)  # half its frame period: some frame always lies that close
        if need and max(need) >= tol_ms:
            tol = math.ceil(max(need) + 1) / 1e3
            out.append(f"data.sync_tolerance_s: {n} {ref} frame(s) have no {cam} frame within sync_tolerance_s = {tol_ms:.0f} ms"
                       + (f" ({cam} at {hz:.1f} Hz)" if hz else "") + (f", the last one nearest {m[1]} ms" if m else "")
                       + f"; set data.sync_tolerance_s={tol:g}{max_age(tol)}")
    return out


def _warnings(stats: dict[str, Any], coverage: dict[str, Any], losses: dict[str, Any]) -> list[str]:
    out = []
    for topic, rep in stats["topics"].items():
        if rep["backwards"]:
            out.append(f"{topic}: {rep['backwards']} header stamp(s) go backwards")
        if rep["future"]:
            out.append(f"{topic}: {rep['future']} header stamp(s) lie after their record time")
        if rep["unset_stamps"]:
            out.append(f"{topic}: {rep['unset_stamps']} header stamp(s) are 0 (never set)")
    for cam, cov in coverage.items():
        if cov["frames"] and cov["with_pose"] < cov["frames"]:
            out.append(f"camera {cam}: {cov['frames'] - cov['with_pose']} of {cov['frames']} frames get no EE pose by the timing rule")
    if losses["rejected"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(losses["rejected"].items()))
        out.append(f"rejected messages: {counts} (last: {losses['last_rejection']})")
    return out


def inspect_bag(path: str | Path, data: DataConfig) -> dict[str, Any]:
    """The report of one bag (JSON-serialisable): statistics, the dry run's coverage and losses, the verdict and fixes."""
    path = Path(path)
    report: dict[str, Any] = {"path": str(path), "ok": False, "start_ns": None, "end_ns": None, "duration_s": None, "messages": 0,
                              "topics": {}, "tf_edges": [],
                              "pose_source": data.pose_topic or f"TF {data.tf_base_frame} -> {data.tf_ee_frame}",
                              "sync_tolerance_s": data.sync_tolerance_s, "max_extrapolation_s": data.max_extrapolation_s,
                              "gap_split_s": data.gap_split_s, "coverage": {}, "dropped": {}, "rejected": {}, "last_drop": "",
                              "last_rejection": "", "warnings": [], "extract": None}
    try:
        have = bag_topics(path)
        stats = _statistics(path, data, have)
    except (BagError, FileNotFoundError) as exc:
        report["extract"] = {"ok": False, "episodes": 0, "frames": 0, "reference_frames": None, "reason": str(exc), "fixes": []}
        return report
    report.update({k: stats[k] for k in ("start_ns", "end_ns", "duration_s", "messages", "topics", "tf_edges")})
    roles: dict[str, list[str]] = {}
    for topic, key, _ in requirements(data):
        roles.setdefault(topic, []).append(key)
    for topic, rep in report["topics"].items():
        rep["role"] = ", ".join(roles.get(topic, [])) or None
    dr, verdict = _verdict(path, data)
    losses = dr if dr is not None else _losses_of_failure(path, data)
    if dr is not None:
        report["coverage"] = {c: {"topic": data.cameras[c], **v} for c, v in dr["coverage"].items()}
    report.update(dropped=_drops(losses["dropped"], data)[0], rejected=dict(losses["rejected"]), last_drop=losses["last_drop"],
                  last_rejection=losses["last_rejection"])
    report["warnings"] = _warnings(stats, report["coverage"], losses)
    frames = losses["frames"]
    if not verdict["ok"] or losses["rejected"] or frames and (frames - verdict["frames"]) > FIX_LOSS_SHARE * frames:
        verdict["fixes"] = _fixes(data, have, stats, losses, verdict["reason"] or "")
    report["extract"], report["ok"] = verdict, verdict["ok"]
    return report


def inspect_bags(paths: Iterable[str | Path], data: DataConfig) -> dict[str, Any]:
    """The JSON document of ``vit-policy inspect``: the data config and one report per bag."""
    bags = [inspect_bag(p, data) for p in paths]
    return {"ok": all(b["ok"] for b in bags), "data": dataclasses.asdict(data), "bags": bags}


def check_bags(paths: Iterable[str | Path], data: DataConfig) -> None:
    """Pre-flight of train / replay: every bag would extract, else one BagError with each failing bag's reason and fix.

    The dry run comes first (a wrong topic fails at once); only a failing bag gets the statistics pass.
    """
    problems = []
    for p in map(Path, paths):
        _, verdict = _verdict(p, data)
        if verdict["ok"]:
            continue
        try:
            have = bag_topics(p)
            fixes = _fixes(data, have, _statistics(p, data, have), _losses_of_failure(p, data), verdict["reason"])
        except (BagError, FileNotFoundError):
            fixes = []
        problems.append(verdict["reason"] + "".join(f"; fix: {f}" for f in fixes))
    if problems:
        raise BagError(f"{len(problems)} bag(s) would not extract (vit-policy inspect BAG... --data-config YAML reports each): "
                       + " | ".join(problems))


# --------------------------------------------------------------------------------------------------
# Human output
# --------------------------------------------------------------------------------------------------


def _num(x: Any, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def format_report(report: dict[str, Any]) -> str:
    """A compact table of one bag's report."""
    ex = report["extract"] or {}
    verdict = (f"extracts: {ex['episodes']} episode(s), {ex['frames']} of {ex['reference_frames']} frames paired" if ex.get("ok")
               else "WOULD NOT EXTRACT")
    lines = [f"bag {report['path']}  ({_num(report['duration_s'], '.2f')} s, {report['messages']} messages)  {verdict}"]
    if report["topics"]:
        head = ["topic", "type", "role", "count", "Hz", "max gap s", f"gaps>{report['gap_split_s']:g}s",
                "stamp-rec ms med/p5/p95", "back", "future"]
        rows = []
        for topic, r in report["topics"].items():
            lead = r["stamp_minus_record_ms"]
            rows.append([topic, r["type"].replace("/msg/", "/"), r.get("role") or "", str(r["count"]), _num(r["rate_hz"], ".2f"),
                         _num(r["longest_gap_s"], ".3f"), str(r["gaps_over_split"]),
                         f"{lead['median']:.1f}/{lead['p5']:.1f}/{lead['p95']:.1f}" if lead else "-",
                         str(r["backwards"]) if r["stamped"] else "-", str(r["future"]) if r["stamped"] else "-"])
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
        for row in [head, *rows]:
            lines.append("  " + "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    if report["tf_edges"]:
        lines.append(f"  TF edges: {', '.join(report['tf_edges'])}")
    if report["coverage"]:
        cov = ", ".join(f"{c} {'-' if v['fraction'] is None else format(100 * v['fraction'], '.1f') + '%'} ({v['with_pose']}/{v['frames']})"
                        for c, v in report["coverage"].items())
        lines.append(f"  pose coverage ({report['pose_source']}; interpolated across <= {2e3 * report['sync_tolerance_s']:.0f} ms, "
                     f"extrapolated <= {1e3 * report['max_extrapolation_s']:.0f} ms): {cov}")
    if report["dropped"]:
        lines.append(f"  dropped frames ({sum(report['dropped'].values())}):")
        lines += [f"    {n:>6}  {why}" for why, n in report["dropped"].items()]
    lines += [f"  warning: {w}" for w in report["warnings"]]
    if not ex.get("ok"):
        lines.append(f"  reason: {ex.get('reason')}")
    lines += [f"  fix: {f}" for f in ex.get("fixes", [])]
    return "\n".join(lines)


def format_reports(doc: dict[str, Any]) -> str:
    n_ok = sum(b["ok"] for b in doc["bags"])
    return "\n\n".join([*map(format_report, doc["bags"]), f"{n_ok} of {len(doc['bags'])} bag(s) would extract"])
