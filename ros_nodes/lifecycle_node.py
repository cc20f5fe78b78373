"""The policy node as an rclpy lifecycle node: ``ros2 run vit_policy policy_node`` / ``ros2 launch``.

Transitions (standard lifecycle services): configure declares the parameters and loads the model,
activate starts the control timer and the inference worker, deactivate publishes a stop and pauses,
cleanup drops the model, shutdown publishes a final stop and ends the process. With the parameter
``autostart`` (default true) the node walks itself to active; false leaves the transitions to a
lifecycle manager. Where rclpy has no ``rclpy.lifecycle`` the node configures and activates at once.
The node's logic is :class:`ros_nodes.policy_node.PolicyNode`; the rclpy transport only moves messages.
"""

from __future__ import annotations

import sys
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor

from ros_nodes.policy_node import NODE_NAME, PolicyNode, config_from_parameters, parameter_defaults, parameter_descriptions, run
from ros_nodes.transport.rclpy_backend import NO_SIGNAL_HANDLERS, RclpyTransport

try:  # rclpy.lifecycle exists from Humble on
    from rclpy.lifecycle import Node as LifecycleNode
    from rclpy.lifecycle import State, TransitionCallbackReturn
except ImportError:  # pragma: no cover - older distributions
    LifecycleNode = None  # type: ignore[assignment,misc]


if LifecycleNode is not None:

    class PolicyLifecycleNode(LifecycleNode):  # type: ignore[misc,valid-type]
        """configure: parameters + model; activate: control timer + worker; deactivate: stop and pause;
        cleanup: drop the model; shutdown: final stop, then :meth:`RclpyTransport.spin` returns."""

        def __init__(self, name: str, **kwargs: Any) -> None:
            super().__init__(name, **kwargs)
            self.declare_parameter("autostart", True, ParameterDescriptor(
                description="configure and activate at start-up (false: wait for a lifecycle manager)", read_only=True))
            self.transport = RclpyTransport(self.get_name(), self.get_namespace(), node=self)
            self.policy_node: Any = None

        @property
        def state(self) -> str:
            """The lifecycle state's label: unconfigured, inactive, active, finalized."""
            return str(self._state_machine.current_state[1])

        def on_configure(self, state: State) -> TransitionCallbackReturn:
            try:
                cfg = config_from_parameters(self.transport.parameters(parameter_defaults(), parameter_descriptions()))
                self.policy_node = PolicyNode(self.transport, cfg)
            except Exception as exc:  # any failure leaves the node unconfigured, with the reason in the log
                self.transport.destroy_entities()
                self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
                return TransitionCallbackReturn.FAILURE
            return TransitionCallbackReturn.SUCCESS

        def on_activate(self, state: State) -> TransitionCallbackReturn:
            self.policy_node.start()
            return super().on_activate(state)

        def on_deactivate(self, state: State) -> TransitionCallbackReturn:
            self.policy_node.pause()
            self.get_logger().info("deactivated: stop published, control paused")
            return super().on_deactivate(state)

        def on_cleanup(self, state: State) -> TransitionCallbackReturn:
            self.policy_node.runner.shutdown()
            self.transport.destroy_entities()
            self.policy_node = None
            self.get_logger().info("cleaned up: model dropped")
            return TransitionCallbackReturn.SUCCESS

        def on_shutdown(self, state: State) -> TransitionCallbackReturn:
            if self.policy_node is not None:
                self.policy_node.shutdown()  # the final stop
                self.transport.flush()
            self.get_logger().info("shut down: final stop published")
            self.transport.request_stop()  # finalized: the process ends
            return TransitionCallbackReturn.SUCCESS


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ros2 run vit_policy policy_node``: parameters come from --ros-args."""
    argv = sys.argv if argv is None else argv
    rclpy.init(args=argv, **NO_SIGNAL_HANDLERS)  # RclpyTransport.spin handles SIGINT / SIGTERM
    if LifecycleNode is None:  # no lifecycle support: configure and activate at once
        return run(RclpyTransport(NODE_NAME))
    node = PolicyLifecycleNode(NODE_NAME)
    node.transport.route_logging()
    node.transport.install_signal_handlers()  # a signal while configuring: straight to the shutdown below
    code = 0
    try:
        if node.get_parameter("autostart").value:
            node.trigger_configure()
            if node.policy_node is None:
                node.get_logger().error("not configured: fix the parameters above and restart (or configure via lifecycle)")
                code = 1
            else:
                node.trigger_activate()
        if code == 0:
            node.transport.spin()
            if node.state != "finalized":
                node.trigger_shutdown()  # on_shutdown publishes the final stop
    finally:
        node.transport.unroute_logging()
        node.transport.restore_signals()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
