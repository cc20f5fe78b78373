"""The small interface the policy node is written against; one implementation per middleware binding.

The node only stores messages in callbacks, publishes from timers and answers enable / reset. Both
backends provide exactly that; message classes come from ``factory`` (``typename -> class``), so the
same :mod:`vit_policy.messages` builders serve both.
"""

from __future__ import annotations

import difflib
import logging
from abc import ABC, abstractmethod
from typing import Any, Callable, Literal

from vit_policy.config import ConfigError

QoSKind = Literal["sensor_data", "reliable", "latched"]


class Publisher(ABC):
    @abstractmethod
    def publish(self, msg: Any) -> None: ...


class Transport(ABC):
    """Subscriptions, publishers, timers, a clock and enable / reset requests for one node."""

    name: str
    namespace: str
    log: logging.Logger

    @property
    @abstractmethod
    def factory(self) -> Callable[[str], Any]:
        """``typename -> message class`` (e.g. "sensor_msgs/msg/Image")."""

    @abstractmethod
    def create_subscription(self, typename: str, topic: str, callback: Callable[[Any], None], qos: QoSKind = "reliable") -> Any: ...

    @abstractmethod
    def create_publisher(self, typename: str, topic: str, qos: QoSKind = "reliable") -> Publisher: ...

    @abstractmethod
    def create_timer(self, period_s: float, callback: Callable[[], None], name: str = "") -> Any:
        """Call ``callback`` every ``period_s`` seconds on its own thread / callback group."""

    @abstractmethod
    def cancel_timer(self, timer: Any) -> None:
        """Stop a timer made by :meth:`create_timer`."""

    @abstractmethod
    def now_ns(self) -> int:
        """The node clock (simulated time where use_sim_time is set)."""

    @abstractmethod
    def on_enable(self, callback: Callable[[bool], tuple[bool, str]]) -> None:
        """Route enable requests (rclpy: ~/enable SetBool service; DDS: policy/enable Bool topic)."""

    @abstractmethod
    def on_reset(self, callback: Callable[[], tuple[bool, str]]) -> None:
        """Route reset requests (rclpy: ~/reset Trigger service; DDS: policy/reset Empty topic)."""

    @abstractmethod
    def parameters(self, defaults: dict[str, Any], descriptions: dict[str, str]) -> dict[str, Any]:
        """Declare flat, dotted parameters with their defaults; return the values set for this node."""

    @abstractmethod
    def spin(self) -> None:
        """Process callbacks until shutdown (Ctrl-C or :meth:`shutdown`)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop spinning and the timers; publishing still works (the node's final stop goes out after this)."""

    def close(self) -> None:
        """Shut down and release the middleware's entities now, on this thread."""
        self.shutdown()


def check_parameter_names(params: dict[str, Any], defaults: dict[str, Any], node_name: str) -> None:
    """Raise ConfigError naming the first unknown parameter and the nearest valid one."""
    for name in params:
        if name not in defaults:
            near = difflib.get_close_matches(name, list(defaults), n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid parameters: {sorted(defaults)}"
            raise ConfigError(f"unknown parameter {name!r} for node {node_name!r}{hint}")
