"""The rclpy backend on real ROS 2: the node in its own process, a plain rclpy peer in this one.

rclpy comes from the ``ros`` extra (the ROS 2 Kilted pip wheels with Fast DDS, installed by ``make
test``) or from a sourced ROS 2 install. These tests never skip: without rclpy, install the extra
(``pip install -c constraints.txt -e .[ros]``).

* ``python -m ros_nodes.policy_node --ros-args --params-file ... -r __ns:=/arm -r __node:=left``: the
  parameter file applies under the namespace and the new name; lifecycle configure / activate /
  deactivate / cleanup over the standard services with only stops outside ``active``; enable /
  disable / reset; two cameras (bgr8 and rgb8); twist output; logs on /rosout and diagnostics under
  the node's name; the final stop on SIGINT, then exit 0.
* ``vit-policy serve --transport rclpy``: compressed images, TF pose (tf2_msgs built from its
  definition), trajectory output, the final stop on SIGTERM, then exit 0.
* In process: pose output, the lifecycle ``shutdown`` transition over its service, the executor (one
  thread unless ``VIT_POLICY_EXECUTOR`` says otherwise), errors naming the renamed node, tf2_msgs identical to the distribution's, rclpy starting with nothing sourced.

Every command received is checked for NaN. The node processes talk to this one on a random
``ROS_DOMAIN_ID`` below 100 (the DDS tests use 100-232), discovery limited to this host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import yaml

try:
    import rclpy
except ImportError as exc:  # never a skip: make test installs the extra
    raise ImportError(f"{exc}: these tests need rclpy; install the ROS 2 pip wheels: pip install -c constraints.txt -e .[ros] "
                      "(or source a ROS 2 install)") from None

from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402

from ros_nodes.transport.rclpy_backend import NO_SIGNAL_HANDLERS, RclpyFactory  # noqa: E402
from vit_policy import messages as M  # noqa: E402
from vit_policy.model.configuration import EncoderConfig, PolicyConfig  # noqa: E402
from vit_policy.geometry import NormStats  # noqa: E402
from vit_policy.model.policy import VisuomotorPolicy, identity_stats  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
F = RclpyFactory()
RATE_HZ = 20.0  # from the parameter file (the default is 10)
SPEED = 0.1  # safety.max_linear_speed from the parameter file (the default is 0.25)
TFMESSAGE_HASH = "RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087"  # tf2_msgs/msg/TFMessage, ROS 2 Jazzy / Kilted


# --------------------------------------------------------------------------------------------------
# The peer: a plain rclpy node in this process, spun by a background thread
# --------------------------------------------------------------------------------------------------


class Peer:
    """Subscriptions that record, publishers, service calls; on one context with its own domain id."""

    def __init__(self, domain_id: int) -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id, **NO_SIGNAL_HANDLERS)
        self.node = Node("peer", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.records: dict[str, list[tuple[float, Any]]] = {}
        self._stop = threading.Event()
        self._start_spin()

    def _start_spin(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _stop_spin(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def add_node(self, node: Node) -> None:
        self.executor.add_node(node)

    def destroy_added(self, node: Node) -> None:
        """Remove and destroy a node :meth:`add_node` added, with the spin thread stopped: a wait in progress
        would touch the destroyed node's handles (rclpy raises InvalidHandle in the thread, which then dies)."""
        self._stop_spin()
        assert not self._thread.is_alive(), "the peer's spin thread did not stop within 5 s"
        self.executor.remove_node(node)
        node.destroy_node()
        self._start_spin()

    def record(self, typename: str, topic: str, qos: Any = 10, key: str | None = None) -> str:
        key = key or topic
        self.records[key] = []

        def store(msg: Any) -> None:
            with self.lock:
                self.records[key].append((time.monotonic(), msg))

        self.node.create_subscription(F(typename), topic, store, qos)
        return key

    def got(self, key: str, since: float = 0.0) -> list[Any]:
        with self.lock:
            return [m for t, m in self.records[key] if t >= since]

    def publisher(self, typename: str, topic: str, qos: Any = 10) -> Any:
        return self.node.create_publisher(F(typename), topic, qos)

    def call(self, typename: str, service: str, request: Any = None, timeout: float = 30.0) -> Any:
        cls = F(typename)
        client = self.node.create_client(cls, service)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {service} did not appear in {timeout} s"
            done = threading.Event()
            future = client.call_async(request if request is not None else cls.Request())
            future.add_done_callback(lambda _: done.set())
            assert done.wait(timeout), f"no answer from {service} in {timeout} s"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self._stop_spin()
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class Streamer:
    """Camera frames (15 Hz, one encoding per camera) and the EE pose (PoseStamped or TF, 50 Hz), stamped now."""

    def __init__(self, peer: Peer, cameras: dict[str, str], pose: str = "pose", size: tuple[int, int] = (48, 64)) -> None:
        self.peer, self.cameras, self.pose = peer, cameras, pose
        self.rgb = np.random.default_rng(0).integers(0, 256, size + (3,), dtype=np.uint8)
        self.pubs = {}
        for cam, encoding in cameras.items():
            if encoding in ("jpeg", "png"):
                self.pubs[cam] = peer.publisher("sensor_msgs/msg/CompressedImage", f"/camera/{cam}/image_raw/compressed", qos_profile_sensor_data)
            else:
                self.pubs[cam] = peer.publisher("sensor_msgs/msg/Image", f"/camera/{cam}/image_raw", qos_profile_sensor_data)
        if pose == "tf":
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
            static = peer.publisher("tf2_msgs/msg/TFMessage", "/tf_static", latched)
            static.publish(M.make_tf_message(F, [M.make_transform_stamped(F, 0, "base_link", "arm_base", [0.1, 0.0, 0.0], [0, 0, 0, 1])]))
            self.pub_pose = peer.publisher("tf2_msgs/msg/TFMessage", "/tf")
        else:
            self.pub_pose = peer.publisher("geometry_msgs/msg/PoseStamped", "/ee_pose")
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(1 / 15, self._images), daemon=True),
                        threading.Thread(target=self._loop, args=(1 / 50, self._pose), daemon=True)]
        for th in self.threads:
            th.start()

    def _loop(self, period: float, fn: Callable[[], None]) -> None:
        while not self._stop.wait(period):
            fn()

    def _images(self) -> None:
        now = time.time_ns()
        for cam, encoding in self.cameras.items():
            if encoding in ("jpeg", "png"):
                self.pubs[cam].publish(M.rgb_to_compressed(F, self.rgb, now, f"camera_{cam}", encoding))
            else:
                self.pubs[cam].publish(M.rgb_to_image(F, self.rgb, now, f"camera_{cam}", encoding))

    def _pose(self) -> None:
        now = time.time_ns()
        if self.pose == "tf":  # base_link -> arm_base (static, +0.1 x) -> ee_link: the EE at (0.4, 0, 0.3)
            self.pub_pose.publish(M.make_tf_message(F, [M.make_transform_stamped(F, now, "arm_base", "ee_link", [0.3, 0, 0.3], [1.0, 0, 0, 0])]))
        else:
            self.pub_pose.publish(M.make_pose_stamped(F, now, "base_link", [0.4, 0.0, 0.3], [1.0, 0, 0, 0]))

    def close(self) -> None:
        self._stop.set()
        for th in self.threads:
            th.join(timeout=2)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the node exited with {proc.returncode} while waiting for {what}:\n{_tail(log)}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{_tail(log)}")


def _tail(log: Path | None, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log is not None and log.exists() else ""


def twist_vec(msg: Any) -> np.ndarray:
    t = msg.twist
    return np.array([t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z])


def moving(msgs: list[Any]) -> bool:
    return any(np.any(twist_vec(m) != 0) for m in msgs)


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ros_domain(tmp_path_factory: pytest.TempPathFactory, dds_domain):
    """A random domain below 100, discovery on this host only, ROS logs under a temporary folder."""
    domain = dds_domain(1, 99)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        mp.setenv("ROS_LOG_DIR", str(tmp_path_factory.mktemp("ros_log")))
        mp.delenv("RMW_IMPLEMENTATION", raising=False)  # the default: Fast DDS, the one the wheels bring
        yield domain


@pytest.fixture(scope="module")
def peer(ros_domain: int):
    p = Peer(ros_domain)
    yield p
    p.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init policy with two cameras (front, wrist)."""
    torch.manual_seed(0)
    cfg = PolicyConfig(cameras=["front", "wrist"], encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=64, token_mode="pooled"),
                       d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, chunk_size=8, control_dt=0.05)
    policy = VisuomotorPolicy.from_config(cfg)
    policy.set_stats({k: NormStats(*(np.array(a) for a in (s.mean, s.std, s.min, s.max))) for k, s in identity_stats(cfg).items()})
    return policy.save_pretrained(tmp_path_factory.mktemp("rclpy") / "ckpt")


def node_parameters(checkpoint: Path, **extra: Any) -> dict[str, Any]:
    params = {"checkpoint": str(checkpoint), "threads": 1, "diagnostics_rate_hz": 4.0,
              "runtime": {"control_rate_hz": RATE_HZ, "max_age_s": 0.5, "sync_tolerance_s": 0.1},
              "safety": {"max_linear_speed": SPEED}}
    for key, value in extra.items():
        params[key] = value
    return params


def spawn(cmd: list[str], domain: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def end(proc: subprocess.Popen, sig: int, timeout: float = 30.0) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the node did not exit within {timeout} s of signal {sig}") from None


def rosout_from(peer: Peer, key: str, logger: str) -> list[str]:
    return [m.msg for m in peer.got(key) if m.name == logger]


ROSOUT_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


# --------------------------------------------------------------------------------------------------
# The lifecycle node in its own process: policy_node --ros-args ... -r __ns:=/arm -r __node:=left
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lifecycle_node_process_namespace_rename_services_and_sigint(checkpoint: Path, peer: Peer, ros_domain: int, tmp_path: Path):
    from lifecycle_msgs.msg import Transition

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": node_parameters(checkpoint)}}))
    log = tmp_path / "node.log"
    proc = spawn([sys.executable, "-m", "ros_nodes.policy_node", "--ros-args", "--params-file", str(params_file),
                  "-r", "__ns:=/arm", "-r", "__node:=left", "-p", "autostart:=false"], ros_domain, log)
    twists = peer.record("geometry_msgs/msg/TwistStamped", "/arm/cmd/twist", key="left/twist")
    grippers = peer.record("std_msgs/msg/Float64", "/arm/cmd/gripper", key="left/gripper")
    diags = peer.record("diagnostic_msgs/msg/DiagnosticArray", "/diagnostics", key="left/diagnostics")
    rosout = peer.record("rcl_interfaces/msg/Log", "/rosout", ROSOUT_QOS, key="left/rosout")
    streamer = Streamer(peer, {"front": "bgr8", "wrist": "rgb8"})

    def change(transition: int, label: str) -> None:
        req = F("lifecycle_msgs/srv/ChangeState").Request()
        req.transition.id = transition
        assert peer.call("lifecycle_msgs/srv/ChangeState", "/arm/left/change_state", req, 120).success, f"{label} failed:\n{_tail(log)}"
        state = peer.call("lifecycle_msgs/srv/GetState", "/arm/left/get_state").current_state.label
        assert state == {"configure": "inactive", "activate": "active", "deactivate": "inactive", "cleanup": "unconfigured"}[label]

    def set_enabled(on: bool) -> float:
        res = peer.call("std_srvs/srv/SetBool", "/arm/left/enable", F("std_srvs/srv/SetBool").Request(data=on))
        assert res.success, res.message
        return time.monotonic()

    try:
        # unconfigured: the lifecycle services are up under /arm/left, nothing is commanded
        assert peer.call("lifecycle_msgs/srv/GetState", "/arm/left/get_state", timeout=120).current_state.label == "unconfigured"
        change(Transition.TRANSITION_CONFIGURE, "configure")
        # the parameter file applies under the namespace and the new name
        req = F("rcl_interfaces/srv/GetParameters").Request(names=["runtime.control_rate_hz", "safety.max_linear_speed", "checkpoint"])
        values = peer.call("rcl_interfaces/srv/GetParameters", "/arm/left/get_parameters", req).values
        assert [values[0].double_value, values[1].double_value, values[2].string_value] == [RATE_HZ, SPEED, str(checkpoint)]
        time.sleep(0.5)
        assert not peer.got(twists), "inactive, yet commands were published"

        # active but disabled: stop commands at the control rate of the file
        change(Transition.TRANSITION_ACTIVATE, "activate")
        wait_for(lambda: len(peer.got(twists)) >= 5, 30, "the first commands", proc, log)
        t0 = time.monotonic()
        time.sleep(1.5)
        window = peer.got(twists, since=t0)
        rate = len(window) / 1.5
        assert rate > 12.5, f"{rate:.1f} commands/s: the file's control rate ({RATE_HZ} Hz, not the default 10) is not in effect"
        assert not moving(peer.got(twists)), "a moving command before enable"

        # enable: commands from the policy within the file's speed limit; disable: stops; reset
        t_on = set_enabled(True)
        wait_for(lambda: moving(peer.got(twists, since=t_on)), 30, "a policy command after enable", proc, log)
        assert all(np.linalg.norm(twist_vec(m)[:3]) <= SPEED + 1e-9 for m in peer.got(twists)), "over the speed limit of the file"
        t_off = set_enabled(False)
        time.sleep(0.6)
        assert not moving(peer.got(twists, since=t_off + 0.2)), "moving after disable"
        res = peer.call("std_srvs/srv/Trigger", "/arm/left/reset")
        assert res.success and "reset" in res.message
        t_on = set_enabled(True)
        wait_for(lambda: moving(peer.got(twists, since=t_on)), 30, "a policy command after the second enable", proc, log)

        # deactivate: a stop, then nothing; activate again: disabled, stops only
        change(Transition.TRANSITION_DEACTIVATE, "deactivate")
        wait_for(lambda: not np.any(twist_vec(peer.got(twists)[-1])), 5, "the stop of deactivate", proc, log)
        time.sleep(0.2)
        n = len(peer.got(twists))
        time.sleep(0.5)
        assert len(peer.got(twists)) == n, "commands while inactive"

        # cleanup drops the model; configure + activate load it again
        change(Transition.TRANSITION_CLEANUP, "cleanup")
        change(Transition.TRANSITION_CONFIGURE, "configure")
        t_active = time.monotonic()
        change(Transition.TRANSITION_ACTIVATE, "activate")
        wait_for(lambda: len(peer.got(twists, since=t_active)) >= 5, 30, "commands after re-activation", proc, log)
        assert not moving(peer.got(twists, since=t_active)), "re-activated enabled"
        t_on = set_enabled(True)
        wait_for(lambda: moving(peer.got(twists, since=t_on)), 30, "a policy command after re-activation", proc, log)

        # diagnostics under the node's own name, both cameras received; logs on /rosout under the node's name
        wait_for(lambda: any(d.status and d.status[0].name == "arm/left: policy" and M.diagnostic_values(d).get("status") == "ok"
                             for d in peer.got(diags)), 10, "diagnostics named arm/left", proc, log)
        ok = [M.diagnostic_values(d) for d in peer.got(diags) if d.status and d.status[0].name == "arm/left: policy"][-1]
        assert int(ok["camera/front.received"]) > 0 and int(ok["camera/wrist.received"]) > 0, ok
        assert not [d.status[0].name for d in peer.got(diags) if d.status and d.status[0].name.startswith("policy_node")]
        lines = rosout_from(peer, rosout, "arm.left")
        assert any("policy node up" in s for s in lines), lines  # INFO from Python logging
        assert any("enabled: commanding from the policy" in s for s in lines), lines
        assert any("loaded checkpoint" in s for s in lines), lines

        # SIGINT while moving: the last command the arm receives is a stop; exit 0
        assert moving(peer.got(twists)[-3:]), "not moving before SIGINT"
        code = end(proc, signal.SIGINT)
        time.sleep(0.3)
        output = _tail(log, 100_000)
        assert code == 0, output
        assert not np.any(twist_vec(peer.got(twists)[-1])), "the last command after SIGINT is not a stop"
        assert "Traceback" not in output and "context is invalid" not in output and "never retrieved" not in output, output
        assert any("final stop" in s for s in rosout_from(peer, rosout, "arm.left")) or "final stop" in output, output
        for m in peer.got(twists):
            assert np.all(np.isfinite(twist_vec(m)))
        assert all(np.isfinite(m.data) for m in peer.got(grippers))
    finally:
        streamer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------------
# vit-policy serve --transport rclpy: compressed images, TF pose, trajectory output, SIGTERM
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_rclpy_process_tf_compressed_trajectory_and_sigterm(checkpoint: Path, peer: Peer, ros_domain: int, tmp_path: Path):
    from ros_nodes.transport.rclpy_types import ensure

    ensure("tf2_msgs")  # the peer publishes TF; built here once, the node process then finds it cached
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": node_parameters(
        checkpoint, image_transport="compressed", pose_source="tf", output_mode="trajectory", base_frame="base_link", ee_frame="ee_link")}}))
    log = tmp_path / "serve.log"
    script = Path(sys.executable).with_name("vit-policy")
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "vit_policy.cli"]
    proc = spawn([*cli, "serve", "--transport", "rclpy", "--config", str(params_file), "--namespace", "arm2", "--node-name", "right"],
                 ros_domain, log)
    trajectories = peer.record("trajectory_msgs/msg/MultiDOFJointTrajectory", "/arm2/cmd/trajectory", key="right/trajectory")
    rosout = peer.record("rcl_interfaces/msg/Log", "/rosout", ROSOUT_QOS, key="right/rosout")
    diags = peer.record("diagnostic_msgs/msg/DiagnosticArray", "/diagnostics", key="right/diagnostics")
    streamer = Streamer(peer, {"front": "jpeg", "wrist": "png"}, pose="tf")

    def points(msg: Any) -> np.ndarray:
        return M.trajectory_to_arrays(msg)[1]

    try:
        # disabled: one-point trajectories holding the EE pose from TF (base_link -> arm_base -> ee_link)
        wait_for(lambda: len(peer.got(trajectories)) >= 3, 120, "the first (stop) trajectories", proc, log)
        first = peer.got(trajectories)[-1]
        assert first.header.frame_id == "base_link" and len(first.points) == 1
        np.testing.assert_allclose(points(first)[0], [0.4, 0.0, 0.3], atol=1e-6)
        res = peer.call("std_srvs/srv/SetBool", "/arm2/right/enable", F("std_srvs/srv/SetBool").Request(data=True))
        assert res.success, res.message
        t_on = time.monotonic()
        wait_for(lambda: any(len(m.points) > 1 for m in peer.got(trajectories, since=t_on)), 30, "a policy trajectory", proc, log)
        wait_for(lambda: any(d.status and d.status[0].name == "arm2/right: policy" for d in peer.got(diags)), 10, "diagnostics of arm2/right",
                 proc, log)
        assert any("policy node up" in s for s in rosout_from(peer, rosout, "arm2.right"))

        code = end(proc, signal.SIGTERM)
        time.sleep(0.3)
        output = _tail(log, 100_000)
        assert code == 0, output
        assert "Traceback" not in output and "InvalidHandle" not in output and "never retrieved" not in output, output
        final = peer.got(trajectories)[-1]
        assert len(final.points) == 1, "the last trajectory after SIGTERM is not a stop (a one-point hold)"
        np.testing.assert_allclose(points(final)[0], [0.4, 0.0, 0.3], atol=1e-6)
        for m in peer.got(trajectories):
            t_ns, pos, quat = M.trajectory_to_arrays(m)
            assert np.all(np.isfinite(pos)) and np.all(np.isfinite(quat)) and np.all(np.diff(t_ns) > 0)
    finally:
        streamer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------------
# In process: pose output and the lifecycle shutdown transition; errors name the renamed node
# --------------------------------------------------------------------------------------------------


def test_lifecycle_node_in_process_pose_output_and_shutdown_transition(checkpoint: Path, peer: Peer):
    from lifecycle_msgs.msg import Transition
    from rclpy.parameter import Parameter

    from ros_nodes.lifecycle_node import PolicyLifecycleNode

    node = PolicyLifecycleNode("policy_node", context=peer.context, cli_args=["--ros-args", "-r", "__node:=inproc"], parameter_overrides=[
        Parameter("checkpoint", value=str(checkpoint)), Parameter("output_mode", value="pose"), Parameter("threads", value=1),
        Parameter("runtime.control_rate_hz", value=RATE_HZ), Parameter("runtime.sync_tolerance_s", value=0.1),
        Parameter("topics.pose", value="inproc/cmd/pose")])
    peer.add_node(node)
    poses = peer.record("geometry_msgs/msg/PoseStamped", "/inproc/cmd/pose", key="inproc/pose")
    streamer = None

    def change(transition: int) -> bool:
        req = F("lifecycle_msgs/srv/ChangeState").Request()
        req.transition.id = transition
        return peer.call("lifecycle_msgs/srv/ChangeState", "/inproc/change_state", req).success

    def position(msg: Any) -> np.ndarray:
        p = msg.pose.position
        return np.array([p.x, p.y, p.z])

    try:
        assert node.get_name() == "inproc" and node.transport.name == "inproc"
        assert change(Transition.TRANSITION_CONFIGURE) and change(Transition.TRANSITION_ACTIVATE)
        time.sleep(0.5)
        assert not peer.got(poses), "a pose target before any EE pose: it would be made up"
        streamer = Streamer(peer, {"front": "rgb8", "wrist": "bgr8"})
        wait_for(lambda: len(peer.got(poses)) >= 3, 20, "stop targets")
        np.testing.assert_allclose(position(peer.got(poses)[-1]), [0.4, 0.0, 0.3], atol=1e-9)  # the stop holds the measured pose
        node.policy_node.handle_enable(True)
        t_on = time.monotonic()
        wait_for(lambda: any(np.any(np.abs(position(m) - [0.4, 0, 0.3]) > 1e-9) for m in peer.got(poses, since=t_on)), 30, "a policy target")
        step = 0.25 / RATE_HZ  # the default speed limit over one period
        assert all(np.linalg.norm(position(m) - [0.4, 0, 0.3]) <= step + 1e-6 for m in peer.got(poses))
        # the shutdown transition over its service, from active: the final stop, then finalized
        assert change(Transition.TRANSITION_ACTIVE_SHUTDOWN)
        time.sleep(0.3)
        np.testing.assert_allclose(position(peer.got(poses)[-1]), [0.4, 0.0, 0.3], atol=1e-9)
        assert node.state == "finalized" and node.transport._stop.is_set()
        n = len(peer.got(poses))
        time.sleep(0.3)
        assert len(peer.got(poses)) == n, "commands after shutdown"
        for m in peer.got(poses):
            q = m.pose.orientation
            assert np.all(np.isfinite(position(m))) and np.all(np.isfinite([q.x, q.y, q.z, q.w]))
    finally:
        if streamer is not None:
            streamer.close()
        peer.destroy_added(node)


def test_one_thread_runs_the_callbacks_unless_the_environment_picks_another_executor(monkeypatch: pytest.MonkeyPatch):
    from rclpy.executors import SingleThreadedExecutor

    from ros_nodes.transport.rclpy_backend import make_executor
    from vit_policy.config import ConfigError

    try:
        from rclpy.experimental import EventsExecutor  # noqa: F401
        default = "EventsExecutor"
    except ImportError:  # Humble
        default = "SingleThreadedExecutor"
    context = Context()
    rclpy.init(context=context, **NO_SIGNAL_HANDLERS)
    try:
        monkeypatch.delenv("VIT_POLICY_EXECUTOR", raising=False)
        executors = [make_executor(context)]
        assert type(executors[-1]).__name__ == default
        for kind, cls in (("single", SingleThreadedExecutor), ("multi", MultiThreadedExecutor)):
            monkeypatch.setenv("VIT_POLICY_EXECUTOR", kind)
            executors.append(make_executor(context))
            assert isinstance(executors[-1], cls)
        monkeypatch.setenv("VIT_POLICY_EXECUTOR", "threads")
        with pytest.raises(ConfigError, match="VIT_POLICY_EXECUTOR='threads': expected one of events, single, multi"):
            make_executor(context)
        for executor in executors:
            executor.shutdown()
    finally:
        rclpy.try_shutdown(context=context)


def test_errors_name_the_renamed_node(checkpoint: Path, peer: Peer):
    from rclpy.parameter import Parameter

    from ros_nodes.policy_node import parameter_defaults, parameter_descriptions
    from ros_nodes.lifecycle_node import PolicyLifecycleNode
    from vit_policy.config import ConfigError

    node = PolicyLifecycleNode("policy_node", context=peer.context, cli_args=["--ros-args", "-r", "__node:=right_arm"],
                               parameter_overrides=[Parameter("checkpoint", value=str(checkpoint)), Parameter("runtime.control_rate", value=5.0)])
    try:
        with pytest.raises(ConfigError, match="unknown parameter 'runtime.control_rate' for node 'right_arm'; did you mean"):
            node.transport.parameters(parameter_defaults(), parameter_descriptions())
        node.trigger_configure()
        assert node.policy_node is None and node.state == "unconfigured"
        assert node.transport.log.name == "right_arm" and node.get_logger().name == "right_arm"
    finally:
        node.destroy_node()


def test_tf2_msgs_built_from_its_definition_is_the_distributions(peer: Peer):
    """Same CDR as rosbags' serializer (so the same wire format) and the type hash of the ROS 2 distribution."""
    from rclpy.serialization import deserialize_message, serialize_message
    from rosbags.typesys import Stores, get_typestore

    from ros_nodes.transport.rclpy_types import ensure

    ensure("tf2_msgs")
    ts = get_typestore(Stores.ROS2_HUMBLE)
    rb = M.rosbags_factory(ts)

    def build(f: Any) -> Any:
        stamp, quat = 1_700_000_000_123_456_789, [0, 0, 0.38268343, 0.92387953]
        return M.make_tf_message(f, [M.make_transform_stamped(f, stamp, "base_link", "arm_base", [0.1, -0.2, 0.3], quat),
                                     M.make_transform_stamped(f, 5, "arm_base", "ee_link", [0.3, 0, 0.2], [1.0, 0, 0, 0])])

    ours, theirs = serialize_message(build(F)), bytes(ts.serialize_cdr(build(rb), "tf2_msgs/msg/TFMessage"))
    # equal but for the alignment padding, which Fast CDR leaves unset: each side reads the other's bytes
    assert len(ours) == len(theirs)
    assert bytes(ts.serialize_cdr(ts.deserialize_cdr(ours, "tf2_msgs/msg/TFMessage"), "tf2_msgs/msg/TFMessage")) == theirs
    assert deserialize_message(theirs, F("tf2_msgs/msg/TFMessage")) == build(F)
    pub = peer.publisher("tf2_msgs/msg/TFMessage", "/tf_type_hash_check")
    try:
        info = peer.node.get_publishers_info_by_topic("/tf_type_hash_check")
        assert info and str(info[0].topic_type_hash) == TFMESSAGE_HASH
    finally:
        peer.node.destroy_publisher(pub)


def test_rclpy_starts_with_nothing_sourced(tmp_path: Path):
    """What CI does: a clean environment (no setup.bash, no LD_LIBRARY_PATH); the pip wheels set themselves up."""
    from ros_nodes.transport.rclpy_types import wheel_prefix

    if wheel_prefix() is None:
        pytest.skip("rclpy comes from a sourced ROS 2 install here, not from the pip wheels")
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)), "ROS_LOG_DIR": str(tmp_path),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    code = ("import rclpy; from rclpy.node import Node; import sensor_msgs.msg, std_srvs.srv, lifecycle_msgs.srv, diagnostic_msgs.msg, "
            "trajectory_msgs.msg, rcl_interfaces.msg, rosgraph_msgs.msg; rclpy.init(domain_id=0); n = Node('clean'); "
            "n.create_publisher(sensor_msgs.msg.Image, 'x', 1); print('ok', n.get_fully_qualified_name()); n.destroy_node(); rclpy.shutdown()")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "ok /clean" in run.stdout, run.stdout + run.stderr


def test_package_xml_lists_the_ros_packages_the_code_uses():
    """exec_depend: every ROS package the node, its rclpy transport and the launch file import or name a type of; no other.

    Left out of the scan: the DDS backend (its types come from the rosbags typestore, no ROS package) and
    rclpy_types.py (the rosidl generators it imports exist only with the pip wheels, never in a ROS build).
    """
    import re
    import xml.etree.ElementTree as ET

    listed = {e.text for e in ET.parse(ROOT / "package.xml").getroot().iter("exec_depend")}
    ros_listed = {p for p in listed if not p.startswith("python3-")}
    skip = {ROOT / "ros_nodes/transport/dds_backend.py", ROOT / "ros_nodes/transport/rclpy_types.py"}
    named = {"rclpy", "launch", "launch_ros", "ament_index_python", "tf2_ros", "tf2_py", "message_filters", "cv_bridge"}
    used: set[str] = set()
    for folder in ("ros_nodes", "vit_policy", "launch"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path in skip:
                continue
            text = path.read_text()
            used.update(m.group(1) for m in re.finditer(r'"([a-z0-9_]+)/(?:msg|srv|action)/[A-Z]\w*"', text))
            for m in re.finditer(r"^\s*(?:import|from)\s+([a-z0-9_]+)", text, re.M):
                if m.group(1) in named or re.search(r"_(msgs|srvs|interfaces)$", m.group(1)):
                    used.add(m.group(1))
    assert ros_listed == used, f"package.xml lists {sorted(ros_listed - used)} unused; misses {sorted(used - ros_listed)}"
    assert {"python3-numpy", "python3-scipy", "python3-yaml", "python3-pil"} <= listed


def test_tf2_msgs_without_a_compiler_is_a_clear_error(tmp_path: Path):
    """No cc / c++ (and no cached build): configure fails saying what pose_source: tf needs, not a ModuleNotFoundError."""
    from ros_nodes.transport.rclpy_types import wheel_prefix

    if wheel_prefix() is None:
        pytest.skip("tf2_msgs comes from the sourced ROS 2 install here")
    code = ("from ros_nodes.transport.rclpy_backend import RclpyFactory\n"
            "try:\n    RclpyFactory()('tf2_msgs/msg/TFMessage')\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n")
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "MissingPackage" in run.stdout and "'tf2_msgs' has no pip wheel" in run.stdout and "C compiler" in run.stdout, run.stdout + run.stderr
    assert "source a ROS 2 install" in run.stdout and "pose_source: pose" in run.stdout
