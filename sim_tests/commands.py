"""The simulator's ``vit-policy`` subcommands: demo, sim-record, sim-eval, sim-pretrain.

Registered through the ``vit_policy.commands`` entry point (setup.py), so the core CLI never imports
the simulator; each command imports its module only when it runs.
"""

from __future__ import annotations

import argparse

SIM_TASKS = ["FetchReach-v4", "FetchPush-v4", "FetchPickAndPlace-v4", "FetchReachOrient"]  # keys of sim_tests.closed_loop.TASK_CONFIGS


def set_threads(threads: int | None) -> None:
    """torch CPU threads, when given (None or 0: torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# The commands: parsed arguments -> typed calls of sim_tests' functions (each module imported when it runs)
# --------------------------------------------------------------------------------------------------


def cmd_sim_record(args: argparse.Namespace) -> int:
    """Record scripted-expert demonstrations of a task as rosbag2 bags; print how to train on them."""
    from tqdm.auto import tqdm

    from sim_tests.closed_loop import load_task_config
    import yaml

    from sim_tests.record import data_config_for, record_demonstrations
    from vit_policy.config import to_dict

    cfg = load_task_config(args.task, args.config, args.overrides)
    with tqdm(total=args.episodes, desc=f"record {cfg.task}", unit="ep", dynamic_ncols=True) as bar:
        infos = record_demonstrations(cfg, args.out, args.episodes, args.seed, args.storage, progress=lambda _: bar.update(1),
                                      action_noise_m=args.action_noise, hold_steps=args.hold_steps)
    steps = sum(i.steps + 1 for i in infos)
    print(f"{len(infos)} demonstrations of {cfg.task} ({steps} steps, cameras {sorted(cfg.cameras)}) in {args.out}")
    data = {k: v for k, v in to_dict(data_config_for(cfg, labels="command")).items()
            if k in ("cameras", "pose_topic", "tf_base_frame", "gripper", "command_topic", "command_gripper_topic", "labels", "control_rate_hz")}
    print(f"train on them with data: {yaml.safe_dump(data, default_flow_style=True, width=1_000_000).strip()}")
    return 0


def cmd_sim_eval(args: argparse.Namespace) -> int:
    """Closed-loop success of a checkpoint (or the expert / random baseline); print the table, write sim_eval.json."""
    from pathlib import Path

    from sim_tests.closed_loop import evaluate_expert, evaluate_policy, evaluate_random, load_task_config
    from vit_policy.config import ConfigError

    cfg = load_task_config(args.task, args.config, args.overrides)
    set_threads(args.threads)
    if args.baseline and args.checkpoint:
        raise ConfigError("give either --checkpoint or --baseline, not both")
    out = Path(args.out or f"outputs/sim_eval/{args.task or cfg.task}")
    gifs = args.episodes if args.gifs is None else args.gifs
    if args.baseline == "random":
        report = evaluate_random(cfg, args.episodes, args.seed, out, gifs, progress=True)
    elif args.baseline == "expert":
        report = evaluate_expert(cfg, args.episodes, args.seed, out, gifs, progress=True)
    else:
        if not args.checkpoint:
            raise ConfigError("--checkpoint: give a trained checkpoint directory (or --baseline expert|random)")
        from vit_policy.deploy import load_policy

        policy = load_policy(args.checkpoint, cfg.runtime)  # runtime.backend: torch or onnxruntime
        report = evaluate_policy(policy, cfg, args.episodes, args.seed, out, gifs, progress=True)
    print(report.table())
    print(f"report: {out / 'sim_eval.json'}" + (f", GIFs: {out / 'gifs'}" if gifs else ""))
    return 0


def cmd_sim_pretrain(args: argparse.Namespace) -> int:
    """Render labelled frames of a task and pretrain the sim policy's encoder on them; print the result."""
    from pathlib import Path

    from sim_tests.closed_loop import load_task_config
    from sim_tests.pretrain import pretrain_for_task

    cfg = load_task_config(args.task, args.config, args.overrides)
    result = pretrain_for_task(cfg, Path(args.out), args.resets, args.steps, policy_overrides=args.policy,
                               frames_per_reset=args.frames_per_reset, expert_fraction=args.expert_fraction)
    print(result.table())
    from sim_tests.record import policy_config_for

    enc = policy_config_for(cfg, overrides=args.policy).encoder  # what the file holds: training must build the same encoder
    print(f"train on it (a train config whose cameras are {list(cfg.cameras)}): policy.encoder.weights={result.path} "
          f"policy.encoder.family={enc.family} policy.encoder.name={enc.name} policy.encoder.img_size={enc.img_size} "
          f"policy.encoder.token_mode=patches policy.encoder.freeze=all policy.points.count={len(result.target_names)} "
          f"'policy.cameras={list(cfg.cameras)}'")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The end-to-end demo: every stage of every task of the plan (``--quick``: the smoke run)."""
    from sim_tests.demo import DemoPlan, check_plan, quick_plan, run_demo

    set_threads(args.threads)
    plan = quick_plan() if args.quick else DemoPlan()
    plan.policy_overrides = list(args.policy_overrides or [])
    check_plan(plan)
    run_demo(args.out, plan)
    return 0


# --------------------------------------------------------------------------------------------------
# The parsers
# --------------------------------------------------------------------------------------------------


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
    p.set_defaults(func=cmd_sim_record)


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
    p.set_defaults(func=cmd_sim_eval)


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
    p.set_defaults(func=cmd_sim_pretrain)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end to end in MuJoCo: expert demonstrations -> training -> replay -> closed loop -> report")
    p.add_argument("--out", default="outputs/demo", metavar="DIR")
    p.add_argument("--quick", action="store_true", help="a smoke run of every stage on FetchReach, under a minute on 2 cores (nothing learns)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("policy_overrides", nargs="*", metavar="KEY=VALUE",
                   help="configs/sim/policy.yaml overrides for every task, e.g. encoder.name=vit_tiny_patch16_224 (needs a GPU or hours)")
    p.set_defaults(func=cmd_demo)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the simulator's subcommands to ``vit-policy``."""
    for add in (add_demo, add_sim_record, add_sim_pretrain, add_sim_eval):
        add(sub)
