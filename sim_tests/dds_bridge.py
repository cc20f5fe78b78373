"""Simulator in the loop over DDS: the MuJoCo Fetch arm as a ROS 2 robot, the real node in its own process.

The bridge is the robot side of the wire. Every 40 ms of wall time it steps the simulator under the
latest command it received and publishes what a robot driver publishes, stamped with the wall clock:

  /camera/<cam>/image_raw  sensor_msgs/Image rgb8 (sensor-data QoS)
  /ee_pose                 geometry_msgs/PoseStamped in base_link
  /joint_states            sensor_msgs/JointState (the two finger joints)

and subscribes to the node's ``/cmd/pose`` (PoseStamped target) and ``/cmd/gripper`` (Float64). The
bridge always speaks CycloneDDS (the DDS backend). The node is ``vit-policy serve --transport dds`` or
``--transport rclpy`` (Fast DDS, the middleware of ROS 2's default install and of the pip wheels)
started with :func:`start_node`, in another process, so the messages cross a real DDS participant
boundary on loopback in ROS 2 wire format; with rclpy, between two DDS implementations (the DDS
backend applies Cyclone's ``IgnoreTypeInformation`` setting so that Fast DDS's images and joint states
match). The DDS node is enabled and reset through its ``/policy/enable`` and ``/policy/reset`` topics,
the rclpy node through its ``/policy_node/enable`` and ``/policy_node/reset`` services, called by an
rclpy client in the bridge's process (:class:`RclpySwitches`), as an operator's ``ros2 service call``.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim_tests.configuration import SimConfig
from sim_tests.node_process import spawn_node, stop_node
from sim_tests.fetch_env import FINGER_JOINTS, GRIPPER_RANGE, ArmCommand, FetchSim
from sim_tests.record import camera_topic
from vit_policy import messages as M


# The bridge streams every sensor once per 40 ms step on wall time, so two poses can arrive up to about
# 100 ms apart when the host is busy; the timing rule accepts poses up to 2 x sync_tolerance apart. The
# recorded sim (one pose per step on exact sim time) keeps its own 20 ms.
BRIDGE_SYNC_TOLERANCE_S = 0.05


def node_parameters(cfg: SimConfig, checkpoint: str | Path, threads: int = 1) -> dict[str, Any]:
    """The policy node's ROS parameters for this simulator: pose output, the recorded frame and finger joints, the sim's limits."""
    rt, sf = cfg.runtime, cfg.safety
    return {"policy_node": {"ros__parameters": {
        "checkpoint": str(checkpoint), "threads": threads, "output_mode": "pose", "base_frame": cfg.base_frame,
        "gripper_joints": list(FINGER_JOINTS), "gripper_closed": GRIPPER_RANGE[0], "gripper_open": GRIPPER_RANGE[1],
        "runtime": {"control_rate_hz": rt.control_rate_hz, "sync_tolerance_s": BRIDGE_SYNC_TOLERANCE_S,
                    "max_age_s": rt.max_age_s, "strategy": rt.strategy, "execute_steps": rt.execute_steps,
                    "ensemble_m": rt.ensemble_m, "inference_latency_s": -1.0, "synchronous": False},
        "safety": {"workspace_min": list(sf.workspace_min), "workspace_max": list(sf.workspace_max),
                   "max_linear_speed": sf.max_linear_speed, "max_angular_speed": sf.max_angular_speed,
                   "max_step": sf.max_step, "stop_mode": sf.stop_mode},
    }}}


def start_node(cfg: SimConfig, checkpoint: str | Path, workdir: Path, domain_id: int, threads: int = 1,
               transport: str = "dds") -> subprocess.Popen:
    """The policy node for this simulator in its own process (``vit-policy serve --transport``), on domain ``domain_id``."""
    return spawn_node(node_parameters(cfg, checkpoint, threads), workdir, domain_id, threads, transport=transport)


class RclpySwitches:
    """The rclpy node's ``~/enable`` (std_srvs/SetBool) and ``~/reset`` (std_srvs/Trigger) services, called
    from a plain rclpy node on its own context; each call waits for the node's answer."""

    def __init__(self, domain_id: int, node: str = "/policy_node", timeout_s: float = 60.0) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from std_srvs.srv import SetBool, Trigger

        from ros_nodes.transport.rclpy_backend import NO_SIGNAL_HANDLERS

        self.timeout_s = timeout_s
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id, **NO_SIGNAL_HANDLERS)
        self.node = rclpy.create_node("fetch_sim_switches", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.SetBool, self.Trigger = SetBool, Trigger
        self.enable = self.node.create_client(SetBool, f"{node}/enable")
        self.reset = self.node.create_client(Trigger, f"{node}/reset")

    def _call(self, client: Any, request: Any) -> None:
        if not client.wait_for_service(timeout_sec=self.timeout_s):
            raise TimeoutError(f"service {client.srv_name} did not appear within {self.timeout_s:.0f} s")
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=self.timeout_s)
        if not future.done() or not future.result().success:
            raise RuntimeError(f"service {client.srv_name}: {'no answer' if not future.done() else future.result().message}")

    def set_enabled(self, on: bool) -> None:
        self._call(self.enable, self.SetBool.Request(data=bool(on)))

    def reset_node(self) -> None:
        self._call(self.reset, self.Trigger.Request())

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@dataclass
class BridgeEpisode:
    seed: int
    success: bool  # at the last step
    reached: bool  # the goal was reached at some step
    first_success_step: int | None
    steps: int
    commands: int  # cmd/pose messages received during the episode
    policy_commands: int  # of which came from the policy (a policy/chunk accompanied them), not stops
    non_finite_commands: int
    late_steps: int  # steps that started more than one period late (CPU contention)


class DDSSimBridge:
    """The simulated arm on DDS: sensors out, commands in, at the simulator's 25 Hz in wall time."""

    def __init__(self, cfg: SimConfig, domain_id: int, switches: RclpySwitches | None = None) -> None:
        from ros_nodes.transport.dds_backend import DDSTransport

        self.cfg = cfg
        self.sim = FetchSim(cfg)
        self.t = DDSTransport("fetch_sim", domain_id=domain_id)
        f = self.t.factory
        self.f = f
        self.pub_images = {c: self.t.create_publisher("sensor_msgs/msg/Image", camera_topic(c), "sensor_data") for c in cfg.cameras}
        self.pub_pose = self.t.create_publisher("geometry_msgs/msg/PoseStamped", "/ee_pose", "reliable")
        self.pub_joints = self.t.create_publisher("sensor_msgs/msg/JointState", "/joint_states", "reliable")
        self.pub_enable = self.t.create_publisher("std_msgs/msg/Bool", "/policy/enable", "reliable")
        self.pub_reset = self.t.create_publisher("std_msgs/msg/Empty", "/policy/reset", "reliable")
        self.switches = switches  # None: the DDS node's topics
        self._lock = threading.Lock()
        self.target: tuple[int, np.ndarray] | None = None  # (arrival ns, position + quaternion x y z w)
        self.gripper: float | None = None
        self.commands = 0
        self.chunks = 0  # policy/chunk messages: published only for commands that came from the policy
        self.non_finite = 0
        self.t.create_subscription("geometry_msgs/msg/PoseStamped", "/cmd/pose", self._on_pose, "reliable")
        self.t.create_subscription("std_msgs/msg/Float64", "/cmd/gripper", self._on_gripper, "reliable")
        self.t.create_subscription("trajectory_msgs/msg/MultiDOFJointTrajectory", "/policy/chunk", self._on_chunk, "reliable")

    # ---- commands in ------------------------------------------------------------------------------
    def _on_pose(self, msg: Any) -> None:
        p, q = msg.pose.position, msg.pose.orientation
        values = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], np.float64)
        with self._lock:
            self.commands += 1
            if not np.all(np.isfinite(values)):
                self.non_finite += 1  # never applied
                return
            self.target = (time.monotonic_ns(), values)

    def _on_chunk(self, msg: Any) -> None:
        with self._lock:
            self.chunks += 1

    def _on_gripper(self, msg: Any) -> None:
        g = float(msg.data)
        with self._lock:
            if not np.isfinite(g):
                self.non_finite += 1
                return
            self.gripper = g

    def _action(self, max_age_ns: int) -> ArmCommand:
        with self._lock:
            target, grip = self.target, self.gripper
        if target is None or time.monotonic_ns() - target[0] > max_age_ns:
            return ArmCommand(is_stop=True)  # no fresh command: hold, as a driver's command timeout would
        return ArmCommand(target_position=target[1][:3], target_quaternion=target[1][3:], gripper=grip)

    # ---- sensors out -------------------------------------------------------------------------------
    def publish(self, frame: Any) -> None:
        now = time.time_ns()
        for cam, rgb in frame.images.items():
            self.pub_images[cam].publish(M.rgb_to_image(self.f, rgb, now, f"{cam}_optical_frame", "rgb8"))
        self.pub_joints.publish(M.make_joint_state(self.f, now, list(FINGER_JOINTS), frame.finger_positions.tolist()))
        self.pub_pose.publish(M.make_pose_stamped(self.f, now, self.cfg.base_frame, frame.position, frame.quaternion))

    def set_enabled(self, on: bool) -> None:
        if self.switches is not None:
            self.switches.set_enabled(on)
        else:
            self.pub_enable.publish(self.f("std_msgs/msg/Bool")(data=bool(on)))

    def reset_node(self) -> None:
        if self.switches is not None:
            self.switches.reset_node()
        else:
            self.pub_reset.publish(self.f("std_msgs/msg/Empty")(structure_needs_at_least_one_member=0))

    def wait_for_node(self, proc: subprocess.Popen | None, timeout_s: float = 120.0) -> None:
        """Stream the reset pose until the node answers with commands (it publishes stops while disabled)."""
        frame = self.sim.reset(seed=0)
        end = time.monotonic() + timeout_s
        while self.commands == 0:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the policy node exited with code {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}")
            if time.monotonic() > end:
                raise TimeoutError(f"no command from the policy node on /cmd/pose within {timeout_s:.0f} s")
            self.publish(frame)
            time.sleep(self.sim.dt)

    def run_episode(self, seed: int, settle_s: float = 0.3) -> BridgeEpisode:
        """Reset the sim and the node, enable it, run ``episode_steps`` steps paced at 40 ms of wall time."""
        frame = self.sim.reset(seed=seed)
        self.set_enabled(False)
        self.reset_node()
        with self._lock:
            self.target, self.gripper = None, None
        t_end = time.monotonic() + settle_s  # let the reset land; keep the sensors streaming meanwhile
        while time.monotonic() < t_end:
            self.publish(frame)
            time.sleep(self.sim.dt)
        with self._lock:
            self.target = None
            commands0, chunks0, bad0 = self.commands, self.chunks, self.non_finite
        self.set_enabled(True)
        period = self.sim.dt
        max_age = int(self.cfg.runtime.max_age_s * 1e9)
        first, late, reached = None, 0, False
        next_t = time.monotonic()
        while not self.sim.done:
            self.publish(frame)
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                late += 1
                next_t = time.monotonic()
            frame = self.sim.step(self._action(max_age))
            if frame.success:
                reached = True
                first = self.sim.steps if first is None else first
        self.publish(frame)
        self.set_enabled(False)
        with self._lock:
            cmds, chunks, bad = self.commands - commands0, self.chunks - chunks0, self.non_finite - bad0
        return BridgeEpisode(seed, bool(frame.success), reached, first, self.sim.steps, cmds, chunks, bad, late)

    def close(self) -> None:
        try:
            self.set_enabled(False)
        finally:
            if self.switches is not None:
                self.switches.close()
            self.t.close()
            self.sim.close()


def run_sim_in_the_loop(cfg: SimConfig, checkpoint: str | Path, episodes: int, workdir: Path, domain_id: int,
                        seed: int = 0, same_seed: bool = False, transport: str = "dds") -> tuple[list[BridgeEpisode], str]:
    """Start the node (on ``transport``), run ``episodes`` episodes (seeds seed, seed+1... or all ``seed``) over DDS.

    Returns the episodes and the node's log.
    """
    proc = start_node(cfg, checkpoint, workdir, domain_id, transport=transport)
    bridge = None
    results: list[BridgeEpisode] = []
    try:
        bridge = DDSSimBridge(cfg, domain_id, RclpySwitches(domain_id) if transport == "rclpy" else None)
        bridge.wait_for_node(proc)
        for i in range(episodes):
            results.append(bridge.run_episode(seed if same_seed else seed + i))
    finally:
        try:
            if bridge is not None:
                bridge.close()
        finally:
            out = stop_node(proc)
    return results, out
