"""The simulator's ``vit-policy`` subcommands: demo, sim-record, sim-eval, sim-pretrain.

Registered through the ``vit_policy.commands`` entry point (setup.py), so the core CLI never imports
the simulator; each command imports its module only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Callable


SIM_TASKS = ["FetchReach-v4", "FetchPush-v4", "FetchPickAndPlace-v4", "FetchReachOrient"]  # keys of sim_tests.closed_loop.TASK_CONFIGS


def lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand's entry that imports its module only when it runs (``vit-policy --help`` stays fast)."""

    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), function)(args) or 0)

    return run


def task_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=SIM_TASKS, help="task (its configs/sim/ file is the default config)")
    p.add_argument("--config", help="sim YAML (default: configs/sim/ of the task)")


def add_sim_record(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim-record", help="record scripted-expert demonstrations of a MuJoCo Fetch task as rosbag2")
    task_arguments(p)
    p.add_argument("--episodes", type=int, default=50, help="successful demonstrations to record")
    p.add_argument("--out", required=True, metavar="DIR", help="new directory for episode_000 ... and demos.yaml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument("--action-noise", type=float, default=0.0, metavar="M",
                   help="execute the expert's target plus N(0, M) metres per axis, record the clean command (DART)")
    p.add_argument("--hold-steps", type=int, default=None, metavar="N",
                   help="end each bag N steps after the task is first achieved (default: the whole episode)")
    p.add_argument("overrides", nargs="*", help="sim config overrides, e.g. image_size=128 episode_steps=30")
    p.set_defaults(func=lazy("sim_tests.record", "cli_sim_record"))


def add_sim_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim-eval", help="closed-loop success rate of a checkpoint in a MuJoCo Fetch task, through PolicyRunner")
    p.add_argument("--checkpoint", metavar="DIR", help="trained checkpoint directory")
    p.add_argument("--baseline", choices=["expert", "random"], help="evaluate the scripted expert or random actions instead")
    task_arguments(p)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="first episode seed (episodes use seed, seed+1, ...)")
    p.add_argument("--out", metavar="DIR", help="output directory (default outputs/sim_eval/<task>)")
    p.add_argument("--gifs", type=int, default=None, help="GIFs of the first N episodes (default: every episode)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("overrides", nargs="*", help="sim config overrides, e.g. runtime.strategy=receding episode_steps=80")
    p.set_defaults(func=lazy("sim_tests.closed_loop", "cli_sim_eval"))


def add_sim_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sim-pretrain", help="pretrain the sim policy's encoder on rendered frames labelled with goal / object / EE positions")
    task_arguments(p)
    p.add_argument("--resets", type=int, default=2000, help="episodes of random reaching, each a new goal (and object)")
    p.add_argument("--frames-per-reset", type=int, default=8)
    p.add_argument("--expert-fraction", type=float, default=0.0, metavar="F",
                   help="share of the resets the task's scripted expert drives (with execution noise) instead of random reaching")
    p.add_argument("--steps", type=int, default=8000, help="optimiser steps (batch 64)")
    p.add_argument("--out", required=True, metavar="FILE", help="the backbone's weights (.safetensors), for encoder.weights")
    p.add_argument("--policy", nargs="+", default=[], metavar="KEY=VALUE", help="configs/sim/policy.yaml overrides (the encoder to pretrain)")
    p.add_argument("overrides", nargs="*", help="sim config overrides, e.g. image_size=64")
    p.set_defaults(func=lazy("sim_tests.pretrain", "cli_sim_pretrain"))


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end in MuJoCo: expert demonstrations -> training -> replay -> closed loop -> report")
    p.add_argument("--out", default="outputs/demo", metavar="DIR")
    p.add_argument("--quick", action="store_true", help="a minutes-long smoke run of every stage (nothing learns)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("policy_overrides", nargs="*", metavar="KEY=VALUE",
                   help="configs/sim/policy.yaml overrides for every task, e.g. encoder.name=vit_tiny_patch16_224 (needs a GPU or hours)")
    p.set_defaults(func=lazy("sim_tests.demo", "cli_demo"))



def register(sub: argparse._SubParsersAction) -> None:
    """Add the simulator's subcommands to ``vit-policy``."""
    for add in (add_demo, add_sim_record, add_sim_pretrain, add_sim_eval):
        add(sub)
