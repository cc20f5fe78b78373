"""The ``vit-policy`` command: demo, train, replay, serve, sim-eval.

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
# Subcommands of the other modules register here: one add_<name>(sub) function each.
# --------------------------------------------------------------------------------------------------

REGISTER = [add_policy_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vit-policy", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTER:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from vit_policy.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
