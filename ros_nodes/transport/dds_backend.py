"""CycloneDDS transport: the policy node without a ROS install, speaking the ROS 2 wire format.

ROS 2 maps a topic ``/a/b`` of type ``pkg/msg/T`` to the DDS topic ``rt/a/b`` with type
``pkg::msg::dds_::T_`` and plain CDR. The cyclonedds types are generated from the rosbags typestore's
message definitions (never copied by hand), with ``uint8[]`` declared as Python ``bytes`` (same wire
format, ~100x faster than a sequence of uint8 for images). ``ROS_DOMAIN_ID`` selects the domain.
There are no services over plain DDS: enable and reset are the topics ``policy/enable``
(std_msgs/Bool) and ``policy/reset`` (std_msgs/Empty), relative to the node namespace.

Fast DDS (eProsima, vendor id 1.15), the default middleware of ROS 2, announces XTypes type
information that Cyclone DDS rejects for every type with a sequence (Image, JointState, ...), so those
readers and writers never match. The backend creates each domain with
``Domain/Compatibility/IgnoreTypeInformation`` set to ``1.15`` (Fast DDS endpoints then match by type
name and QoS), followed by the user's ``CYCLONEDDS_URI``, which overrides it (a later
``<IgnoreTypeInformation>`` replaces the list; checked in tests/test_interop.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Callable

import cyclonedds.idl.types as t
from cyclonedds.core import DDSException, Entity, Listener, Qos
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.idl import IdlStruct, make_idl_struct
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration
from rosbags.interfaces import Nodetype
from rosbags.typesys import Stores, get_typestore

from ros_nodes.transport.base import Publisher, QoSKind, Transport, check_parameter_names
from vit_policy.config import ConfigError

ENABLE_TOPIC, RESET_TOPIC = "policy/enable", "policy/reset"


def _describe_bytes_as_octet_sequence() -> None:
    """Let topics carry ``bytes`` fields: describe them to XTypes exactly as ``sequence<uint8>``.

    cyclonedds serialises a ``bytes`` member as a sequence of octets (the same CDR) but its XTypes
    type-object builder has no case for ``bytes`` and refuses to create the topic. This maps it to
    the sequence<uint8> type identifier, so the type information announced on the wire is identical
    to that of the slow ``sequence[uint8]`` declaration (checked in tests/test_dds_node.py).
    """
    import typing

    from cyclonedds.idl import _xt_builder

    builder = _xt_builder.XTBuilder
    if getattr(builder, "_vit_policy_bytes", False):
        return
    octets = typing.get_args(t.sequence[t.uint8])[1]
    original = builder._xt_type_identifier.__func__

    def type_identifier(cls: Any, name: str, entity: Any, minimal: bool) -> Any:
        return original(cls, name, octets if entity is bytes else entity, minimal)

    builder._xt_type_identifier = classmethod(type_identifier)
    builder._vit_policy_bytes = True


_describe_bytes_as_octet_sequence()

_BASE: dict[str, Any] = {
    "bool": bool, "byte": t.byte, "char": t.uint8, "int8": t.int8, "uint8": t.uint8, "int16": t.int16,
    "uint16": t.uint16, "int32": t.int32, "uint32": t.uint32, "int64": t.int64, "uint64": t.uint64,
    "float32": t.float32, "float64": t.float64,
}


class DDSTypes:
    """``typename -> cyclonedds IdlStruct`` generated from a rosbags typestore (the message factory)."""

    def __init__(self, typestore: Any = None) -> None:
        self.typestore = typestore or get_typestore(Stores.ROS2_HUMBLE)
        self._classes: dict[str, type[IdlStruct]] = {}
        self._lock = threading.Lock()

    def __call__(self, typename: str) -> type[IdlStruct]:
        with self._lock:
            return self._build(typename)

    @staticmethod
    def dds_typename(typename: str) -> str:
        """'sensor_msgs/msg/Image' -> 'sensor_msgs::msg::dds_::Image_' (the ROS 2 DDS type name)."""
        pkg, kind, name = typename.split("/")
        return f"{pkg}::{kind}::dds_::{name}_"

    def _build(self, typename: str) -> type[IdlStruct]:
        if typename in self._classes:
            return self._classes[typename]
        if typename not in self.typestore.fielddefs:
            raise ConfigError(f"message type {typename!r} is not in the rosbags typestore (check the name, e.g. 'std_msgs/msg/Bool')")
        _, fields = self.typestore.fielddefs[typename]
        annotations = {name: self._field(node) for name, node in fields}
        cls = make_idl_struct(typename.rsplit("/", 1)[1], self.dds_typename(typename), annotations)
        self._classes[typename] = cls
        return cls

    def _field(self, node: tuple[Any, Any]) -> Any:
        kind, detail = node
        if kind == Nodetype.BASE:
            name, bound = detail
            if name == "string":
                return t.bounded_str[bound] if bound else str
            return _BASE[name]
        if kind == Nodetype.NAME:
            return self._build(detail)
        inner, size = detail
        if kind == Nodetype.ARRAY:
            return t.array[self._field(inner), size]
        if inner[0] == Nodetype.BASE and inner[1][0] in ("uint8", "byte", "char") and not size:
            return bytes  # uint8[]: the same CDR as sequence<octet>, without a Python int per byte
        return t.sequence[self._field(inner), size] if size else t.sequence[self._field(inner)]


_SHARED: DDSTypes | None = None


def shared_types() -> DDSTypes:
    """The process-wide DDSTypes of the ROS 2 Humble typestore: one class per message type for every transport."""
    global _SHARED
    if _SHARED is None:
        _SHARED = DDSTypes()
    return _SHARED


def ros_qos(kind: QoSKind) -> Qos:
    """ROS 2 QoS profiles: default (reliable, keep last 10), sensor data (best effort, 5), latched (tf_static)."""
    if kind == "sensor_data":
        return Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(5), Policy.Durability.Volatile)
    if kind == "latched":
        return Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(1), Policy.Durability.TransientLocal)
    if kind == "reliable":
        return Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.History.KeepLast(10), Policy.Durability.Volatile)
    raise ConfigError(f"qos: {kind!r} is not 'sensor_data', 'reliable' or 'latched'")


def resolve_name(name: str, namespace: str, node_name: str) -> str:
    """A ROS topic name made absolute: 'cmd/twist' in '/arm' -> '/arm/cmd/twist'; '~/x' -> '/arm/<node>/x'."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if name.startswith("~"):
        name = f"{ns}/{node_name}{name[1:]}"
    elif not name.startswith("/"):
        name = f"{ns}/{name}"
    return "/" + "/".join(p for p in name.split("/") if p)


#: Applied to every domain the backend creates, before the user's CYCLONEDDS_URI (which overrides it):
#: ignore the type information of Fast DDS (vendor id 1.15) and match its endpoints by type name.
ROS_INTEROP_CONFIG = ('<CycloneDDS><Domain id="any"><Compatibility>'
                      "<IgnoreTypeInformation>1.15</IgnoreTypeInformation>"
                      "</Compatibility></Domain></CycloneDDS>")

_DOMAINS: "weakref.WeakValueDictionary[int, Domain]" = weakref.WeakValueDictionary()
_DOMAINS_LOCK = threading.Lock()
_log = logging.getLogger(__name__)


def domain_config(user_uri: str | None = None) -> str:
    """The configuration of a domain: :data:`ROS_INTEROP_CONFIG`, then ``CYCLONEDDS_URI`` (later sources win)."""
    user = os.environ.get("CYCLONEDDS_URI", "") if user_uri is None else user_uri
    user = user.strip().strip(",")
    return f"{ROS_INTEROP_CONFIG},{user}" if user else ROS_INTEROP_CONFIG


def ros_domain(domain_id: int) -> Domain | None:
    """This process's Domain ``domain_id`` configured by :func:`domain_config`, shared by the transports on it.

    Each transport keeps a reference; the domain is deleted with the last one. When the domain already
    exists in this process (a participant created without this backend), it keeps the configuration it
    was created with: None, with a warning.
    """
    with _DOMAINS_LOCK:
        domain = _DOMAINS.get(domain_id)
        if domain is None:
            try:
                domain = Domain(domain_id, domain_config())
            except DDSException as e:
                if e.code != DDSException.DDS_RETCODE_PRECONDITION_NOT_MET:
                    raise ConfigError(f"DDS domain {domain_id}: cannot create it with CYCLONEDDS_URI="
                                      f"{os.environ.get('CYCLONEDDS_URI', '')!r} ({e})") from e
                _log.warning("DDS domain %d already exists in this process without the ROS 2 interoperability settings: "
                             "Fast DDS peers may not match types with sequences", domain_id)
                return None
            _DOMAINS[domain_id] = domain
        return domain


def next_beat(last_t: float, now: float, period: float) -> float:
    """When a fixed-rate timer whose beat ``last_t`` just ran fires next: at ``last_t + period``, or, when that
    beat has passed already (a slow callback, a late wake-up), at the latest passed beat, i.e. at once and
    once (as rcl's timers do). Skipping that late beat instead, whenever a wake-up or a callback ran late by
    a millisecond, held the DDS node to 33 commands/s of 100 Hz on a loaded 2-core machine (53 with this
    rule, back to back; ``benchmarks/ros_path.py --backends dds --rates 100``)."""
    nxt = last_t + period
    if now > nxt:
        nxt += period * ((now - nxt) // period)
    return nxt


class _Writer(Publisher):
    def __init__(self, writer: DataWriter) -> None:
        self.writer = writer

    def publish(self, msg: Any) -> None:
        self.writer.write(msg)


class DDSTransport(Transport):
    """One DDS participant (domain ``ROS_DOMAIN_ID``) carrying one node's topics; timers are threads."""

    def __init__(self, name: str, namespace: str = "", use_sim_time: bool = False, params: dict[str, Any] | None = None,
                 domain_id: int | None = None, types: DDSTypes | None = None) -> None:
        self.name, self.namespace = name, namespace
        self.log = logging.getLogger(f"{name}")
        self.domain_id = int(os.environ.get("ROS_DOMAIN_ID", "0")) if domain_id is None else int(domain_id)
        self.domain = ros_domain(self.domain_id)  # held: the domain lives as long as its transports
        self.participant = DomainParticipant(self.domain_id)
        self.types = types or shared_types()
        self._params = dict(params or {})
        self._topics: dict[str, Topic] = {}
        self._entities: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._sim_ns: int | None = None
        self.use_sim_time = use_sim_time
        if use_sim_time:
            self.create_subscription("rosgraph_msgs/msg/Clock", "/clock", self._on_clock, "sensor_data")

    @property
    def factory(self) -> DDSTypes:
        return self.types

    def topic_name(self, name: str) -> str:
        return "rt" + resolve_name(name, self.namespace, self.name)

    def _topic(self, typename: str, name: str) -> Topic:
        full = self.topic_name(name)
        if full not in self._topics:
            self._topics[full] = Topic(self.participant, full, self.types(typename))
        return self._topics[full]

    def create_subscription(self, typename: str, topic: str, callback: Callable[[Any], None], qos: QoSKind = "reliable") -> DataReader:
        cls = self.types(typename)
        log = self.log

        def on_data(reader: DataReader | None) -> None:
            if reader is None:  # data arriving while the reader is being deleted (shutdown): nothing to take
                return
            for sample in reader.take(N=64):
                if isinstance(sample, cls):
                    try:
                        callback(sample)
                    except Exception:  # a callback error must not kill the DDS receive thread
                        log.exception("callback for %s failed", topic)

        reader = DataReader(self.participant, self._topic(typename, topic), qos=ros_qos(qos), listener=Listener(on_data_available=on_data))
        self._entities.append(reader)
        return reader

    def create_publisher(self, typename: str, topic: str, qos: QoSKind = "reliable") -> Publisher:
        writer = DataWriter(self.participant, self._topic(typename, topic), qos=ros_qos(qos))
        self._entities.append(writer)
        return _Writer(writer)

    def create_timer(self, period_s: float, callback: Callable[[], None], name: str = "") -> threading.Thread:
        """A thread calling ``callback`` on a fixed monotonic schedule (:func:`next_beat`): a late beat runs at
        once, beats missed entirely are skipped, not bunched."""
        period = float(period_s)
        if not period > 0:
            raise ConfigError(f"timer {name!r}: period {period_s} s must be > 0")

        cancelled = threading.Event()

        def run() -> None:
            next_t = time.monotonic()
            while not self._stop.is_set() and not cancelled.is_set():
                try:
                    callback()
                except Exception:
                    self.log.exception("timer %s failed", name)
                now = time.monotonic()
                next_t = next_beat(next_t, now, period)
                self._stop.wait(max(0.0, next_t - now))

        thread = threading.Thread(target=run, name=f"timer-{name}", daemon=True)
        thread.cancelled = cancelled  # type: ignore[attr-defined]
        self._threads.append(thread)
        thread.start()
        return thread

    def cancel_timer(self, timer: threading.Thread) -> None:
        timer.cancelled.set()  # type: ignore[attr-defined]
        if timer is not threading.current_thread():
            timer.join(timeout=2.0)

    def _on_clock(self, msg: Any) -> None:
        self._sim_ns = int(msg.clock.sec) * 1_000_000_000 + int(msg.clock.nanosec)

    def now_ns(self) -> int:
        if self.use_sim_time:
            return self._sim_ns or 0
        return time.time_ns()

    def on_enable(self, callback: Callable[[bool], tuple[bool, str]]) -> None:
        def handle(msg: Any) -> None:
            callback(bool(msg.data))  # the node logs the outcome

        self.create_subscription("std_msgs/msg/Bool", ENABLE_TOPIC, handle, "reliable")

    def on_reset(self, callback: Callable[[], tuple[bool, str]]) -> None:
        def handle(msg: Any) -> None:
            callback()

        self.create_subscription("std_msgs/msg/Empty", RESET_TOPIC, handle, "reliable")

    def parameters(self, defaults: dict[str, Any], descriptions: dict[str, str]) -> dict[str, Any]:
        """Defaults overridden by the parameter file given at construction; an unknown name is an error."""
        check_parameter_names(self._params, defaults, self.name)
        return {**defaults, **self._params}

    def spin(self) -> None:
        try:
            while not self._stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            self.log.info("interrupted")

    def shutdown(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2.0)

    def close(self) -> None:
        """Shut down, then delete the readers (their listeners first), writers, topics and the participant here.

        Left to the garbage collector, a reader can be deleted on one of Cyclone's listener threads while its
        own listener runs; a test process that had closed its transports that way segfaulted minutes later."""
        self.shutdown()
        for entity in self._entities:
            if isinstance(entity, DataReader):
                entity.set_listener(None)
        for entity in [*self._entities, *self._topics.values(), self.participant]:
            Entity.__del__(entity)  # dds_delete now; the object's own __del__ then does nothing
        self._entities.clear()
        self._topics.clear()
