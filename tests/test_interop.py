"""The DDS backend and a plain rclpy node on Fast DDS (ROS 2's default middleware) exchange every message type.

A plain rclpy peer runs in its own process (``python -c PEER``, no sourced ROS environment, RMW
``rmw_fastrtps_cpp``) on a fresh ROS_DOMAIN_ID. For each message type the node uses it publishes a
sample to a ``DDSTransport`` in this process and subscribes to the same sample published by it; both
sides turn what they received into plain values (every field, images byte for byte) and compare them
with the sample. The QoS is the one the node uses for the type (images best effort, /tf_static
latched, the rest reliable). ``tf2_msgs/TFMessage`` is included when the peer can import ``tf2_msgs``
(there is no wheel of it, so usually it is not; the test says so).

Fast DDS announces XTypes type information that Cyclone rejects for types with sequences; the backend
creates its domains with ``Domain/Compatibility/IgnoreTypeInformation = 1.15`` (Fast DDS's vendor id).
The second test shows a user's ``CYCLONEDDS_URI`` overrides that list: with ``1.1`` instead, Image no
longer matches while Bool still does (the failure the setting fixes).

Needs rclpy (the ``ros-rclpy[fastrtps]`` and ``ros-*-msgs`` wheels); skipped, saying so, without it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("cyclonedds", reason="the DDS backend needs the 'dds' extra: pip install -e .[dds]")
if importlib.util.find_spec("rclpy") is None:
    pytest.skip("rclpy is not importable: install the ROS 2 wheels (ros-rclpy[fastrtps], ros-sensor-msgs, ros-geometry-msgs, "
                "ros-std-msgs, ros-trajectory-msgs, ros-diagnostic-msgs, ros-rosgraph-msgs) or source a ROS 2 install",
                allow_module_level=True)

from rosbags.interfaces import Nodetype  # noqa: E402

from ros_nodes.transport.dds_backend import ROS_INTEROP_CONFIG, DDSTransport, domain_config, shared_types  # noqa: E402

pytestmark = pytest.mark.dds

DDS = shared_types()
TIMEOUT_S = 25.0

# --------------------------------------------------------------------------------------------------
# The rclpy peer: fills messages from plain values, reports what it receives as plain values (JSON lines)
# --------------------------------------------------------------------------------------------------

PEER = r'''
import array, base64, importlib, json, os, sys, threading, time
spec = json.load(open(sys.argv[1]))
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy
from rclpy.utilities import get_rmw_implementation_identifier

def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n"); sys.stdout.flush()

def cls_of(typename):
    pkg, _, name = typename.split("/")
    return getattr(importlib.import_module(pkg + ".msg"), name)

def elem_cls(slot):
    t = getattr(slot, "value_type", slot)
    return getattr(importlib.import_module(".".join(t.namespaces)), t.name) if hasattr(t, "namespaces") else None

def fill(msg, plain):
    for (name, typ), slot in zip(msg.get_fields_and_field_types().items(), msg.SLOT_TYPES):
        value = plain[name]
        if typ == "octet":
            value = bytes([value])
        elif isinstance(value, dict) and "__bytes__" in value:
            value = base64.b64decode(value["__bytes__"])
        elif isinstance(value, dict):
            fill(getattr(msg, name), value)
            continue
        elif isinstance(value, list) and elem_cls(slot) is not None:
            value = [fill(elem_cls(slot)(), v) for v in value]
        setattr(msg, name, value)
    return msg

def plain(value, typ=""):
    if hasattr(value, "get_fields_and_field_types"):
        return {n: plain(getattr(value, n), t) for n, t in value.get_fields_and_field_types().items()}
    if typ == "octet":
        return value[0]
    if typ in ("sequence<uint8>", "sequence<octet>"):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, (list, tuple, array.array)) or type(value).__module__ == "numpy":
        return [plain(v) for v in value]
    return value

QOS = {
    "sensor_data": QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST),
    "reliable": QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST),
    "latched": QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL),
}
rclpy.init()
node = rclpy.create_node("interop_peer")
out(rmw=get_rmw_implementation_identifier())
pubs, reported, missing = [], set(), {}
for typename, case in spec["cases"].items():
    try:
        cls = cls_of(typename)
    except ImportError as e:
        missing[typename] = str(e)
        continue
    pubs.append((node.create_publisher(cls, case["to_dds"], QOS[case["qos"]]), fill(cls(), case["sample"])))
    def on_msg(msg, typename=typename):
        if typename not in reported:
            reported.add(typename)
            out(received=typename, msg=plain(msg))
    node.create_subscription(cls, case["to_ros"], on_msg, QOS[case["qos"]])
out(missing=missing)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
end = time.monotonic() + spec["duration_s"]
next_pub = 0.0
while not stop.is_set() and time.monotonic() < end:
    if time.monotonic() >= next_pub:
        for pub, msg in pubs:
            pub.publish(msg)
        next_pub = time.monotonic() + 0.2
    rclpy.spin_once(node, timeout_sec=0.05)
node.destroy_node()
rclpy.shutdown()
'''


class Peer:
    """The rclpy peer process and the JSON lines it prints (rmw, missing types, received messages)."""

    def __init__(self, tmp_path, domain: int, cases: dict[str, dict[str, Any]], duration_s: float = TIMEOUT_S + 10) -> None:
        spec = tmp_path / f"peer_{domain}.json"
        spec.write_text(json.dumps({"cases": cases, "duration_s": duration_s}))
        # a plain environment: no sourced ROS, Fast DDS (the default of the rclpy wheels) named explicitly
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ROS_", "RMW_", "AMENT_", "CYCLONEDDS"))}
        env.update(ROS_DOMAIN_ID=str(domain), RMW_IMPLEMENTATION="rmw_fastrtps_cpp", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-c", PEER, str(spec)], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[dict[str, Any]] = []
        self.received: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            item = json.loads(line)
            with self.lock:
                self.lines.append(item)
                if "received" in item:
                    self.received[item["received"]] = item["msg"]

    def info(self, key: str) -> Any:
        with self.lock:
            return next((x[key] for x in self.lines if key in x), None)

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the peer's signal to finish
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=5)
        return self.proc.stderr.read()


# --------------------------------------------------------------------------------------------------
# Samples (every field set, away from its default) and plain values of the DDS side
# --------------------------------------------------------------------------------------------------


def as_bytes(data: bytes) -> dict[str, str]:
    return {"__bytes__": base64.b64encode(data).decode()}


def header(frame: str, k: int = 0) -> dict[str, Any]:
    return {"stamp": {"sec": 1_700_000_123 + k, "nanosec": 456_789_012 + k}, "frame_id": frame}


def vec(x: float, y: float, z: float) -> dict[str, float]:
    return {"x": x, "y": y, "z": z}


def quat(x: float, y: float, z: float, w: float) -> dict[str, float]:
    return {"x": x, "y": y, "z": z, "w": w}


def samples() -> dict[str, tuple[str, dict[str, Any]]]:
    """``typename -> (QoS kind the node uses, sample)``; the image is 240 x 321 bgr8 (231 kB: fragmented)."""
    rng = np.random.default_rng(20)
    height, width = 240, 321
    transform = {"translation": vec(0.4, -0.125, 0.3), "rotation": quat(0.5, -0.5, 0.5, 0.5)}
    twist = {"linear": vec(0.05, -0.0625, 0.25), "angular": vec(-0.5, 0.125, 1.0)}
    return {
        "sensor_msgs/msg/Image": ("sensor_data", {
            "header": header("camera_front_optical_frame"), "height": height, "width": width, "encoding": "bgr8",
            "is_bigendian": 1, "step": width * 3, "data": as_bytes(rng.integers(0, 256, height * width * 3, dtype=np.uint8).tobytes())}),
        "sensor_msgs/msg/CompressedImage": ("sensor_data", {
            "header": header("camera_wrist", 1), "format": "jpeg", "data": as_bytes(rng.integers(0, 256, 5003, dtype=np.uint8).tobytes())}),
        "geometry_msgs/msg/PoseStamped": ("reliable", {"header": header("base_link", 2), "pose": {
            "position": vec(0.4, -0.125, 0.3), "orientation": quat(0.5, -0.5, 0.5, 0.5)}}),
        "sensor_msgs/msg/JointState": ("reliable", {
            "header": header("", 3), "name": ["panda_joint1", "panda_finger_joint1", "panda_finger_joint2"],
            "position": [0.5, 0.04, 0.0390625], "velocity": [-1.25, 0.0, 0.5], "effort": []}),
        "tf2_msgs/msg/TFMessage": ("latched", {"transforms": [
            {"header": header("base_link", 4), "child_frame_id": "arm_base", "transform": transform},
            {"header": header("arm_base", 5), "child_frame_id": "ee_link_é", "transform": {
                "translation": vec(0.0, 0.0, 0.107), "rotation": quat(0.0, 0.0, 0.0, 1.0)}}]}),
        "geometry_msgs/msg/TwistStamped": ("reliable", {"header": header("base_link", 6), "twist": twist}),
        "std_msgs/msg/Float64": ("reliable", {"data": -1234.5678}),
        "std_msgs/msg/Bool": ("reliable", {"data": True}),
        "std_msgs/msg/Empty": ("reliable", {}),
        "trajectory_msgs/msg/MultiDOFJointTrajectory": ("reliable", {
            "header": header("base_link", 7), "joint_names": ["ee_link"], "points": [
                {"transforms": [transform], "velocities": [twist], "accelerations": [],
                 "time_from_start": {"sec": 0, "nanosec": 100_000_000}},
                {"transforms": [{"translation": vec(0.41, -0.12, 0.29), "rotation": quat(0.0, 0.0, 0.0, 1.0)}],
                 "velocities": [], "accelerations": [twist], "time_from_start": {"sec": 1, "nanosec": 5}}]}),
        "diagnostic_msgs/msg/DiagnosticArray": ("reliable", {"header": header("", 8), "status": [
            {"level": 2, "name": "policy_node: policy", "message": "stale input: camera/front", "hardware_id": "arm",
             "values": [{"key": "ticks_ok", "value": "17"}, {"key": "last_rejection", "value": "step 5 < width * 3"}]},
            {"level": 0, "name": "policy_node: inference", "message": "", "hardware_id": "", "values": []}]}),
        "rosgraph_msgs/msg/Clock": ("sensor_data", {"clock": {"sec": 1234, "nanosec": 5}}),
    }


def to_dds(typename: str, value: dict[str, Any]) -> Any:
    """A DDS sample of ``typename`` from plain values, through the backend's own classes."""
    _, fields = DDS.typestore.fielddefs[typename]
    kwargs = {}
    for name, (kind, detail) in fields:
        if name == "structure_needs_at_least_one_member":
            kwargs[name] = 0  # in the DDS type of an empty message, not in rclpy's
            continue
        v = value[name]
        if kind == Nodetype.NAME:
            v = to_dds(detail, v)
        elif kind in (Nodetype.SEQUENCE, Nodetype.ARRAY) and detail[0][0] == Nodetype.NAME:
            v = [to_dds(detail[0][1], x) for x in v]
        elif isinstance(v, dict):
            v = base64.b64decode(v["__bytes__"])
        kwargs[name] = v
    return DDS(typename)(**kwargs)


def from_dds(typename: str, msg: Any) -> dict[str, Any]:
    """Every field of a received DDS sample as plain values (uint8 sequences as base64)."""
    _, fields = DDS.typestore.fielddefs[typename]
    out: dict[str, Any] = {}
    for name, (kind, detail) in fields:
        if name == "structure_needs_at_least_one_member":
            continue  # in the DDS type of an empty message, not in rclpy's
        v = getattr(msg, name)
        if kind == Nodetype.NAME:
            v = from_dds(detail, v)
        elif kind in (Nodetype.SEQUENCE, Nodetype.ARRAY):
            v = [from_dds(detail[0][1], x) for x in v] if detail[0][0] == Nodetype.NAME else (
                as_bytes(bytes(v)) if isinstance(v, (bytes, bytearray)) else list(v))
        out[name] = v
    return out


def topic(kind: str, typename: str, run: str) -> str:
    return f"/interop_{run}/{kind}/{typename.rsplit('/', 1)[1].lower()}"


def test_domain_config_puts_the_fast_dds_setting_first_and_the_users_uri_after_it(monkeypatch):
    assert "<Compatibility><IgnoreTypeInformation>1.15</IgnoreTypeInformation></Compatibility>" in ROS_INTEROP_CONFIG
    monkeypatch.delenv("CYCLONEDDS_URI", raising=False)
    assert domain_config() == ROS_INTEROP_CONFIG
    monkeypatch.setenv("CYCLONEDDS_URI", "file:///etc/cyclonedds.xml")
    assert domain_config() == ROS_INTEROP_CONFIG + ",file:///etc/cyclonedds.xml"  # later sources override earlier ones


def test_every_message_type_both_ways_with_rclpy_on_fast_dds(tmp_path, monkeypatch, dds_domain):
    monkeypatch.delenv("CYCLONEDDS_URI", raising=False)
    domain, run = dds_domain(100, 232), f"{os.getpid()}_{time.time_ns() % 10**6}"  # Fast DDS's port mapping ends at 232
    cases = {tn: {"qos": qos, "sample": sample, "to_dds": topic("to_dds", tn, run), "to_ros": topic("to_ros", tn, run)}
             for tn, (qos, sample) in samples().items()}
    t0 = time.monotonic()
    peer = Peer(tmp_path, domain, cases)
    t = DDSTransport("interop", domain_id=domain)
    got: dict[str, Any] = {}
    pubs = {}
    for tn, case in cases.items():
        t.create_subscription(tn, case["to_dds"], lambda m, tn=tn: got.setdefault(tn, m), case["qos"])
        pubs[tn] = (t.create_publisher(tn, case["to_ros"], case["qos"]), to_dds(tn, case["sample"]))
    try:
        end = time.monotonic() + TIMEOUT_S
        while time.monotonic() < end and peer.proc.poll() is None:
            missing = peer.info("missing")
            if missing is not None:
                expected = set(cases) - set(missing)
                if expected <= set(got) and expected <= set(peer.received):
                    break
            for pub, msg in pubs.values():
                pub.publish(msg)
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
    finally:
        err = peer.close()
        t.close()
    assert peer.info("rmw") == "rmw_fastrtps_cpp", f"the peer did not start on Fast DDS:\n{err}"
    missing = peer.info("missing")
    assert set(missing) <= {"tf2_msgs/msg/TFMessage"}, f"rclpy lacks message packages: {missing}"
    checked = [tn for tn in cases if tn not in missing]
    not_received = [tn for tn in checked if tn not in got]
    not_sent = [tn for tn in checked if tn not in peer.received]
    assert not not_received and not not_sent, (
        f"after {elapsed:.1f} s: rclpy -> DDS missing {not_received}; DDS -> rclpy missing {not_sent}\n{err}")
    for tn in checked:
        sample = cases[tn]["sample"]
        assert from_dds(tn, got[tn]) == sample, f"{tn}: rclpy -> DDS changed the content"
        assert peer.received[tn] == sample, f"{tn}: DDS -> rclpy changed the content"
    print(f"{len(checked)} types both ways in {elapsed:.1f} s; not checked (no rclpy package): {sorted(missing)}")


def test_users_cyclonedds_uri_overrides_the_interop_setting(tmp_path, monkeypatch, dds_domain):
    """With the vendor list replaced by ``1.1`` (Cyclone's own), Fast DDS's Image no longer matches; Bool does."""
    monkeypatch.setenv("CYCLONEDDS_URI", "<CycloneDDS><Domain><Compatibility><IgnoreTypeInformation>1.1"
                                         "</IgnoreTypeInformation></Compatibility></Domain></CycloneDDS>")
    domain, run = dds_domain(100, 232), f"{os.getpid()}_{time.time_ns() % 10**6}"  # Fast DDS's port mapping ends at 232
    kinds = samples()
    cases = {tn: {"qos": "reliable", "sample": kinds[tn][1], "to_dds": topic("to_dds", tn, run), "to_ros": topic("to_ros", tn, run)}
             for tn in ("std_msgs/msg/Bool", "sensor_msgs/msg/Image")}
    peer = Peer(tmp_path, domain, cases)
    t = DDSTransport("interop", domain_id=domain)
    got: dict[str, Any] = {}
    for tn, case in cases.items():
        t.create_subscription(tn, case["to_dds"], lambda m, tn=tn: got.setdefault(tn, m), "reliable")
    try:
        end = time.monotonic() + TIMEOUT_S
        while "std_msgs/msg/Bool" not in got and time.monotonic() < end and peer.proc.poll() is None:
            time.sleep(0.05)
        time.sleep(2.0)  # ten more publications of the image
    finally:
        err = peer.close()
        t.close()
    assert "std_msgs/msg/Bool" in got, f"the peer never matched (a type without sequences):\n{err}"
    assert "sensor_msgs/msg/Image" not in got, "the user's CYCLONEDDS_URI did not replace the vendor list"
