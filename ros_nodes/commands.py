"""The node's ``vit-policy`` subcommand: ``serve`` (the policy node over rclpy or CycloneDDS).

Registered through the ``vit_policy.commands`` entry point (setup.py), so the core CLI never imports
ROS code; the node module is imported only when the command runs.
"""

from __future__ import annotations

import argparse



def cmd_serve(args: argparse.Namespace) -> int:
    from ros_nodes.policy_node import serve

    overrides = list(args.overrides)
    if args.checkpoint:
        overrides.append(f"checkpoint={args.checkpoint}")
    if args.output_mode:
        overrides.append(f"output_mode={args.output_mode}")
    return serve(args.transport, args.config, overrides, args.namespace, args.node_name, args.use_sim_time)


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the ROS 2 policy node (rclpy, or CycloneDDS without a ROS install)")
    p.add_argument("--transport", choices=["dds", "rclpy"], default="dds")
    p.add_argument("--config", help="ROS 2 parameter file (policy_node: ros__parameters: ...), e.g. configs/ros/policy_node.yaml")
    p.add_argument("--checkpoint", help="trained checkpoint directory (same as checkpoint=DIR)")
    p.add_argument("--output-mode", choices=["twist", "pose", "trajectory"])
    p.add_argument("--namespace", default="")
    p.add_argument("--node-name", default="policy_node")
    p.add_argument("--use-sim-time", action="store_true", help="stamp commands with /clock")
    p.add_argument("overrides", nargs="*", help="parameter=value, e.g. runtime.control_rate_hz=20 allow_untrained=true")
    p.set_defaults(func=cmd_serve)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to ``vit-policy``."""
    add_serve(sub)
