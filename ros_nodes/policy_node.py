"""The ROS 2 policy node: cameras + EE pose in, arm and gripper commands out, over any transport.

Callbacks only convert a message and hand it to :class:`vit_policy.runtime.PolicyRunner` (which keeps
the latest of each input); inference runs on the runner's worker thread; a control timer publishes
one command per period; a diagnostics timer publishes /diagnostics. Disabled by default: until
enabled (``~/enable`` service on rclpy, ``policy/enable`` topic on DDS) only stop commands leave.

    ros2 run vit_policy policy_node --ros-args --params-file configs/ros/policy_node.yaml -p checkpoint:=/path/ckpt
    vit-policy serve --transport dds --config configs/ros/policy_node.yaml checkpoint=/path/ckpt
"""

from __future__ import annotations

import array
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ros_nodes.configuration import NodeConfig
from ros_nodes.transport import make_transport
from ros_nodes.transport.base import Transport, check_parameter_names
from vit_policy import messages as M
from vit_policy.config import ConfigError, config_fields, from_dict, markdown_table, read_yaml, shown
from vit_policy.observation import ActionChunk
from vit_policy.inputs import InputSpec
from vit_policy.runtime import PolicyRunner
from vit_policy.safety import Command

if TYPE_CHECKING:
    from vit_policy.model.policy import Policy

NODE_NAME = "policy_node"
LATENCY_MEASURED = -1.0  # ROS parameters have no null: a negative inference_latency_s means "measured"

PARAMETER_FILE_HEADER = """\
# Parameters of the vit_policy ROS 2 policy node (README.md, "Reference: the ROS 2 node", lists each with type, unit and frame).
#   ros2 launch vit_policy policy.launch.py checkpoint:=/path/to/checkpoint
#   vit-policy serve --transport dds --config configs/ros/policy_node.yaml --checkpoint /path/to/checkpoint
# Keyed '/**' (every node), not 'policy_node': a namespace (-r __ns:=/arm, launch namespace:=arm) or a renamed
# node (-r __node:=left) would otherwise silently drop every value below.
# Made from NodeConfig's defaults and field descriptions (ros_nodes/configuration.py), with
#   python -c "from ros_nodes.policy_node import parameter_file; print(parameter_file(), end='')" > configs/ros/policy_node.yaml
# (tests/test_docs.py checks it is current): change a description there, not here.
"""


# --------------------------------------------------------------------------------------------------
# Parameters: NodeConfig <-> flat dotted ROS parameters
# --------------------------------------------------------------------------------------------------


def parameter_fields(cls: type = NodeConfig, prefix: str = "") -> dict[str, tuple[Any, Any, str]]:
    """Flat dotted parameter names -> (type hint, default, description) of a config dataclass.

    :func:`vit_policy.config.config_fields`, with a null default as LATENCY_MEASURED (ROS parameters have no null).
    """
    return {name: (hint, LATENCY_MEASURED if value is None else value, text)
            for name, (hint, value, text) in config_fields(cls, prefix).items()}


def parameter_defaults() -> dict[str, Any]:
    """Flat dotted parameter names and their defaults."""
    return {name: default for name, (_, default, _) in parameter_fields().items()}


def parameter_descriptions() -> dict[str, str]:
    """Flat dotted parameter names and their descriptions (the parameter descriptors' text)."""
    return {name: description for name, (_, _, description) in parameter_fields().items()}


def parameter_table() -> str:
    """The README's parameter table (Markdown), made from NodeConfig's defaults and field descriptions."""
    fields = parameter_fields()
    rows = markdown_table(fields, "parameter", lambda v: '`[""]` (none)' if isinstance(v, list) and not v else shown(v)).split("\n")
    rows.insert(2 + list(fields).index("instruction") + 1,
                "| `autostart` | bool | `true` | rclpy lifecycle node only: configure and activate at start-up |")
    return "\n".join(rows)


def parameter_file() -> str:
    """configs/ros/policy_node.yaml: every parameter at its default under ``/**: ros__parameters:``, its description above it."""
    import yaml

    lines = PARAMETER_FILE_HEADER.splitlines() + ["/**:", "  ros__parameters:"]
    section = ""
    for name, (_, default, description) in parameter_fields().items():
        *parents, leaf = name.split(".")
        if ".".join(parents) != section:
            section = ".".join(parents)
            lines.append(f"    {section}:")
        indent = "    " + "  " * len(parents)
        if name == "gripper_joints" and default == []:
            default = [""]  # a ROS parameter file cannot hold a typed empty list: [""] means none (config_from_parameters)
        value = yaml.safe_dump(default, default_flow_style=True, width=1000).strip().removesuffix("...").strip()
        lines += [f"{indent}# {description}", f"{indent}{leaf}: {value}"]
    return "\n".join(lines) + "\n"


def config_from_parameters(params: dict[str, Any]) -> NodeConfig:
    """Flat dotted parameters -> a validated NodeConfig."""
    nested: dict[str, Any] = {}
    for key, value in params.items():
        if key == "runtime.inference_latency_s" and value is not None and value < 0:
            value = None
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if key == "gripper_joints":  # a ROS parameter file cannot hold a typed empty list: [""] means none
            value = [j for j in value if j]
        node[leaf] = list(value) if isinstance(value, (tuple, array.array)) else value  # rclpy may hand arrays
    return from_dict(NodeConfig, nested)


def read_parameter_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """Flat parameters of ``node_name`` from a ROS 2 parameter file (``/**: ros__parameters: ...``).

    Sections apply as in rcl: the wildcards ``/**`` (any node: what configs/ros/policy_node.yaml uses, so
    a namespace or a renamed node keeps its values), then ``/**/<node>``, then ``<node>`` / ``/<node>``,
    later ones overriding earlier ones.
    """
    data = read_yaml(path)
    keys = [k for k in ("/**", "**", f"/**/{node_name}", node_name, f"/{node_name}") if k in (data or {})]
    if not keys:
        raise ConfigError(f"{path}: no '/**:' or '{node_name}:' section; a ROS 2 parameter file reads '/**: ros__parameters: ...'")

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in (d or {}).items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    params: dict[str, Any] = {}
    for key in keys:
        section = data[key]
        if not isinstance(section, dict) or "ros__parameters" not in section:
            raise ConfigError(f"{path}: '{key}' must hold 'ros__parameters:'")
        params.update(flat(section["ros__parameters"]))
    return params


# --------------------------------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------------------------------


def load_policy(cfg: NodeConfig, log: logging.Logger) -> tuple[Policy, bool]:
    """The checkpoint's policy, or (allow_untrained) a randomly initialised one. Returns (policy, untrained)."""
    import torch

    from vit_policy.deploy import accelerated, load_policy as load_backend
    from vit_policy.model.checkpoint import build_policy
    from vit_policy.model.configuration import load_policy_config
    from vit_policy.model.policy import identity_stats

    torch.set_num_threads(cfg.threads)
    if cfg.checkpoint:
        policy = load_backend(cfg.checkpoint, cfg.runtime, cfg.device)
        log.info("loaded checkpoint %s (backend %s)", cfg.checkpoint, cfg.runtime.backend)
        return policy, False
    if cfg.runtime.backend != "torch":
        raise ConfigError(f"runtime.backend: {cfg.runtime.backend} runs an exported checkpoint; allow_untrained builds a torch "
                          "model: set runtime.backend: torch, or give checkpoint: <exported dir>")
    policy = build_policy(load_policy_config(cfg.policy_config)).to(cfg.device).eval()
    policy.set_stats(identity_stats(policy.cfg))
    policy = accelerated(policy, cfg.runtime)
    log.warning("UNTRAINED policy from %s (random weights, identity statistics): for plumbing checks only", cfg.policy_config)
    return policy, True


class PolicyNode:
    """Subscriptions, control and diagnostics timers, publishers and enable / reset over a Transport."""

    def __init__(self, transport: Transport, cfg: NodeConfig, policy: Policy | None = None, untrained: bool = False) -> None:
        self.t, self.cfg, self.f, self.log = transport, cfg, transport.factory, transport.log
        if policy is None:
            policy, untrained = load_policy(cfg, self.log)
        self.policy, self.untrained = policy, untrained
        self.inputs = InputSpec.from_node(cfg, list(policy.cfg.cameras))
        self.runner = PolicyRunner(policy, cfg.runtime, cfg.safety, clock=transport.now_ns, inputs=self.inputs)
        self.runner.instruction = cfg.instruction or None
        self.period_ns = cfg.runtime.control_period_ns
        self.published = 0
        self._timers: list[Any] = []
        self._warned: set[str] = set()
        self._subscribe()
        topics = cfg.topics
        out = {"twist": ("geometry_msgs/msg/TwistStamped", topics.twist), "pose": ("geometry_msgs/msg/PoseStamped", topics.pose),
               "trajectory": ("trajectory_msgs/msg/MultiDOFJointTrajectory", topics.trajectory)}[cfg.output_mode]
        self.pub_cmd = transport.create_publisher(*out, qos="reliable")
        self.pub_gripper = transport.create_publisher("std_msgs/msg/Float64", topics.gripper, qos="reliable")
        self.pub_chunk = transport.create_publisher("trajectory_msgs/msg/MultiDOFJointTrajectory", topics.chunk, qos="reliable")
        self.pub_diag = transport.create_publisher("diagnostic_msgs/msg/DiagnosticArray", topics.diagnostics, qos="reliable")
        transport.on_enable(self.handle_enable)
        transport.on_reset(self.handle_reset)

    # ---- inputs -------------------------------------------------------------------------------------

    def _subscribe(self) -> None:
        """One subscription per topic the input router names; every message goes to the router."""
        assert self.runner.router is not None
        for topic, typename, qos in self.runner.router.subscriptions():
            self.t.create_subscription(typename, topic, lambda msg, t=topic: self._on_message(t, msg), qos)

    def _on_message(self, topic: str, msg: Any) -> None:
        why = self.runner.on_message(topic, msg)
        if why:
            key = why.split(":", 1)[0]
            if key not in self._warned:
                self._warned.add(key)
                self.log.warning("%s (further rejections are counted in /diagnostics)", why)

    # ---- enable / reset -------------------------------------------------------------------------------

    def handle_enable(self, on: bool) -> tuple[bool, str]:
        self.runner.set_enabled(on)
        if on and self.untrained:
            self.log.warning("ENABLED WITH AN UNTRAINED POLICY (random weights): the arm will move meaninglessly")
        text = "enabled: commanding from the policy" if on else "disabled: stop commands only"
        self.log.info(text)
        return True, text

    def handle_reset(self) -> tuple[bool, str]:
        self.runner.reset()
        text = "reset: chunks, pose history and faults cleared"
        self.log.info(text)
        return True, text

    # ---- outputs ------------------------------------------------------------------------------------

    def control_step(self) -> Command:
        """One control tick: the runner's command, published in the output mode."""
        cmd = self.runner.tick(self.t.now_ns())
        self.publish(cmd)
        return cmd

    def publish(self, cmd: Command) -> None:
        f, frame, stamp = self.f, self.cfg.base_frame, cmd.stamp_ns
        mode = self.cfg.output_mode
        if mode == "twist":
            self.pub_cmd.publish(M.make_twist_stamped(f, stamp, frame, cmd.linear, cmd.angular))
        elif not cmd.has_target:
            pass  # no valid pose yet: a pose or trajectory target would be made up, so nothing is published
        elif mode == "pose":
            self.pub_cmd.publish(M.make_pose_stamped(f, stamp, frame, cmd.target_position, cmd.target_quaternion))
        else:
            chunk = cmd.chunk if cmd.chunk is not None and not cmd.is_stop else hold_chunk(cmd, self.period_ns)
            self.pub_cmd.publish(M.make_trajectory(f, chunk, stamp, frame))
        if cmd.gripper is not None:
            self.pub_gripper.publish(M.make_float64(f, cmd.gripper))
        if cmd.chunk is not None:
            self.pub_chunk.publish(M.make_trajectory(f, cmd.chunk, stamp, frame))
        self.published += 1

    def diagnostics_step(self) -> None:
        d = self.runner.diagnostics(self.t.now_ns())
        level = {"ok": M.DIAG_OK, "disabled": M.DIAG_OK, "waiting": M.DIAG_WARN, "stale": M.DIAG_WARN}.get(d["status"], M.DIAG_ERROR)
        values: dict[str, Any] = {"status": d["status"], "enabled": d["enabled"], "untrained": self.untrained, "fault": d["fault"],
                                  "output_mode": self.cfg.output_mode, "inferences": d["inferences"], "ticks": d["ticks"],
                                  "overruns": d["overruns"], "rejected_total": d["rejected_total"], "last_rejection": d["last_rejection"],
                                  "inference_latency_ms_p50": _fmt(d["latency_ms_p50"]), "inference_latency_ms_p99": _fmt(d["latency_ms_p99"]),
                                  "dropped_frames": d["dropped_frames"], "last_drop": d["last_drop"], "ticks_ok": d["ticks_ok"],
                                  "input_lag_ms_p50": _fmt(d["input_lag_ms_p50"]), "input_lag_ms_p99": _fmt(d["input_lag_ms_p99"]),
                                  "stop_target": self._stop_target()}
        for name, v in d["inputs"].items():
            values.update({f"{name}.age_ms": _fmt(v["age_ms"]), f"{name}.rate_hz": _fmt(v["rate_hz"]),
                           f"{name}.received": v["received"], f"{name}.rejected": v["rejected"],
                           f"{name}.clock_offset_ms": _fmt(v["clock_offset_ms"])})
        ood = d["ood"]  # out-of-distribution monitor (vit_policy/ood.py)
        values.update({"ood.monitor": ood["monitor"], "ood.stop": ood["stop"], "ood.out": ood.get("out", "")})
        for cam, v in ood.get("cameras", {}).items():
            values.update({f"ood.{cam}.score": _fmt(v["score"]), f"ood.{cam}.threshold": _fmt(v["threshold"]),
                           f"ood.{cam}.frames_out": v["frames_out"]})
        for name in set(self.runner.rejected) - set(d["inputs"]):
            values[f"{name}.rejected"] = self.runner.rejected[name]
        status_name = f"{node_path(self.t)}: policy"
        self.pub_diag.publish(M.make_diagnostic_array(self.f, self.t.now_ns(), status_name, level, d["reason"] or d["status"], values))

    def _stop_target(self) -> str:
        """What a stop publishes on the target, in words for /diagnostics."""
        if self.cfg.output_mode == "twist":
            return "zero twist"
        if self.runner.sync.latest_pose() is None:
            return "nothing: no valid EE pose yet"
        if self.cfg.safety.stop_mode == "hold_pose":
            return "the measured pose latched when the stop began (rejected poses never replace it)"
        return "the last valid measured pose (rejected poses never replace it)"

    # ---- life cycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the inference worker and the control and diagnostics timers."""
        if not self.cfg.runtime.synchronous:
            self.runner.start()
        self._timers = [self.t.create_timer(1.0 / self.cfg.runtime.control_rate_hz, self.control_step, "control"),
                        self.t.create_timer(1.0 / self.cfg.diagnostics_rate_hz, self.diagnostics_step, "diagnostics")]
        self.log.info("policy node up: cameras %s, output %s, %.1f Hz, disabled until enabled", self.runner.cameras,
                      self.cfg.output_mode, self.cfg.runtime.control_rate_hz)

    def pause(self) -> None:
        """Disable, publish a stop, stop the timers and the worker (lifecycle deactivate); start() resumes."""
        self.runner.set_enabled(False)
        for timer in self._timers:
            self.t.cancel_timer(timer)
        self._timers = []
        self.runner.stop()
        self.publish(self.runner.tick(self.t.now_ns()))

    def shutdown(self) -> None:
        """Publish a final stop and stop the worker."""
        for timer in self._timers:
            self.t.cancel_timer(timer)
        self._timers = []
        self.runner.shutdown()
        try:
            self.publish(self.runner.tick(self.t.now_ns()))
        except Exception:  # the middleware may already be gone
            pass


def node_path(t: Transport) -> str:
    """The node's namespace and name without the leading slash ("arm/left", "policy_node"): two arms' diagnostics differ."""
    return "/".join(p for p in (t.namespace.strip("/"), t.name) if p)


def hold_chunk(cmd: Command, period_ns: int) -> ActionChunk:
    """A one-point chunk holding ``cmd``'s target one period ahead: the trajectory form of a stop."""
    return ActionChunk(cmd.stamp_ns, period_ns, cmd.target_position, cmd.target_quaternion,
                       np.zeros((1, 3)), np.zeros((1, 3)), np.array([cmd.gripper]))


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}"


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def run(transport: Transport) -> int:
    """Declare parameters on ``transport``, build the node, spin until shutdown."""
    params = transport.parameters(parameter_defaults(), parameter_descriptions())
    cfg = config_from_parameters(params)
    node = PolicyNode(transport, cfg)
    node.start()
    try:
        transport.spin()
    finally:
        node.shutdown()
        transport.close()
    return 0


def serve(transport: str, config: str | None = None, overrides: list[str] | None = None, namespace: str = "",
          node_name: str = NODE_NAME, use_sim_time: bool = False) -> int:
    """``vit-policy serve``: parameters from a ROS 2 parameter file plus ``name=value`` overrides, then spin."""
    import signal

    import yaml

    params = read_parameter_file(config, node_name) if config else {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected name=value (for example checkpoint=/path/to/ckpt)")
        key, raw = item.split("=", 1)
        params[key.strip()] = yaml.safe_load(raw)
    defaults = parameter_defaults()
    check_parameter_names(params, defaults, node_name)
    config_from_parameters({**defaults, **params})  # fail on bad values before any middleware starts

    t = make_transport(transport, node_name, namespace, use_sim_time, params)
    signal.signal(signal.SIGTERM, lambda *_: t.shutdown())
    return run(t)


if __name__ == "__main__":  # python -m ros_nodes.policy_node --ros-args ...: the rclpy lifecycle node
    from ros_nodes.lifecycle_node import main

    sys.exit(main())
