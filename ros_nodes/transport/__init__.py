"""Transports the policy node runs on: ``rclpy`` (a ROS 2 install, or the pip wheels of the ``ros`` extra) and ``dds`` (pip cyclonedds, ROS 2 wire format)."""

from __future__ import annotations

from typing import Any

from ros_nodes.transport.base import Publisher, Transport


def make_transport(kind: str, node_name: str, namespace: str = "", use_sim_time: bool = False,
                   params: dict[str, Any] | None = None) -> Transport:
    """The transport named ``kind`` ("rclpy" or "dds"), imported only when asked for; ``params`` are flat overrides."""
    from vit_policy.config import ConfigError

    if kind == "dds":
        try:
            from ros_nodes.transport.dds_backend import DDSTransport
        except ImportError as exc:
            raise ConfigError(f"--transport dds: {exc}; install the DDS extra: pip install -e .[dds]") from None
        return DDSTransport(node_name, namespace, use_sim_time=use_sim_time, params=params)
    if kind == "rclpy":
        try:
            from ros_nodes.transport.rclpy_backend import RclpyTransport
        except ImportError as exc:
            raise ConfigError(f"--transport rclpy: {exc}; source /opt/ros/<distro>/setup.bash first (a ROS 2 install), "
                              "or install the ROS 2 pip wheels: pip install -e .[ros]; or use --transport dds") from None
        return RclpyTransport(node_name, namespace, use_sim_time=use_sim_time, params=params)
    raise ConfigError(f"--transport: {kind!r} is not 'dds' or 'rclpy'")


__all__ = ["Publisher", "Transport", "make_transport"]
