"""rclpy transport: what runs on the robot (``ros2 run vit_policy policy_node`` / ``ros2 launch``).

* A lifecycle node where the installed rclpy has ``rclpy.lifecycle`` (Humble and later): configure
  declares the parameters and loads the model, activate starts the control timer and the inference
  worker, deactivate publishes a stop and pauses. With ``autostart`` (default true) the node walks
  itself to active; set it false to let a lifecycle manager drive the transitions.
* Parameters declared with descriptors (read only: they are fixed once configured).
* Topic names are relative (remappable) except the absolute defaults of the inputs; image QoS is
  sensor data by default (parameter ``image_qos``), commands are reliable.
* The control and diagnostics timers each have their own mutually exclusive callback group, the
  subscriptions another, under a MultiThreadedExecutor: a slow callback never delays a tick.
* Services ``~/enable`` (std_srvs/SetBool, default off) and ``~/reset`` (std_srvs/Trigger).
* Commands are stamped with the node clock; ``use_sim_time`` is honoured by that clock.
"""

from __future__ import annotations

import array
import importlib
import logging
from typing import Any, Callable

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data

from ros_nodes.transport.base import Publisher, QoSKind, Transport, check_parameter_names

ROS_OWN_PARAMETERS = ("use_sim_time", "autostart", "start_type_description_service")

try:
    from rclpy.executors import ExternalShutdownException
except ImportError:  # pragma: no cover - rclpy before Humble

    class ExternalShutdownException(Exception):  # type: ignore[no-redef]
        """Stand-in so the except clause below works on old rclpy."""


try:  # rclpy.lifecycle exists from Humble on
    from rclpy.lifecycle import Node as LifecycleNode
    from rclpy.lifecycle import State, TransitionCallbackReturn
except ImportError:  # pragma: no cover - older distributions
    LifecycleNode = None  # type: ignore[assignment,misc]


class RclpyFactory:
    """``typename -> rclpy message class``; uint8[] / float64[] as array.array (no per-element Python checks)."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def __call__(self, typename: str) -> Any:
        if typename not in self._cache:
            pkg, kind, name = typename.split("/")
            self._cache[typename] = getattr(importlib.import_module(f"{pkg}.{kind}"), name)
        return self._cache[typename]

    @staticmethod
    def uint8_array(data: bytes) -> array.array:
        return array.array("B", data)

    @staticmethod
    def float64_array(values: Any) -> array.array:
        return array.array("d", [float(v) for v in values])

    @staticmethod
    def byte_value(value: int) -> bytes:
        return bytes([value])


def _qos(kind: QoSKind) -> QoSProfile:
    if kind == "sensor_data":
        return qos_profile_sensor_data
    if kind == "latched":
        return QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    return QoSProfile(depth=10)  # reliable, volatile: the ROS default


class _Publisher(Publisher):
    def __init__(self, pub: Any) -> None:
        self.pub = pub

    def publish(self, msg: Any) -> None:
        self.pub.publish(msg)


class RclpyTransport(Transport):
    """The Transport interface over one rclpy node (plain or lifecycle)."""

    def __init__(self, name: str, namespace: str = "", use_sim_time: bool = False, params: dict[str, Any] | None = None,
                 node: Any = None) -> None:
        if not rclpy.ok():
            rclpy.init()
        if node is None:
            node = Node(name, namespace=namespace, parameter_overrides=overrides(params, use_sim_time))
        self.node, self.name, self.namespace = node, name, namespace
        self.log = logging.getLogger(name)
        self._factory = RclpyFactory()
        self._inputs = MutuallyExclusiveCallbackGroup()
        self._services = MutuallyExclusiveCallbackGroup()
        self._entities: list[tuple[str, Any]] = []

    @property
    def factory(self) -> RclpyFactory:
        return self._factory

    def create_subscription(self, typename: str, topic: str, callback: Callable[[Any], None], qos: QoSKind = "reliable") -> Any:
        sub = self.node.create_subscription(self._factory(typename), topic, callback, _qos(qos), callback_group=self._inputs)
        self._entities.append(("subscription", sub))
        return sub

    def create_publisher(self, typename: str, topic: str, qos: QoSKind = "reliable") -> Publisher:
        pub = self.node.create_publisher(self._factory(typename), topic, _qos(qos))
        self._entities.append(("publisher", pub))
        return _Publisher(pub)

    def create_timer(self, period_s: float, callback: Callable[[], None], name: str = "") -> Any:
        timer = self.node.create_timer(period_s, callback, callback_group=MutuallyExclusiveCallbackGroup())
        self._entities.append(("timer", timer))
        return timer

    def cancel_timer(self, timer: Any) -> None:
        timer.cancel()
        self.node.destroy_timer(timer)
        self._entities = [e for e in self._entities if e[1] is not timer]

    def now_ns(self) -> int:
        return int(self.node.get_clock().now().nanoseconds)

    def on_enable(self, callback: Callable[[bool], tuple[bool, str]]) -> None:
        from std_srvs.srv import SetBool

        def handle(request: Any, response: Any) -> Any:
            response.success, response.message = callback(bool(request.data))
            return response

        self._entities.append(("service", self.node.create_service(SetBool, "~/enable", handle, callback_group=self._services)))

    def on_reset(self, callback: Callable[[], tuple[bool, str]]) -> None:
        from std_srvs.srv import Trigger

        def handle(request: Any, response: Any) -> Any:
            response.success, response.message = callback()
            return response

        self._entities.append(("service", self.node.create_service(Trigger, "~/reset", handle, callback_group=self._services)))

    def parameters(self, defaults: dict[str, Any], descriptions: dict[str, str]) -> dict[str, Any]:
        """Declare every parameter (read only, with its description) and return the values in effect.

        rclpy silently ignores overrides nobody declares; a misspelt name in the parameter file is
        an error here instead (ROS's own parameters excepted).
        """
        given = [k for k in getattr(self.node, "_parameter_overrides", {}) if k not in ROS_OWN_PARAMETERS and not k.startswith("qos_overrides.")]
        check_parameter_names({k: None for k in given}, defaults, self.name)
        values = {}
        for name, default in defaults.items():
            if not self.node.has_parameter(name):
                value = [""] if isinstance(default, list) and not default else default  # an empty list has no ROS type
                # dynamic typing: 0 for 0.0 is accepted here and validated (with clear messages) by NodeConfig
                desc = ParameterDescriptor(description=descriptions.get(name, ""), read_only=True, dynamic_typing=True)
                self.node.declare_parameter(name, value, desc)
            values[name] = self.node.get_parameter(name).value
        return values

    def destroy_entities(self) -> None:
        """Destroy what this transport created (lifecycle cleanup)."""
        for kind, entity in reversed(self._entities):
            getattr(self.node, f"destroy_{kind}")(entity)
        self._entities = []

    def spin(self) -> None:
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(self.node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            executor.shutdown()

    def shutdown(self) -> None:
        if rclpy.ok():
            rclpy.try_shutdown()


def overrides(params: dict[str, Any] | None, use_sim_time: bool) -> list[Parameter]:
    out = [Parameter(k, value=v) for k, v in (params or {}).items()]
    if use_sim_time:
        out.append(Parameter("use_sim_time", value=True))
    return out


if LifecycleNode is not None:

    class PolicyLifecycleNode(LifecycleNode):  # type: ignore[misc,valid-type]
        """configure: parameters + model; activate: control timer + worker; deactivate: stop and pause."""

        def __init__(self, name: str, **kwargs: Any) -> None:
            super().__init__(name, **kwargs)
            self.declare_parameter("autostart", True, ParameterDescriptor(
                description="configure and activate at start-up (false: wait for a lifecycle manager)", read_only=True))
            self.transport = RclpyTransport(name, self.get_namespace(), node=self)
            self.policy_node: Any = None

        def on_configure(self, state: State) -> TransitionCallbackReturn:
            from ros_nodes.policy_node import DESCRIPTIONS, PolicyNode, config_from_parameters, parameter_defaults

            try:
                cfg = config_from_parameters(self.transport.parameters(parameter_defaults(), DESCRIPTIONS))
                self.policy_node = PolicyNode(self.transport, cfg)
            except Exception as exc:  # any failure leaves the node unconfigured, with the reason in the log
                self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
                return TransitionCallbackReturn.FAILURE
            return TransitionCallbackReturn.SUCCESS

        def on_activate(self, state: State) -> TransitionCallbackReturn:
            self.policy_node.start()
            return super().on_activate(state)

        def on_deactivate(self, state: State) -> TransitionCallbackReturn:
            self.policy_node.pause()
            return super().on_deactivate(state)

        def on_cleanup(self, state: State) -> TransitionCallbackReturn:
            self.policy_node.runner.shutdown()
            self.transport.destroy_entities()
            self.policy_node = None
            return TransitionCallbackReturn.SUCCESS

        def on_shutdown(self, state: State) -> TransitionCallbackReturn:
            if self.policy_node is not None:
                self.policy_node.shutdown()
            return TransitionCallbackReturn.SUCCESS


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ros2 run vit_policy policy_node``: parameters come from --ros-args."""
    from ros_nodes.policy_node import NODE_NAME, PolicyNode, run

    rclpy.init(args=argv)
    if LifecycleNode is None:  # no lifecycle support: configure and activate at once
        return run(RclpyTransport(NODE_NAME))
    node = PolicyLifecycleNode(NODE_NAME)
    if node.get_parameter("autostart").value:
        node.trigger_configure()
        if node.policy_node is None:
            node.get_logger().error("not configured: fix the parameters above and restart (or configure via lifecycle)")
            rclpy.try_shutdown()
            return 1
        node.trigger_activate()
    try:
        node.transport.spin()
    finally:
        if isinstance(node.policy_node, PolicyNode):
            node.policy_node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
