"""Simulator diagnostics that explain the success figures (each prints one table; no training):

    .venv/bin/python benchmarks/sim_probes.py visibility [--tasks ...] [--episodes 200] [sim KEY=VALUE ...]
    .venv/bin/python benchmarks/sim_probes.py render [--tasks ...]
    .venv/bin/python benchmarks/sim_probes.py step-times [--encoders test_vit vit_tiny_patch16_224] [--tasks ...]
    .venv/bin/python benchmarks/sim_probes.py goal-error CHECKPOINT [--episodes 50] [sim KEY=VALUE ...]
    .venv/bin/python benchmarks/sim_probes.py point-error ENCODER --tasks FetchPush-v4 [--episodes 15] [sim KEY=VALUE ...]
    .venv/bin/python benchmarks/sim_probes.py closed-loop-points CHECKPOINT --recipe RECIPE [--episodes 16]

* visibility: per task and camera, how much of the goal (and object) the robot hides at the start of
  each evaluation episode (``FetchSim.visibility``): where one camera loses the goal, the others must
  place it alone.
* render: frames per second rendering all cameras of each task at 64, 96 and 128 px.
* step-times: the cost of one training step per encoder (why the sim policy is timm's test_vit and not
  vit_tiny on a CPU).
* goal-error: for a FetchReach policy, how far its first chunk ends from the goal on its training
  seeds, its validation seeds and unseen ones (memorised goals vs placed ones).
* point-error: a pretrained point head's error per point on noisy expert rollouts, per expert phase.
* closed-loop-points: a policy with point tokens from a frozen encoder in its own closed loop, and where its point head puts
  the object and the goal at each episode's end against the simulator: a failure whose points said
  "at the goal" is the encoder's, one whose points saw the gap is the policy's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sim_tests  # noqa: E402,F401  (sets MUJOCO_GL before mujoco loads)
from sim_tests.closed_loop import load_task_config  # noqa: E402
from sim_tests.configuration import SimConfig  # noqa: E402
from sim_tests.fetch_env import FetchSim  # noqa: E402

EVAL_SEED = 100_000  # the evaluation seeds of benchmarks/sim_success.py


def render_fps(cfg: SimConfig, frames: int = 100) -> float:
    """Frames per second for rendering every camera of ``cfg`` (one 'frame' = all cameras)."""
    sim = FetchSim(cfg)
    sim.reset(seed=0)
    sim.render()
    t0 = time.perf_counter()
    for _ in range(frames):
        sim.render()
    fps = frames / (time.perf_counter() - t0)
    sim.close()
    return fps


def print_visibility(cfg: SimConfig, episodes: int, clear: float = 0.5) -> None:
    """Per camera and target: median / 5th percentile of the visible fraction, and how often it is under ``clear``."""
    import numpy as np

    sim = FetchSim(cfg)
    vis = []
    for i in range(episodes):
        sim.reset(seed=EVAL_SEED + i, render=False)
        vis.append(sim.visibility())
    sim.close()
    print(f"{cfg.task} @ {cfg.image_size} px, {episodes} start states (seeds from {EVAL_SEED}); visible fraction of each target")
    print(f"  {'camera':<12} {'target':<8} {'median':>7} {'p5':>6} {'under ' + format(clear, '.0%'):>10}")
    for cam in cfg.cameras:
        for target in vis[0][cam]:
            v = np.array([x[cam][target] for x in vis])
            print(f"  {cam:<12} {target:<8} {np.median(v):>7.2f} {np.percentile(v, 5):>6.2f} {np.mean(v < clear):>10.0%}")
    for target in vis[0][next(iter(cfg.cameras))]:
        n_clear = np.array([sum(x[c][target] >= clear for c in cfg.cameras) for x in vis])
        print(f"  {target}: seen by fewer than two cameras in {np.mean(n_clear < 2):.0%} of start states, by none in {np.mean(n_clear == 0):.0%}")


def print_goal_error(cfg: SimConfig, checkpoint: Path, episodes: int) -> None:
    """Distance from the goal to the end of the policy's first chunk at the start of an episode, on the
    seeds it trained on against held-out ones: a gap between them is goals memorised, not placed."""
    import json

    import numpy as np
    import torch
    import yaml

    from vit_policy.geometry import geodesic_deg
    from vit_policy.model.policy import VisuomotorPolicy
    from vit_policy.observation import Observation

    policy = VisuomotorPolicy.from_pretrained(checkpoint).eval()
    meta = json.loads((checkpoint / "metadata.json").read_text())
    seed_of: dict[Path, int] = {}  # bag -> the seed it was recorded with (its directory's demos.yaml)
    for folder in {Path(b).parent for split in ("train", "val") for b in meta[f"{split}_episodes"]}:
        seed_of.update({folder / e["bag"]: e["seed"] for e in yaml.safe_load((folder / "demos.yaml").read_text())["episodes"]})
    groups = {split: [seed_of[Path(b)] for b in meta[f"{split}_episodes"]] for split in ("train", "val")}
    groups["train"] = groups["train"][:episodes]
    groups["unseen"] = list(range(EVAL_SEED, EVAL_SEED + episodes))
    sim = FetchSim(cfg)
    orient = cfg.goal_yaw_range_deg > 0  # also the orientation: chunk end vs goal, and the start's (home) error
    print(f"{checkpoint}: end of the first chunk to the goal (cm), {cfg.task} @ {cfg.image_size} px"
          + (f"; orientation (deg; tolerance {cfg.yaw_tolerance_deg:g}, 'start' = not turning)" if orient else ""))
    print(f"  {'seeds':<8} {'n':>4} {'median':>7} {'p90':>6} {'over 5 cm':>10}"
          + (f" {'deg median':>11} {'over tol':>9} {'start median':>13}" if orient else ""))
    for split, seeds in groups.items():
        err, deg, start = [], [], []
        for seed in seeds:
            f = sim.reset(seed=seed)
            obs = Observation(stamp_ns=f.stamp_ns, images={c: f.images[c] for c in policy.cfg.cameras},
                              position=f.position, quaternion=f.quaternion, gripper=f.gripper)
            with torch.no_grad():
                chunk = policy.predict(obs)
            err.append(float(np.linalg.norm(chunk.target_positions[-1] - f.goal)))
            if orient:
                deg.append(float(geodesic_deg(chunk.target_quaternions[-1], f.goal_quaternion)))
                start.append(float(f.orientation_error_deg))
        e = 100 * np.array(err)
        line = f"  {split:<8} {len(e):>4} {np.median(e):>7.1f} {np.percentile(e, 90):>6.1f} {np.mean(e > 5):>10.0%}"
        if orient:
            line += f" {np.median(deg):>11.1f} {np.mean(np.array(deg) > cfg.yaw_tolerance_deg):>9.0%} {np.median(start):>13.1f}"
        print(line)
    sim.close()


def points_m(policy: Any, frame: Any, mean: Any, std: Any) -> Any:
    """A policy's point head on one rendered frame, in metres (``mean`` / ``std``: the pretraining file's)."""
    import numpy as np
    import torch

    with torch.no_grad():
        pred = policy.encode_points({c: torch.from_numpy(np.ascontiguousarray(frame.images[c]))[None] for c in policy.cfg.cameras})
    return pred[0].numpy() * std + mean


def print_point_error(cfg: SimConfig, encoder_file: Path, episodes: int, noise_m: float = 0.01) -> None:
    """Error of a pretrained point head on what a closed loop shows (the object pushed or carried, the
    gripper against it), not on its own random-reaching frames: the expert drives ``episodes`` unseen
    seeds with ``noise_m`` of execution noise; cm per expert phase."""
    import numpy as np

    from sim_tests.experts import expert_command, make_expert, with_execution_noise
    from sim_tests.record import policy_config_for
    from vit_policy.model.checkpoint import build_policy, read_point_stats

    names, mean_t, std_t = read_point_stats(encoder_file, "--point-error")
    mean, std = mean_t.numpy(), std_t.numpy()
    policy = build_policy(policy_config_for(cfg, overrides=[f"encoder.weights={encoder_file}", f"points.count={len(names)}"])).eval()
    sim, rng, errors = FetchSim(cfg), np.random.default_rng(0), {}
    for i in range(episodes):
        frame, expert = sim.reset(seed=EVAL_SEED + i), make_expert(cfg.task)
        while not sim.done:
            pred = points_m(policy, frame, mean, std)
            truth = np.stack([{"goal": frame.goal, "ee": frame.position, "object": frame.object_position}[n] for n in names])
            errors.setdefault(expert.phase, []).append(100 * np.linalg.norm(pred - truth, axis=-1))
            frame = sim.step(with_execution_noise(expert_command(expert, frame), rng, noise_m))
    sim.close()
    print(f"{encoder_file}: point error (cm) on {episodes} noisy expert rollouts of {cfg.task}, seeds from {EVAL_SEED}")
    print(f"  {'phase':<9} {'frames':>6} " + " ".join(f"{n + ' median':>14} {'p90':>5}" for n in names))
    for phase, errs in sorted(errors.items(), key=lambda kv: -len(kv[1])):
        e = np.array(errs)
        print(f"  {phase:<9} {len(e):>6} " + " ".join(f"{np.median(e[:, j]):>14.2f} {np.percentile(e[:, j], 90):>5.2f}" for j in range(len(names))))


OBJECT_POINTS, GOAL_POINTS = ("object", "pushed"), ("goal", "end")  # simulator-labelled and hindsight names


def print_closed_loop_points(cfg: SimConfig, checkpoint: Path, episodes: int) -> None:
    """Each episode's end (xy, cm): the object's distance to the goal in the simulator and by the policy's
    own points, and each point's error; the policy runs through PolicyRunner as in sim_success.py."""
    import numpy as np
    import yaml

    from sim_tests.closed_loop import RunnerController
    from vit_policy.model.checkpoint import read_point_stats
    from vit_policy.model.policy import VisuomotorPolicy

    policy = VisuomotorPolicy.from_pretrained(checkpoint).eval()
    weights = yaml.safe_load((checkpoint / "config.yaml").read_text())["encoder"].get("weights")  # as trained: the names
    if policy.cfg.points is None or not weights:
        raise SystemExit(f"closed-loop-points: {checkpoint} has no point tokens (policy.points) from a pretraining file")
    if policy.cfg.encoder.freeze != "all":  # the action loss trained the point head: its outputs are features now
        raise SystemExit(f"closed-loop-points: {checkpoint} trained its encoder and point head with the policy (encoder.freeze: "
                         f"{policy.cfg.encoder.freeze}), so its points are no longer positions; use a frozen-encoder checkpoint")
    names, mean, std = read_point_stats(weights, "closed-loop-points", "(the file the checkpoint's encoder.weights names)")
    obj_i = next((names.index(n) for n in OBJECT_POINTS if n in names), None)
    goal_i = next((names.index(n) for n in GOAL_POINTS if n in names), None)
    if obj_i is None or goal_i is None:
        raise SystemExit(f"closed-loop-points: the points {names} need one of {OBJECT_POINTS} and one of {GOAL_POINTS}")
    sim, ctl = FetchSim(cfg), RunnerController(policy, cfg)
    print(f"{checkpoint}: episode ends, {cfg.task}, seeds from {EVAL_SEED}; xy cm; points {names[obj_i]!r} (object), "
          f"{names[goal_i]!r} (goal)")
    print(f"  {'seed':>7} {'result':>7} {'object-goal':>12} {'by points':>10} {'object err':>11} {'goal err':>9}")
    said_done, saw_gap = 0, 0
    for seed in range(EVAL_SEED, EVAL_SEED + episodes):
        frame = sim.reset(seed=seed, render=True)
        ctl.reset()
        while not sim.done:
            frame = sim.step(ctl.command(frame), render=True)
        pts = points_m(policy, frame, mean.numpy(), std.numpy())[:, :2]
        true_gap = 100 * np.linalg.norm(frame.object_position[:2] - frame.goal[:2])
        seen_gap = 100 * np.linalg.norm(pts[obj_i] - pts[goal_i])
        if not frame.success:
            said_done += seen_gap < 5.0
            saw_gap += seen_gap >= 5.0
        print(f"  {seed:>7} {'ok' if frame.success else 'FAIL':>7} {true_gap:>12.1f} {seen_gap:>10.1f} "
              f"{100 * np.linalg.norm(pts[obj_i] - frame.object_position[:2]):>11.1f} {100 * np.linalg.norm(pts[goal_i] - frame.goal[:2]):>9.1f}")
    ctl.close()
    sim.close()
    print(f"failures: {said_done + saw_gap}; points said the object was within 5 cm of the goal: {said_done} (the encoder's); "
          f"points saw the gap: {saw_gap} (the policy's)")


def train_step_s(cfg: SimConfig, encoder: str, batch: int = 32, steps: int = 10) -> float:
    """Seconds per forward + backward + AdamW step of the sim policy with ``encoder`` (random frames)."""
    import torch

    from benchmarks.training import seconds_per_step
    from sim_tests.record import policy_config_for
    from vit_policy.model.policy import VisuomotorPolicy, identity_stats

    pcfg = policy_config_for(cfg, overrides=[f"encoder.name={encoder}"])
    policy = VisuomotorPolicy(pcfg)
    policy.set_stats(identity_stats(pcfg))
    k, size = pcfg.chunk_size, cfg.image_size
    data = {"images": {c: torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8) for c in pcfg.cameras},
            "position": torch.rand(batch, 3), "quaternion": torch.tensor([[0.0, 0.0, 0.0, 1.0]]).repeat(batch, 1),
            "gripper": torch.ones(batch), "action": torch.rand(batch, k, 10), "action_mask": torch.ones(batch, k)}
    return seconds_per_step(policy, [data] * steps, warmup=[data] * 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe", choices=["visibility", "render", "step-times", "goal-error", "point-error", "closed-loop-points"])
    ap.add_argument("path", nargs="?", metavar="CHECKPOINT|ENCODER",
                    help="goal-error, closed-loop-points: a checkpoint; point-error: an encoder file")
    ap.add_argument("--recipe", default=None, metavar="NAME|YAML", help="closed-loop-points: the recipe whose sim config the policy ran in")
    ap.add_argument("--tasks", nargs="+", default=["FetchReach-v4", "FetchPush-v4", "FetchPickAndPlace-v4"])
    ap.add_argument("--episodes", type=int, default=None, help="start states / episodes (default 200 visibility, 50 goal-error, 15 point-error, 16 closed-loop-points)")
    ap.add_argument("--encoders", nargs="+", default=["test_vit", "vit_tiny_patch16_224"], help="step-times: timm encoder names")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="sim config overrides for every task, e.g. image_size=64")
    args = ap.parse_args()
    if args.probe in ("goal-error", "point-error", "closed-loop-points") and not args.path:
        ap.error(f"{args.probe} needs a path: " + ("the encoder .safetensors" if args.probe == "point-error" else "the checkpoint directory"))
    if args.probe == "step-times":
        import torch

        torch.set_num_threads(args.threads)
        print(f"{'task':<22} {'cameras':<18} " + " ".join(f"{e:>22}" for e in args.encoders) + "   (ms per training step, batch 32)")
        for task in args.tasks:
            cfg = load_task_config(task, None, args.overrides)
            ms = [1000 * train_step_s(cfg, e) for e in args.encoders]
            cams = "+".join(cfg.cameras) + f"@{cfg.image_size}"
            print(f"{task:<22} {cams:<18} " + " ".join(f"{m:>15.0f} ({m / ms[0]:.1f}x)" for m in ms))
    elif args.probe == "visibility":
        for task in args.tasks:
            print_visibility(load_task_config(task, None, args.overrides), args.episodes or 200)
    elif args.probe == "goal-error":
        task = args.tasks[0] if args.tasks[0].startswith("FetchReach") else "FetchReach-v4"  # FetchReachOrient adds orientation
        print_goal_error(load_task_config(task, None, args.overrides), Path(args.path), args.episodes or 50)
    elif args.probe == "point-error":
        print_point_error(load_task_config(args.tasks[0], None, args.overrides), Path(args.path), args.episodes or 15)
    elif args.probe == "closed-loop-points":
        import torch

        from sim_tests.demo import load_recipe

        torch.set_num_threads(args.threads)
        cfg = load_recipe(args.recipe).sim_configs()[0] if args.recipe else load_task_config(args.tasks[0], None, args.overrides)
        print_closed_loop_points(cfg, Path(args.path), args.episodes or 16)
    else:
        print(f"{'task':<22} {'cameras':<16} " + " ".join(f"{s:>7}px" for s in (64, 96, 128)) + "   (frames/s, all cameras)")
        for task in args.tasks:
            cams = "+".join(load_task_config(task, None, args.overrides).cameras)
            print(f"{task:<22} {cams:<16} " + " ".join(f"{render_fps(load_task_config(task, None, [*args.overrides, f'image_size={s}'])):>9.0f}" for s in (64, 96, 128)))


if __name__ == "__main__":
    main()
