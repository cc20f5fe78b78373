"""The ``vit-policy`` command: demo, train, replay, inspect, serve, sim-record, sim-pretrain, sim-eval, export.

Each subcommand imports its module lazily, so ``vit-policy --help`` stays fast and the core never
imports ROS, the simulator or the CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"


def default_config(relative: str) -> Path:
    """A file under configs/: the source tree, or share/vit_policy/configs of an installed package."""
    for root in (CONFIG_ROOT, Path(sys.prefix) / "share" / "vit_policy" / "configs"):
        if (root / relative).is_file():
            return root / relative
    raise FileNotFoundError(f"config {relative!r} not found under {CONFIG_ROOT} or the installed share/vit_policy/configs")


# --------------------------------------------------------------------------------------------------
# demo: the default policy on a generated observation
# --------------------------------------------------------------------------------------------------


def cmd_policy_demo(args: argparse.Namespace) -> int:
    """Build a policy from configs/, run it on a generated observation, print the chunk and latency."""
    import torch

    from vit_policy.config import load_policy_config
    from vit_policy.model.policy import VisuomotorPolicy, count_parameters, identity_stats
    from vit_policy.observation import Observation

    torch.set_num_threads(args.threads)
    path = Path(args.config) if args.config else default_config("policy/vit_small.yaml")
    cfg = load_policy_config(path, args.overrides)
    policy = VisuomotorPolicy.from_config(cfg).eval()
    policy.set_stats(identity_stats(cfg))  # untrained: statistics that change nothing
    rng = np.random.default_rng(0)
    h, w = policy.image_size
    obs = Observation(
        stamp_ns=time.time_ns(),
        images={c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in cfg.cameras},
        position=np.array([0.4, 0.0, 0.3]),
        quaternion=np.array([1.0, 0.0, 0.0, 0.0]),
        gripper=1.0,
        history=np.tile([0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0], (cfg.pose.history, 1)) if cfg.pose.history else None,
    )
    print(f"policy: {path.name}  encoder {cfg.encoder.family}:{cfg.encoder.name} @ {h}x{w}, cameras {cfg.cameras}, "
          f"K={cfg.chunk_size}, dt={cfg.control_dt}s, {count_parameters(policy) / 1e6:.1f} M parameters (untrained weights)")
    policy.predict(obs)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        chunk = policy.predict(obs)
        times.append((time.perf_counter() - t0) * 1e3)
    print(f"{'step':>4} {'t+ms':>6} {'dx mm':>8} {'dy mm':>8} {'dz mm':>8} {'drot deg':>9} {'gripper':>8}")
    for k in range(len(chunk)):
        dp = chunk.delta_position[k] * 1e3
        print(f"{k:>4} {(k + 1) * chunk.dt_ns / 1e6:>6.0f} {dp[0]:>8.2f} {dp[1]:>8.2f} {dp[2]:>8.2f} "
              f"{np.degrees(np.linalg.norm(chunk.delta_rotation[k])):>9.2f} {chunk.gripper[k]:>8.3f}")
    print(f"latency over {args.repeats} steps, {args.threads} threads: p50 {np.percentile(times, 50):.1f} ms, "
          f"p90 {np.percentile(times, 90):.1f} ms")
    return 0


def add_policy_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy-demo", help="run the default (untrained) policy on a generated observation")
    p.add_argument("--config", help="policy YAML (default: configs/policy/vit_small.yaml)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. chunk_size=10")
    p.set_defaults(func=cmd_policy_demo)


# --------------------------------------------------------------------------------------------------
# train: rosbag2 demonstrations -> checkpoint (vit_policy/train.py)
# --------------------------------------------------------------------------------------------------


def add_train(sub: argparse._SubParsersAction) -> None:
    def run(args: argparse.Namespace) -> int:
        from vit_policy.train import cmd_train

        return cmd_train(args)

    p = sub.add_parser("train", help="train a policy on rosbag2 demonstrations (under torchrun for several processes)")
    p.add_argument("--config", required=True, help="training YAML, e.g. configs/train/sim_fetch.yaml")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=5 policy.chunk_size=10")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------------------------------
# replay: offline evaluation of checkpoints on recorded bags (vit_policy/replay.py)
# --------------------------------------------------------------------------------------------------


def add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="evaluate checkpoints on recorded rosbag2 bags: metrics.json + report.html")
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="DIR", help="checkpoint directories (several: compared side by side)")
    p.add_argument("--bags", nargs="+", required=True, metavar="PATH", help="rosbag2 recordings (held-out demonstrations)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory for metrics.json, report.html and plots/")
    p.add_argument("--mode", choices=["faithful", "batch", "both"], default="both",
                   help="faithful: through PolicyRunner on bag time, as the node; batch: batched inference (default both)")
    p.add_argument("--latency-ms", type=float, default=None,
                   help="inference latency of the replayed node (default: measured on this machine)")
    p.add_argument("--data-config", metavar="YAML", help="train config (its data: section) or data YAML with the bag's topics "
                   "(default: the checkpoint's metadata.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="replay config override, e.g. runtime.strategy=receding or tolerance_mm=5 (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    from vit_policy.replay import cli_replay

    return cli_replay(args)


# --------------------------------------------------------------------------------------------------
# inspect: what a bag holds and whether it would extract (vit_policy/data/inspect.py)
# --------------------------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    from vit_policy.data.inspect import cli_inspect

    return cli_inspect(args)


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="per bag: topics, counts, rates, gaps, stamp lag, pose coverage and whether it would extract "
                       "(exit 0 if every bag would, else 2)")
    p.add_argument("bags", nargs="+", metavar="BAG", help="rosbag2 recordings (directories or .db3/.mcap files)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of the tables")
    p.add_argument("--data-config", metavar="YAML", help="train config (its data: section) or data YAML with the bag's topics "
                   "(default: the DataConfig defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="data config override, e.g. data.pose_topic=/ee_pose or sync_tolerance_s=0.1 (repeatable)")
    p.set_defaults(func=cmd_inspect)


# --------------------------------------------------------------------------------------------------
# serve: the ROS 2 policy node over rclpy or CycloneDDS (ros_nodes/policy_node.py)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# sim-record / sim-eval: MuJoCo Fetch demonstrations and closed-loop evaluation (sim_tests/)
# --------------------------------------------------------------------------------------------------

SIM_TASKS = ["FetchReach-v4", "FetchPush-v4", "FetchPickAndPlace-v4", "FetchReachOrient"]  # keys of sim_tests.closed_loop.TASK_CONFIGS


def cmd_sim_record(args: argparse.Namespace) -> int:
    from sim_tests.record import cli_sim_record

    return cli_sim_record(args)


def add_sim_record(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim-record", help="record scripted-expert demonstrations of a MuJoCo Fetch task as rosbag2")
    p.add_argument("--task", choices=SIM_TASKS, help="task (its configs/sim/ file is the default config)")
    p.add_argument("--config", help="sim YAML (default: configs/sim/ of the task)")
    p.add_argument("--episodes", type=int, default=50, help="successful demonstrations to record")
    p.add_argument("--out", required=True, metavar="DIR", help="new directory for episode_000 ... and demos.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument("--action-noise", type=float, default=0.0, metavar="M",
                   help="execute the expert's target plus N(0, M) metres per axis, record the clean command (DART)")
    p.add_argument("--hold-steps", type=int, default=None, metavar="N",
                   help="end each bag N steps after the task is first achieved (default: the whole episode)")
    p.add_argument("overrides", nargs="*", help="sim config overrides, e.g. image_size=128 episode_steps=30")
    p.set_defaults(func=cmd_sim_record)


def cmd_sim_eval(args: argparse.Namespace) -> int:
    from sim_tests.closed_loop import cli_sim_eval

    return cli_sim_eval(args)


def add_sim_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim-eval", help="closed-loop success rate of a checkpoint in a MuJoCo Fetch task, through PolicyRunner")
    p.add_argument("--checkpoint", metavar="DIR", help="trained checkpoint directory")
    p.add_argument("--baseline", choices=["expert", "random"], help="evaluate the scripted expert or random actions instead")
    p.add_argument("--task", choices=SIM_TASKS)
    p.add_argument("--config", help="sim YAML (default: configs/sim/ of the task)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="first episode seed (episodes use seed, seed+1, ...)")
    p.add_argument("--out", metavar="DIR", help="output directory (default outputs/sim_eval/<task>)")
    p.add_argument("--gifs", type=int, default=None, help="GIFs of the first N episodes (default: every episode)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("overrides", nargs="*", help="sim config overrides, e.g. runtime.strategy=receding episode_steps=80")
    p.set_defaults(func=cmd_sim_eval)


def cmd_sim_pretrain(args: argparse.Namespace) -> int:
    from sim_tests.pretrain import cli_sim_pretrain

    return cli_sim_pretrain(args)


def add_sim_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim-pretrain", help="pretrain the sim policy's encoder on rendered frames labelled with goal / object / EE positions")
    p.add_argument("--task", choices=SIM_TASKS)
    p.add_argument("--config", help="sim YAML (default: configs/sim/ of the task)")
    p.add_argument("--resets", type=int, default=2000, help="episodes of random reaching, each a new goal (and object)")
    p.add_argument("--frames-per-reset", type=int, default=8)
    p.add_argument("--expert-fraction", type=float, default=0.0, metavar="F",
                   help="share of the resets the task's scripted expert drives (with execution noise) instead of random reaching")
    p.add_argument("--steps", type=int, default=8000, help="optimiser steps (batch 64)")
    p.add_argument("--out", required=True, metavar="FILE", help="the backbone's weights (.safetensors), for encoder.weights")
    p.add_argument("--policy", nargs="+", default=[], metavar="KEY=VALUE", help="configs/sim/policy.yaml overrides (the encoder to pretrain)")
    p.add_argument("overrides", nargs="*", help="sim config overrides, e.g. image_size=64")
    p.set_defaults(func=cmd_sim_pretrain)


def cmd_demo(args: argparse.Namespace) -> int:
    from sim_tests.demo import cli_demo

    return cli_demo(args)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end in MuJoCo: expert demonstrations -> training -> replay -> closed loop -> report")
    p.add_argument("--out", default="outputs/demo", metavar="DIR")
    p.add_argument("--quick", action="store_true", help="a minutes-long smoke run of every stage (nothing learns)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("policy_overrides", nargs="*", metavar="KEY=VALUE",
                   help="configs/sim/policy.yaml overrides for every task, e.g. encoder.name=vit_tiny_patch16_224 (needs a GPU or hours)")
    p.set_defaults(func=cmd_demo)


# --------------------------------------------------------------------------------------------------
# export: the policy step as ONNX (fp32 / int8) for runtime.backend: onnxruntime (vit_policy/deploy.py)
# --------------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    from vit_policy.deploy import cli_export

    return cli_export(args)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a checkpoint as an ONNX graph (fp32, --int8 too) for runtime.backend: onnxruntime, "
                       "checked against torch on held-out frames")
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="trained checkpoint directory")
    p.add_argument("--bags", nargs="+", required=True, metavar="PATH", help="held-out rosbag2 recordings: the frames the export is checked on")
    p.add_argument("--out", metavar="DIR", help="output directory (default: the checkpoint directory itself)")
    p.add_argument("--int8", action="store_true", help="also write policy.int8.onnx (dynamic int8; kept only within 1 mm / 0.5 deg of torch)")
    p.add_argument("--data-config", metavar="YAML", help="train config (its data: section) or data YAML with the bags' topics "
                   "(default: the checkpoint's metadata.json)")
    p.add_argument("--frames", type=int, default=64, help="frames checked, spread evenly over the bags (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_export)


# --------------------------------------------------------------------------------------------------
# Subcommands of the other modules register here: one add_<name>(sub) function each.
# --------------------------------------------------------------------------------------------------

REGISTER = [add_demo, add_policy_demo, add_train, add_replay, add_inspect, add_serve, add_sim_record, add_sim_pretrain, add_sim_eval,
            add_export]


DEBUG_HELP = "on an error, show the Python traceback instead of the one-line message (before or after the subcommand)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit-policy", description=__doc__.splitlines()[0],
        epilog="An error in the input (a config, a checkpoint or weights file, a bag) prints one line, "
               "'error: <path>: <cause>; <fix>', and exits with 2; --debug shows the traceback instead.")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTER:
        register(sub)
    for p in sub.choices.values():  # also accepted after the subcommand; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


# The project's errors about its input: each message names the path or key, the cause and the fix.
USER_ERRORS = {
    "vit_policy.config.ConfigError", "vit_policy.data.bags.BagError", "vit_policy.model.encoders.WeightsError",
    "vit_policy.messages.MessageError", "vit_policy.images.ImageEncodingError", "vit_policy.geometry.PoseError",
    "vit_policy.observation.ObservationError",
}
# Paths given on the command line (a missing bag or checkpoint, an output that exists, a file where a directory belongs)
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
PROJECT_DIRS = tuple(Path(__file__).resolve().parent.parent / d for d in ("vit_policy", "ros_nodes", "sim_tests"))


def is_user_error(exc: BaseException) -> bool:
    """An error in what the user gave (one line, exit 2), not a bug (traceback, exit 1).

    A plain ValueError counts when the project's own code raised it (its argument and data checks);
    one raised inside numpy, torch or another library is a bug.
    """
    if any(f"{c.__module__}.{c.__qualname__}" in USER_ERRORS for c in type(exc).__mro__) or isinstance(exc, USER_OS_ERRORS):
        return True
    if type(exc) is not ValueError or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return any(d in Path(tb.tb_frame.f_code.co_filename).resolve().parents for d in PROJECT_DIRS)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if args.debug or not is_user_error(exc):
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever a library wrote
        return 2


if __name__ == "__main__":
    sys.exit(main())
