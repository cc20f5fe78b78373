"""Closed-loop success per Fetch task: the trained policy next to the scripted expert and random actions.

    .venv/bin/python benchmarks/sim_success.py --recipe reach_labels push_labels pick_labels   # configs/sim/recipes/
    .venv/bin/python benchmarks/sim_success.py [--tasks FetchReach-v4 ...] [--demos 200] [--hold-steps N]
        [--train-minutes 60 | --train-steps N] [--episodes 50] [--action-noise M] [--policy KEY=VALUE ...]
        [--train KEY=VALUE ...] [--pretrain RESETS [--pretrain-steps N] [--pretrain-expert F]] [sim KEY=VALUE ...]

Per row, in one run: record expert demonstrations (rosbag2, the task's configs/sim/ cameras, whole
episodes or each cut ``--hold-steps`` after its first success), optionally pretrain the encoder on
RESETS x 8 rendered frames labelled with the goal / object / EE positions (simulator labels,
``sim_tests.pretrain``), train the sim policy for ``--train-steps`` (or the steps a timing probe fits
into ``--train-minutes``), then evaluate it closed loop through PolicyRunner on seeds no demonstration
used, with the expert and random actions on the same seeds. A recipe (``--recipe``, YAML under
configs/sim/recipes/, the same files the demo reads) sets all of these for its row; flags given with
it are added after the recipe's overrides. Prints one table:

  task | cameras | size | demos | labels | pretrain min | steps | train min | policy [Wilson 95%] | expert | random | record s

Diagnostics that explain these figures (visibility, render rate, step times, goal and point errors)
are in benchmarks/sim_probes.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sim_tests  # noqa: E402,F401  (sets MUJOCO_GL before mujoco loads)
from sim_tests.closed_loop import TASK_CONFIGS, evaluate_expert, evaluate_policy, evaluate_random  # noqa: E402
from sim_tests.pretrain import pretrain_for_recipe  # noqa: E402
from sim_tests.record import train_config_for  # noqa: E402


EVAL_SEED = 100_000  # demonstrations use seeds from 0 (or --demo-seed): evaluation never sees their goals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", nargs="+", default=[], metavar="NAME|YAML", help="recipes (configs/sim/recipes/<NAME>.yaml), one row each")
    ap.add_argument("--tasks", nargs="+", default=["FetchReach-v4", "FetchPush-v4", "FetchPickAndPlace-v4"], help="without --recipe")
    ap.add_argument("--demos", type=int, default=200)
    ap.add_argument("--train-minutes", type=float, default=60.0, help="training budget per task (timed probe; validation comes on top)")
    ap.add_argument("--train-steps", type=int, default=None, help="optimiser steps (default: a recipe's, else as many as the budget allows)")
    ap.add_argument("--episodes", type=int, default=None, help="evaluation episodes (default: a recipe's, else 50)")
    ap.add_argument("--out", default="outputs/bench_sim")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--action-noise", type=float, default=0.0, metavar="M", help="DART execution noise while recording (metres)")
    ap.add_argument("--hold-steps", type=int, default=None, metavar="N",
                    help="cut each demonstration N steps after its first success (default: whole episodes)")
    ap.add_argument("--policy", nargs="+", default=[], metavar="KEY=VALUE", help="configs/sim/policy.yaml overrides")
    ap.add_argument("--train", nargs="+", default=[], metavar="KEY=VALUE", help="training config overrides, e.g. augment.pose_noise_m=0.02")
    ap.add_argument("--pretrain", type=int, default=0, metavar="RESETS",
                    help="pretrain the encoder on RESETS x 8 frames labelled with simulator positions first")
    ap.add_argument("--pretrain-steps", type=int, default=8000, help="optimiser steps of the encoder pretraining (batch 64)")
    ap.add_argument("--pretrain-expert", type=float, default=0.0, metavar="F",
                    help="share of the pretraining resets the scripted expert drives (with execution noise) instead of random reaching")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="sim config overrides for every task, e.g. image_size=64")
    args = ap.parse_args()

    import torch

    from sim_tests.demo import TaskPlan, load_recipe

    torch.set_num_threads(args.threads)
    if args.recipe:
        recipes = [load_recipe(r) for r in args.recipe]
        for r in recipes:
            r.sim_overrides += args.overrides
            r.policy_overrides += args.policy
            r.train_overrides += args.train
            r.max_steps = args.train_steps or r.max_steps
            r.eval_episodes = args.episodes or r.eval_episodes
    else:
        recipes = [TaskPlan(task, TASK_CONFIGS[task].removeprefix("sim/"), args.demos, args.train_steps or 0, args.episodes or 50,
                            hold_steps=args.hold_steps, sim_overrides=list(args.overrides), action_noise_m=args.action_noise,
                            pretrain_resets=args.pretrain, pretrain_steps=args.pretrain_steps, pretrain_expert=args.pretrain_expert,
                            policy_overrides=list(args.policy), train_overrides=list(args.train)) for task in args.tasks]
    rows = [run_recipe(r, Path(args.out), args.train_minutes) for r in recipes]
    head = ("task", "cameras", "size", "demos", "labels", "pretrain min", "steps", "train min", "policy [Wilson 95%]", "expert", "random", "record s")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    print()
    for r in [head, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    print(f"\nevaluation seeds from {EVAL_SEED}, torch threads {args.threads}; labels: whether simulator positions labelled pretraining frames")


def run_recipe(r: "TaskPlan", out: Path, train_minutes: float) -> tuple:  # noqa: F821
    """Record, (pretrain,) train and evaluate one recipe; the table row."""
    from vit_policy.model.policy import VisuomotorPolicy
    from vit_policy.train import train

    from sim_tests.demo import record_recipe

    root = out / r.task
    cfg, bags, record_s = record_recipe(r, root)
    policy_overrides, pretrain_min = list(r.policy_overrides), 0.0
    t0 = time.perf_counter()
    pre = pretrain_for_recipe(r, cfg, bags, root / "pretrain" / "encoder.safetensors", r.policy_overrides)
    if pre is not None:
        pretrain_min = (time.perf_counter() - t0) / 60
        print(pre.table())
        policy_overrides.append(f"encoder.weights={pre.path}")
    steps = r.max_steps or _steps_in_budget(
        train_config_for(cfg, bags, root / "probe", steps=20, policy_overrides=policy_overrides, overrides=r.train_overrides),
        train_minutes - pretrain_min)
    t0 = time.perf_counter()
    result = train(train_config_for(cfg, bags, root, steps=steps, policy_overrides=policy_overrides, overrides=r.train_overrides))
    train_min = (time.perf_counter() - t0) / 60
    policy = VisuomotorPolicy.from_pretrained(result.last).eval()
    pol = evaluate_policy(policy, cfg, r.eval_episodes, EVAL_SEED, root / "eval", gifs=5, progress=True)
    exp = evaluate_expert(cfg, r.eval_episodes, EVAL_SEED)
    rnd = evaluate_random(cfg, r.eval_episodes, EVAL_SEED)
    print(pol.table())
    lo, hi = pol.wilson95
    demos = (f"{r.demos}" + (f" (DART {r.action_noise_m * 100:g} cm)" if r.action_noise_m else "")
             + (f" (hold {r.hold_steps})" if r.hold_steps is not None else " (whole)"))
    return (cfg.task, "+".join(cfg.cameras), f"{cfg.image_size}px", demos, "yes" if r.simulator_labels else "no", f"{pretrain_min:.1f}",
            result.step, f"{train_min:.1f}", f"{pol.success_rate:.0%} [{lo:.0%}, {hi:.0%}]", f"{exp.success_rate:.0%}",
            f"{rnd.success_rate:.0%}", f"{record_s:.0f}")


def _steps_in_budget(probe: object, minutes: float) -> int:
    """Optimiser steps that fit the budget: the time of 60 steps minus that of 20 (start-up cancels out)."""
    import dataclasses

    from vit_policy.train import train

    def timed(steps: int) -> float:
        t0 = time.perf_counter()
        train(dataclasses.replace(probe, max_steps=steps, out_dir=str(Path(probe.out_dir) / str(steps))))  # type: ignore[type-var,attr-defined]
        return time.perf_counter() - t0

    timed(1)  # fills the frame cache
    per_step = (timed(60) - timed(20)) / 40
    return max(20, int(minutes * 60 / per_step * 0.95))


if __name__ == "__main__":
    main()
