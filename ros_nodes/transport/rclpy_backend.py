"""rclpy transport: what runs on the robot (``ros2 run vit_policy policy_node`` / ``ros2 launch``).

rclpy comes from a ROS 2 install (``source /opt/ros/<distro>/setup.bash``) or, on a machine without
one, from the pip wheels of the ``ros`` extra (``pip install -e .[ros]``: Kilted, Fast DDS). The wheels
need their shared libraries on ``LD_LIBRARY_PATH`` before the process starts; their own
``ros-wheels-bootstrapper`` (a ``.pth`` file run at interpreter start-up) sets it and re-executes the
interpreter once, so nothing has to be sourced. Message packages without a wheel (``tf2_msgs``) are
built from their definitions at first use (:mod:`ros_nodes.transport.rclpy_types`).

* Only moves messages: the lifecycle node that uses it is :mod:`ros_nodes.lifecycle_node`.
* Parameters declared with descriptors (read only: they are fixed once configured).
* Topic names are relative (remappable) except the absolute defaults of the inputs; image QoS is
  sensor data by default (parameter ``image_qos``), commands are reliable.
* One thread runs every callback: ``rclpy.experimental.EventsExecutor`` where the installed rclpy has
  it (Jazzy and later), a ``SingleThreadedExecutor`` otherwise (Humble). No callback does work beyond
  handing the message on (subscriptions route it to the latest-value buffers, the control tick takes
  the command PolicyRunner's inference worker thread computed, services flip a flag), so one thread
  keeps up, and it avoids what a ``MultiThreadedExecutor`` costs in Python: a thread-pool hand-off per
  callback and all threads fighting for the GIL with the inference worker, which made a pose's way to
  the command computed from it 2-5x longer (``benchmarks/ros_path.py --backends``; README, "rclpy and
  DDS side by side"). The environment variable ``VIT_POLICY_EXECUTOR``
  (``events``, ``single`` or ``multi``: four threads) picks another executor, for that benchmark.
  The timers and the subscriptions keep their own mutually exclusive callback groups, so ``multi`` never
  runs two of one kind at once.
* Services ``~/enable`` (std_srvs/SetBool, default off) and ``~/reset`` (std_srvs/Trigger).
* Commands are stamped with the node clock; ``use_sim_time`` is honoured by that clock.
* SIGINT / SIGTERM: rclpy's own handlers would shut the context down before the final stop could be
  published, so they are not installed; ours stop the executor, the final stop is published (and
  acknowledged by reliable subscribers, up to a second), then rclpy shuts down and the process exits 0.
* Python ``logging`` (the node's and the library's) goes to the node's rclpy logger: console, log
  file and ``/rosout``, under the node's (remapped) name.
"""

from __future__ import annotations

import array
import importlib
import logging
import os
import signal
import threading
from typing import Any, Callable

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.executors import Executor, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data

from ros_nodes.transport.base import Publisher, QoSKind, Transport, check_parameter_names

ROS_OWN_PARAMETERS = ("use_sim_time", "autostart", "start_type_description_service")
SPIN_PERIOD_S = 0.1  # the main thread returns to Python this often, so a signal is handled within it
FINAL_ACK_TIMEOUT_S = 1.0  # how long the final stop waits for reliable subscribers to acknowledge it
EXECUTORS = ("events", "single", "multi")  # VIT_POLICY_EXECUTOR; the first is the default

try:
    from rclpy.executors import ExternalShutdownException
except ImportError:  # pragma: no cover - rclpy before Humble

    class ExternalShutdownException(Exception):  # type: ignore[no-redef]
        """Stand-in so the except clause below works on old rclpy."""


try:
    from rclpy.signals import SignalHandlerOptions

    NO_SIGNAL_HANDLERS: dict[str, Any] = {"signal_handler_options": SignalHandlerOptions.NO}
except ImportError:  # pragma: no cover - rclpy before Humble
    NO_SIGNAL_HANDLERS = {}


class RclpyFactory:
    """``typename -> rclpy message class``; uint8[] / float64[] as array.array (no per-element Python checks).

    A package that is not installed (``tf2_msgs`` has no pip wheel) is built from its definition where
    the pip wheels are in use, or named in a ConfigError saying what to install.
    """

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    def __call__(self, typename: str) -> Any:
        if typename not in self._cache:
            pkg, kind, name = typename.split("/")
            try:
                module = importlib.import_module(f"{pkg}.{kind}")
            except ModuleNotFoundError as exc:
                if exc.name not in (pkg, f"{pkg}.{kind}") or kind != "msg":
                    raise
                from ros_nodes.transport.rclpy_types import ensure

                ensure(pkg)
                module = importlib.import_module(f"{pkg}.{kind}")
            self._cache[typename] = getattr(module, name)
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


class _Running:
    """A timer's callback in progress: the lock it holds and the thread running it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.thread: int | None = None


class RosLogHandler(logging.Handler):
    """Python ``logging`` records -> an rclpy logger (console, log file and /rosout under the node's name)."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self.ros_logger = ros_logger
        self.own = set()  # Python loggers whose records are the node's own: no "[module]" prefix
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.name not in self.own:
                text = f"[{record.name}] {text}"
            # one call site per severity: rclpy remembers a severity per calling line
            lg = self.ros_logger
            if record.levelno >= logging.CRITICAL:
                lg.fatal(text)
            elif record.levelno >= logging.ERROR:
                lg.error(text)
            elif record.levelno >= logging.WARNING:
                lg.warning(text)
            elif record.levelno >= logging.INFO:
                lg.info(text)
            else:
                lg.debug(text)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


class RclpyTransport(Transport):
    """The Transport interface over one rclpy node (plain or lifecycle).

    ``name`` and ``namespace`` are the node's actual ones, after ``--ros-args -r __node:=... -r __ns:=...``.
    """

    def __init__(self, name: str, namespace: str = "", use_sim_time: bool = False, params: dict[str, Any] | None = None,
                 node: Any = None) -> None:
        self._owns_node = node is None
        if node is None:
            if not rclpy.ok():
                rclpy.init(**NO_SIGNAL_HANDLERS)  # our handlers publish the final stop before rclpy shuts down
            node = Node(name, namespace=namespace, parameter_overrides=overrides(params, use_sim_time))
        self.node = node
        self.name, self.namespace = node.get_name(), node.get_namespace()
        self.log = logging.getLogger(node.get_logger().name)  # e.g. "arm.left": the rclpy logger's name
        self._factory = RclpyFactory()
        self._inputs = MutuallyExclusiveCallbackGroup()
        self._services = MutuallyExclusiveCallbackGroup()
        self._entities: list[tuple[str, Any]] = []
        self._running: dict[int, _Running] = {}  # timer id -> held while its callback runs
        self._stop = threading.Event()
        self._spinning = self._spun = False
        self._saved_signals: dict[int, Any] = {}
        self._log_handler: RosLogHandler | None = None
        self._saved_logging: tuple[list[logging.Handler], int] | None = None
        if self._owns_node:  # the process's node (vit-policy serve): its logging and signals
            self.route_logging()
            self.install_signal_handlers()

    @property
    def factory(self) -> RclpyFactory:
        return self._factory

    # ---- logging --------------------------------------------------------------------------------------

    def route_logging(self) -> None:
        """Send every Python log record of this process to the node's rclpy logger (and nowhere else)."""
        if self._log_handler is not None:
            return
        ros_logger = self.node.get_logger()
        handler = RosLogHandler(ros_logger)
        handler.own.add(self.log.name)
        root = logging.getLogger()
        self._saved_logging = (list(root.handlers), root.level)
        root.handlers = [handler]
        try:
            root.setLevel(int(ros_logger.get_effective_level()))  # rclpy severities use Python's numbers
        except Exception:  # noqa: BLE001 - an rclpy without get_effective_level: INFO
            root.setLevel(logging.INFO)
        self._log_handler = handler

    def unroute_logging(self) -> None:
        if self._log_handler is None:
            return
        root = logging.getLogger()
        if self._saved_logging is not None:
            root.handlers, level = self._saved_logging
            root.setLevel(level)
        self._log_handler = None

    # ---- entities -------------------------------------------------------------------------------------

    def _guarded(self, what: str, callback: Callable[..., None]) -> Callable[..., None]:
        """A callback whose exception is logged, not raised into the executor (which would end the spin)."""
        log = self.log

        def call(*args: Any) -> None:
            try:
                callback(*args)
            except Exception:
                log.exception("%s failed", what)

        return call

    def create_subscription(self, typename: str, topic: str, callback: Callable[[Any], None], qos: QoSKind = "reliable") -> Any:
        sub = self.node.create_subscription(self._factory(typename), topic, self._guarded(f"callback for {topic}", callback), _qos(qos),
                                            callback_group=self._inputs)
        self._entities.append(("subscription", sub))
        return sub

    def create_publisher(self, typename: str, topic: str, qos: QoSKind = "reliable") -> Publisher:
        pub = self.node.create_publisher(self._factory(typename), topic, _qos(qos))
        self._entities.append(("publisher", pub))
        return _Publisher(pub)

    def create_timer(self, period_s: float, callback: Callable[[], None], name: str = "") -> Any:
        running = _Running()
        guarded = self._guarded(f"timer {name}", callback)

        def tick() -> None:
            if running.lock.acquire(blocking=False):  # never two of one timer's callbacks at once
                running.thread = threading.get_ident()
                try:
                    guarded()
                finally:
                    running.thread = None
                    running.lock.release()

        timer = self.node.create_timer(period_s, tick, callback_group=MutuallyExclusiveCallbackGroup())
        self._running[id(timer)] = running
        self._entities.append(("timer", timer))
        return timer

    def cancel_timer(self, timer: Any) -> None:
        """Cancel ``timer`` and wait for a callback of it that is running: nothing of it is published after this."""
        timer.cancel()
        running = self._running.pop(id(timer), None)
        if running is not None and running.thread != threading.get_ident() and running.lock.acquire(timeout=5.0):
            running.lock.release()
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

    def flush(self, timeout_s: float = FINAL_ACK_TIMEOUT_S) -> None:
        """Wait (up to ``timeout_s`` in all) until reliable subscribers acknowledged what was published."""
        import time

        end = time.monotonic() + timeout_s
        for kind, entity in self._entities:
            if kind == "publisher" and hasattr(entity, "wait_for_all_acked"):
                left = max(0.0, end - time.monotonic())
                try:
                    entity.wait_for_all_acked(Duration(nanoseconds=int(left * 1e9)))
                except Exception:  # noqa: BLE001 - best effort: the middleware may be going away
                    pass

    def destroy_entities(self) -> None:
        """Destroy what this transport created (lifecycle cleanup)."""
        for kind, entity in reversed(self._entities):
            getattr(self.node, f"destroy_{kind}")(entity)
        self._entities = []
        self._running.clear()

    # ---- spinning and shutting down ---------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        """Make :meth:`spin` return (a signal handler; safe from any thread)."""
        self._stop.set()

    def spin(self) -> None:
        """Run callbacks until SIGINT / SIGTERM, :meth:`request_stop` or :meth:`shutdown`; the context stays up."""
        executor = make_executor(self.node.context)
        executor.add_node(self.node)
        self.install_signal_handlers()
        self._spinning = True
        try:
            while not self._stop.is_set() and self.node.context.ok():
                executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            self._spinning, self._spun = False, True
            # let the callbacks already handed to the thread pool finish first: Executor.shutdown destroys the
            # guard condition they trigger before MultiThreadedExecutor joins its threads (InvalidHandle in rclpy 9)
            pool = getattr(executor, "_executor", None)
            if pool is not None:
                pool.shutdown(wait=True)
            executor.shutdown()  # no callback runs (or publishes) after this

    def install_signal_handlers(self) -> None:
        """SIGINT / SIGTERM make :meth:`spin` return (at once if it has not started), so the caller publishes the
        final stop; kept until :meth:`shutdown`, so a second signal cannot tear rclpy down under that stop."""
        if threading.current_thread() is threading.main_thread() and not self._saved_signals:
            self._saved_signals = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore_signals(self) -> None:
        for sig, handler in self._saved_signals.items():
            signal.signal(sig, handler)
        self._saved_signals = {}

    def shutdown(self) -> None:
        """Before or while spinning in a process whose signals this transport handles (``vit-policy serve``'s
        SIGTERM handler calls this): make :meth:`spin` return; the caller then publishes the final stop and
        calls this again.

        Otherwise: wait for the last messages to be acknowledged, destroy the node this transport made
        and shut rclpy down.
        """
        if self._spinning or (self._saved_signals and not self._spun):
            self.request_stop()
            return
        self.flush()
        self.unroute_logging()
        self.restore_signals()
        if self._owns_node:
            self.node.destroy_node()
            if rclpy.ok():
                rclpy.try_shutdown()


def make_executor(context: Any, kind: str | None = None) -> Executor:
    """The executor the node spins in: ``kind`` or ``$VIT_POLICY_EXECUTOR`` (``events`` by default; see the
    module docstring). ``events`` falls back to a SingleThreadedExecutor where rclpy has no EventsExecutor."""
    from vit_policy.config import ConfigError

    kind = (kind or os.environ.get("VIT_POLICY_EXECUTOR") or EXECUTORS[0]).strip().lower()
    if kind not in EXECUTORS:
        raise ConfigError(f"VIT_POLICY_EXECUTOR={kind!r}: expected one of {', '.join(EXECUTORS)} (or unset: events)")
    if kind == "multi":
        return MultiThreadedExecutor(num_threads=4, context=context)
    if kind == "events":
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:  # Humble: no EventsExecutor
            pass
        else:
            return EventsExecutor(context=context)
    return SingleThreadedExecutor(context=context)


def overrides(params: dict[str, Any] | None, use_sim_time: bool) -> list[Parameter]:
    out = [Parameter(k, value=v) for k, v in (params or {}).items()]
    if use_sim_time:
        out.append(Parameter("use_sim_time", value=True))
    return out
