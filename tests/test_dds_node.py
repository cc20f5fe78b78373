"""The DDS backend: CDR identical to rosbags, and the real policy node end to end over DDS on loopback.

The end-to-end test runs ``vit-policy serve --transport dds`` in its own process on a fresh
ROS_DOMAIN_ID with a tiny random-init checkpoint; this process streams camera frames and EE poses,
enables the node through ``policy/enable`` and checks what comes back on ``cmd/twist``.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.typesys import Stores, get_typestore

pytest.importorskip("cyclonedds", reason="the DDS backend needs the 'dds' extra: pip install -e .[dds]")

from sim_tests.node_process import spawn_dds_node, stop_node  # noqa: E402
from ros_nodes.transport.dds_backend import DDSTransport, next_beat, resolve_name, shared_types  # noqa: E402
from vit_policy import messages as M  # noqa: E402
from vit_policy.model.configuration import EncoderConfig, PolicyConfig  # noqa: E402
from vit_policy.geometry import NormStats  # noqa: E402
from vit_policy.model.policy import VisuomotorPolicy, identity_stats  # noqa: E402
from vit_policy.observation import ActionChunk  # noqa: E402

TS = get_typestore(Stores.ROS2_HUMBLE)
DDS = shared_types()  # the classes every DDSTransport of this process uses
RB = M.rosbags_factory(TS)
ROOT = Path(__file__).resolve().parent.parent


def rosbags_cdr(msg, typename: str) -> bytes:
    return bytes(TS.serialize_cdr(msg, typename))


def test_type_names_follow_ros2_conventions():
    cls = DDS("sensor_msgs/msg/Image")
    assert cls.__idl_typename__ == "sensor_msgs::msg::dds_::Image_"
    assert resolve_name("cmd/twist", "/arm", "policy_node") == "/arm/cmd/twist"
    assert resolve_name("/diagnostics", "/arm", "policy_node") == "/diagnostics"
    assert resolve_name("~/enable", "arm", "policy_node") == "/arm/policy_node/enable"


def test_timer_schedule_runs_a_late_beat_at_once_and_skips_missed_ones():
    assert next_beat(10.0, 10.004, 0.01) == pytest.approx(10.01)  # on time: the next beat
    assert next_beat(10.0, 10.013, 0.01) == pytest.approx(10.01)  # that beat has passed: run it now, not skip it
    assert next_beat(10.0, 10.047, 0.01) == pytest.approx(10.04)  # 3 beats missed entirely: only the latest runs
    late = next_beat(10.0, 10.013, 0.01)
    assert next_beat(late, 10.0135, 0.01) == pytest.approx(10.02)  # the grid is kept: no drift after a late beat


def test_cdr_bytes_equal_rosbags_serializer():
    """Each builder, filled through the DDS factory and the rosbags factory, gives byte-identical CDR."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)  # odd width: row bytes not a multiple of 4
    k = 3
    chunk = ActionChunk(10**9, 10**8, np.array([0.4, 0, 0.3]), np.array([0, 0, 0.38268343, 0.92387953]),
                        rng.normal(0, 0.01, (k, 3)), rng.normal(0, 0.1, (k, 3)), np.full(k, 0.5))
    cases = {
        "sensor_msgs/msg/Image": lambda f: M.rgb_to_image(f, rgb, 123_456_789_012, "cam_front", "bgr8"),
        "sensor_msgs/msg/CompressedImage": lambda f: M.rgb_to_compressed(f, rgb, 5, "cam", "png"),
        "geometry_msgs/msg/PoseStamped": lambda f: M.make_pose_stamped(f, 77, "base_link", [0.1, -0.2, 0.3], [0, 0, 0, 1]),
        "geometry_msgs/msg/TwistStamped": lambda f: M.make_twist_stamped(f, 78, "base_link", [0.1, 0, -0.05], [0, 0.2, 0]),
        "trajectory_msgs/msg/MultiDOFJointTrajectory": lambda f: M.make_trajectory(f, chunk, 10**9 + 1, "base_link"),
        "sensor_msgs/msg/JointState": lambda f: M.make_joint_state(f, 9, ["a", "finger"], [0.5, 0.04]),
        "std_msgs/msg/Float64": lambda f: M.make_float64(f, 0.25),
        "diagnostic_msgs/msg/DiagnosticArray": lambda f: M.make_diagnostic_array(f, 3, "policy", 1, "stale", {"a": 1, "b": "x"}),
    }
    for typename, build in cases.items():
        dds_bytes = build(DDS).serialize()
        assert dds_bytes == rosbags_cdr(build(RB), typename), typename
        back = TS.deserialize_cdr(dds_bytes, typename)  # and rosbags reads what DDS wrote
        assert rosbags_cdr(back, typename) == dds_bytes
    image = DDS("sensor_msgs/msg/Image").deserialize(M.rgb_to_image(DDS, rgb, 1, "c", "rgb8").serialize())
    assert isinstance(image.data, bytes)
    np.testing.assert_array_equal(M.image_to_rgb(image), rgb)


def test_bytes_field_announces_the_same_type_information_as_a_uint8_sequence():
    import cyclonedds.idl.types as pt
    from cyclonedds.idl import make_idl_struct

    fast = make_idl_struct("Blob", "test::msg::dds_::Blob_", {"data": bytes, "n": pt.uint32})
    slow = make_idl_struct("Blob", "test::msg::dds_::Blob_", {"data": pt.sequence[pt.uint8], "n": pt.uint32})
    fast.__idl__.fill_type_data()
    slow.__idl__.fill_type_data()
    assert fast.__idl__._xt_data == slow.__idl__._xt_data
    assert fast(data=b"\x01\x02", n=3).serialize() == slow(data=[1, 2], n=3).serialize()


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------

RATE_HZ = 10.0
MAX_AGE_S = 0.3


class Streamer:
    """Publishes camera frames (15 Hz) and EE poses (50 Hz) with the current time as their stamps."""

    def __init__(self, t: DDSTransport, size=(48, 64)) -> None:
        self.t, self.size = t, size
        self.pub_img = t.create_publisher("sensor_msgs/msg/Image", "/camera/front/image_raw", "sensor_data")
        self.pub_pose = t.create_publisher("geometry_msgs/msg/PoseStamped", "/ee_pose", "reliable")
        self.camera_on = threading.Event()
        self.camera_on.set()
        self.last_image_ns = 0
        self._stop = threading.Event()
        self.rgb = np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)
        self.threads = [threading.Thread(target=self._loop, args=(1 / 15, self._image), daemon=True),
                        threading.Thread(target=self._loop, args=(1 / 50, self._pose), daemon=True)]
        for th in self.threads:
            th.start()

    def _loop(self, period, fn):
        while not self._stop.wait(period):
            fn()

    def _image(self):
        if self.camera_on.is_set():
            now = time.time_ns()
            self.pub_img.publish(M.rgb_to_image(self.t.factory, self.rgb, now, "camera_front", "bgr8"))
            self.last_image_ns = now

    def _pose(self):
        self.pub_pose.publish(M.make_pose_stamped(self.t.factory, time.time_ns(), "base_link", [0.4, 0.0, 0.3], [1.0, 0, 0, 0]))

    def malformed(self, kind: str):
        msg = M.rgb_to_image(self.t.factory, self.rgb, time.time_ns(), "camera_front", "rgb8")
        if kind == "step":
            msg.step = msg.step - 5  # rows shorter than width * 3
        elif kind == "size":
            msg.data = msg.data[:-100]  # fewer bytes than step * height
        elif kind == "encoding":
            msg.encoding = "yuv422_yuy2"
        self.pub_img.publish(msg)

    def close(self):
        self._stop.set()
        for th in self.threads:
            th.join(timeout=2)


class Recorder:
    def __init__(self, t: DDSTransport) -> None:
        self.lock = threading.Lock()
        self.twists: list[tuple[float, int, np.ndarray]] = []  # (arrival monotonic s, stamp ns, [lin, ang])
        self.chunks: list[float] = []
        self.diags: list[dict[str, str]] = []
        t.create_subscription("geometry_msgs/msg/TwistStamped", "/cmd/twist", self._twist)
        t.create_subscription("trajectory_msgs/msg/MultiDOFJointTrajectory", "/policy/chunk", lambda m: self.chunks.append(time.monotonic()))
        t.create_subscription("diagnostic_msgs/msg/DiagnosticArray", "/diagnostics", lambda m: self.diags.append(M.diagnostic_values(m)))

    def _twist(self, msg):
        tw = msg.twist
        v = np.array([tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z])
        with self.lock:
            self.twists.append((time.monotonic(), M.stamp_to_ns(msg.header.stamp), v))

    def since(self, t0: float):
        with self.lock:
            return [x for x in self.twists if x[0] >= t0]


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the node exited with {proc.returncode} while waiting for {what}:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    cfg = PolicyConfig(cameras=["front"], encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=64, token_mode="pooled"),
                       d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, chunk_size=8, control_dt=0.1)
    policy = VisuomotorPolicy.from_config(cfg)
    # own arrays per field: NormStats.identity shares one array between std and max, which safetensors refuses
    policy.set_stats({k: NormStats(*(np.array(a) for a in (s.mean, s.std, s.min, s.max))) for k, s in identity_stats(cfg).items()})
    return policy.save_pretrained(tmp_path / "ckpt")


@pytest.mark.slow
@pytest.mark.dds
def test_policy_node_end_to_end_over_dds(checkpoint: Path, tmp_path: Path, dds_domain):
    domain = dds_domain(100, 199)
    params = {"policy_node": {"ros__parameters": {
        "checkpoint": str(checkpoint), "threads": 1, "output_mode": "twist",
        "runtime": {"control_rate_hz": RATE_HZ, "max_age_s": MAX_AGE_S, "sync_tolerance_s": 0.1},
        "safety": {"max_linear_speed": 0.5},
    }}}
    proc = spawn_dds_node(params, tmp_path, domain)
    t = DDSTransport("e2e_test", domain_id=domain)
    streamer = Streamer(t)
    rec = Recorder(t)
    enable = t.create_publisher("std_msgs/msg/Bool", "/policy/enable", "reliable")
    try:
        # 1. before enable: only stop commands (zero twist), and no chunk is published
        wait_for(lambda: len(rec.twists) >= 10, 120, "the first commands", proc)
        time.sleep(1.0)
        assert all(np.all(v == 0) for _, _, v in rec.twists), "a non-stop command before enable"
        assert not rec.chunks

        # 2. enable: policy commands at the control rate (within 20 %)
        t_enable = time.monotonic()
        for _ in range(3):  # reliable, but the reader may still be matching: repeat, enabling is idempotent
            enable.publish(DDS("std_msgs/msg/Bool")(data=True))
            time.sleep(0.1)
        wait_for(lambda: any(np.any(v != 0) for _, _, v in rec.since(t_enable)), 30, "a policy command after enable", proc)
        t0 = time.monotonic()
        time.sleep(3.0)
        window = [x for x in rec.since(t0) if x[0] <= t0 + 3.0]
        rate = (len(window) - 1) / (window[-1][0] - window[0][0])
        assert abs(rate - RATE_HZ) <= 0.2 * RATE_HZ, f"command rate {rate:.1f} Hz, expected {RATE_HZ} +- 20 %"
        moving = sum(np.any(v != 0) for _, _, v in window)
        assert moving >= 0.8 * len(window), f"only {moving}/{len(window)} commands came from the policy"
        assert np.all(np.linalg.norm(np.array([v[:3] for _, _, v in window]), axis=1) <= 0.5 + 1e-9)  # speed limit
        assert rec.chunks and rec.diags and rec.diags[-1]["status"] == "ok"

        # 3. the camera goes silent: stop within two control periods of the frame becoming stale
        streamer.camera_on.clear()
        time.sleep(0.1)
        last_frame = streamer.last_image_ns
        time.sleep(MAX_AGE_S + 1.0)
        after = [x for x in rec.twists if x[1] > last_frame]
        deadline = last_frame + int((MAX_AGE_S + 2 / RATE_HZ) * 1e9)
        late = [x for x in after if x[1] > deadline]
        assert late and all(np.all(v == 0) for _, _, v in late), "still commanding motion after the camera went silent"
        first_stop = next(x[1] for x in after if np.all(x[2] == 0))
        assert first_stop <= deadline

        # 4. malformed frames are rejected and counted; the node keeps running and never sends NaN
        streamer.camera_on.set()
        t_back = time.monotonic()
        wait_for(lambda: any(np.any(v != 0) for _, _, v in rec.since(t_back)), 20, "commands after the camera is back", proc)
        for kind in ("step", "size", "encoding"):
            streamer.malformed(kind)
            time.sleep(0.15)
        n_diag = len(rec.diags)
        wait_for(lambda: len(rec.diags) > n_diag + 1, 5, "diagnostics after the malformed frames", proc)
        diag = rec.diags[-1]
        assert int(diag["camera/front.rejected"]) == 3, diag
        assert "step" in diag["last_rejection"] or "encoding" in diag["last_rejection"] or "data" in diag["last_rejection"]
        assert diag["ood.monitor"].startswith("off: the checkpoint has no OOD statistics"), diag  # a checkpoint without ood.safetensors
        t_ok = time.monotonic()
        wait_for(lambda: any(np.any(v != 0) for _, _, v in rec.since(t_ok)), 10, "commands after the malformed frames", proc)
        assert proc.poll() is None, "the node died"
        assert all(np.all(np.isfinite(v)) for _, _, v in rec.twists)
    finally:
        streamer.close()
        out = stop_node(proc)
        t.close()
    assert proc.returncode == 0, out
    assert "ERROR" not in out and "Traceback" not in out, out


# --------------------------------------------------------------------------------------------------
# The node in process: parameters, TF pose, compressed images, gripper joints, trajectory output
# --------------------------------------------------------------------------------------------------


def test_parameter_file_and_errors():
    from ros_nodes.policy_node import config_from_parameters, parameter_defaults, read_parameter_file, serve
    from vit_policy.config import ConfigError

    params = read_parameter_file(ROOT / "configs/ros/policy_node.yaml")
    assert set(params) == set(parameter_defaults()), "configs/ros/policy_node.yaml must list every parameter"
    cfg = config_from_parameters({**params, "checkpoint": "/ckpt", "runtime.inference_latency_s": -1.0})
    assert cfg.runtime.inference_latency_s is None and cfg.gripper_joints == [] and cfg.topics.twist == "cmd/twist"
    with pytest.raises(ConfigError, match="checkpoint: set the trained checkpoint"):
        config_from_parameters(params)
    with pytest.raises(ConfigError, match="did you mean 'runtime.control_rate_hz'"):
        serve("dds", str(ROOT / "configs/ros/policy_node.yaml"), ["runtime.control_rate=5", "checkpoint=/x"])
    with pytest.raises(ConfigError, match="output_mode"):
        serve("dds", None, ["checkpoint=/x", "output_mode=velocity"])
    with pytest.raises(ConfigError, match="'dds' or 'rclpy'"):
        serve("zenoh", None, ["checkpoint=/x"])
    import importlib.util

    if importlib.util.find_spec("rclpy") is None:  # here: a clear message instead of an ImportError
        with pytest.raises(ConfigError, match="source /opt/ros/<distro>/setup.bash"):
            serve("rclpy", None, ["checkpoint=/x"])


def test_node_with_tf_compressed_images_gripper_and_trajectory_output(tmp_path: Path, caplog, dds_domain):
    from scipy.spatial.transform import Rotation

    from ros_nodes.policy_node import PolicyNode, config_from_parameters, parameter_defaults
    from vit_policy.config import save_config

    policy_yaml = tmp_path / "tiny.yaml"
    save_config(PolicyConfig(cameras=["front"], encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=64, token_mode="pooled"),
                             d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, chunk_size=8), policy_yaml)
    cfg = config_from_parameters({
        **parameter_defaults(), "allow_untrained": True, "policy_config": str(policy_yaml), "threads": 1,
        "pose_source": "tf", "image_transport": "compressed", "output_mode": "trajectory",
        "gripper_joints": ["finger_l", "finger_r"], "gripper_closed": 0.0, "gripper_open": 0.08,
        "runtime.synchronous": True, "runtime.max_age_s": 5.0, "runtime.sync_tolerance_s": 1.0,
    })
    domain = dds_domain(200, 230)
    node_t = DDSTransport("policy_node", domain_id=domain)
    node = PolicyNode(node_t, cfg)
    assert node.untrained
    peer = DDSTransport("peer", domain_id=domain)
    f = peer.factory
    trajectories = []
    peer.create_subscription("trajectory_msgs/msg/MultiDOFJointTrajectory", "/cmd/trajectory", trajectories.append)
    grippers = []
    peer.create_subscription("std_msgs/msg/Float64", "/cmd/gripper", lambda m: grippers.append(m.data))
    pub_static = peer.create_publisher("tf2_msgs/msg/TFMessage", "/tf_static", "latched")
    pub_tf = peer.create_publisher("tf2_msgs/msg/TFMessage", "/tf", "reliable")
    pub_img = peer.create_publisher("sensor_msgs/msg/CompressedImage", "/camera/front/image_raw/compressed", "sensor_data")
    pub_js = peer.create_publisher("sensor_msgs/msg/JointState", "/joint_states", "reliable")
    r_static, r_dyn = Rotation.from_euler("z", 90, degrees=True), Rotation.from_euler("x", 180, degrees=True)
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :, 0] = 200
    try:
        def publish_inputs():
            now = time.time_ns()
            pub_static.publish(M.make_tf_message(f, [M.make_transform_stamped(f, 0, "base_link", "arm_base", [0.1, 0, 0], r_static.as_quat())]))
            pub_tf.publish(M.make_tf_message(f, [M.make_transform_stamped(f, now, "arm_base", "ee_link", [0.3, 0, 0.2], r_dyn.as_quat())]))
            pub_img.publish(M.rgb_to_compressed(f, rgb, now, "camera_front", "jpeg"))
            pub_js.publish(M.make_joint_state(f, now, ["arm_joint", "finger_l", "finger_r"], [1.0, 0.01, 0.01]))

        wait_for(lambda: publish_inputs() or node.runner.received["pose"] > 0 and node.runner.received["camera/front"] > 0, 15, "inputs")
        _, measured = node.runner.sync.latest_pose()
        position = measured[:3]
        np.testing.assert_allclose(position, [0.1, 0.3, 0.2], atol=1e-9)  # arm_base rotated 90 deg about z
        assert node.runner.sync.latest_gripper() == pytest.approx(0.25)
        with caplog.at_level("WARNING"):
            assert node.handle_enable(True)[0]
        assert "UNTRAINED" in caplog.text
        publish_inputs()
        time.sleep(0.1)
        cmd = node.control_step()
        assert cmd.status == "ok", cmd.reason
        wait_for(lambda: len(trajectories) >= 1 and len(grippers) >= 1, 5, "the trajectory command")
        t_ns, pos, quat = M.trajectory_to_arrays(trajectories[-1])
        assert len(t_ns) >= 1 and np.all(t_ns > 0) and np.all(np.diff(t_ns) > 0)
        assert trajectories[-1].header.frame_id == "base_link"
        steps = np.linalg.norm(np.diff(np.vstack([position, pos]), axis=0), axis=1)
        dt = np.diff(np.concatenate([[0], t_ns])) / 1e9
        assert np.all(steps <= cfg.safety.max_linear_speed * dt + 1e-6)  # the trajectory respects the speed limit
        node.handle_enable(False)
        stop = node.control_step()
        assert stop.is_stop and stop.status == "disabled"
        wait_for(lambda: len(trajectories) >= 2, 5, "the stop trajectory")
        t_ns, pos, _ = M.trajectory_to_arrays(trajectories[-1])
        assert len(t_ns) == 1 and np.allclose(pos[0], position)  # hold where the arm is
    finally:
        node.shutdown()
        peer.close()
        node_t.close()


def test_sim_time_clock_and_timers_pause(tmp_path: Path, dds_domain):
    """use_sim_time: commands carry /clock time; no pose target before a valid pose; pause sends a stop and stops the timers."""
    from ros_nodes.policy_node import PolicyNode, config_from_parameters, parameter_defaults
    from vit_policy.config import save_config

    policy_yaml = tmp_path / "tiny.yaml"
    save_config(PolicyConfig(cameras=["front"], encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=32, token_mode="pooled"),
                             d_model=32, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, chunk_size=4, control_dt=0.05), policy_yaml)
    cfg = config_from_parameters({**parameter_defaults(), "allow_untrained": True, "policy_config": str(policy_yaml), "threads": 1,
                                  "runtime.control_rate_hz": 20.0, "output_mode": "pose"})
    domain = dds_domain(231, 232)
    node_t = DDSTransport("policy_node", domain_id=domain, use_sim_time=True)
    node = PolicyNode(node_t, cfg)
    peer = DDSTransport("peer", domain_id=domain)
    poses = []
    peer.create_subscription("geometry_msgs/msg/PoseStamped", "/cmd/pose", poses.append)
    clock = peer.create_publisher("rosgraph_msgs/msg/Clock", "/clock", "reliable")
    sim_ns = 1234 * 10**9 + 5
    try:
        wait_for(lambda: clock.publish(peer.factory("rosgraph_msgs/msg/Clock")(clock=M.ns_to_stamp(peer.factory, sim_ns)))
                 or node_t.now_ns() == sim_ns, 10, "/clock")
        node.start()
        time.sleep(0.5)  # ten control periods without any EE pose: a pose target would be made up
        assert poses == [], "a pose target was published before any valid EE pose"
        ee = peer.create_publisher("geometry_msgs/msg/PoseStamped", "/ee_pose", "reliable")
        wait_for(lambda: ee.publish(M.make_pose_stamped(peer.factory, sim_ns, "base_link", [0.4, 0.1, 0.3], [1.0, 0, 0, 0]))
                 or len(poses) >= 3, 10, "commands on the sim clock")
        assert M.stamp_to_ns(poses[-1].header.stamp) == sim_ns and poses[-1].header.frame_id == "base_link"
        p = poses[-1].pose.position
        assert (p.x, p.y, p.z) == pytest.approx((0.4, 0.1, 0.3))  # the stop holds the measured pose
        node.pause()
        time.sleep(0.3)
        n = len(poses)
        time.sleep(0.3)
        assert len(poses) == n, "the control timer kept running after pause"
        assert node.runner.last_status[0] == "disabled"
    finally:
        node.shutdown()
        peer.close()
        node_t.close()
