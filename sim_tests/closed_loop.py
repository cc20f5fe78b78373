"""Closed-loop evaluation: a policy drives the simulated Fetch through the robot's own PolicyRunner.

Every 40 ms env step the simulator's frames and EE pose go into ``vit_policy.runtime.PolicyRunner``
(the runner the ROS node uses: synchronisation, chunk execution, safety filter), the runner's tick
gives a ``Command`` and the simulator applies it. With ``runtime.synchronous`` the inference runs
inside the tick while sim time stands still, so a run is deterministic for a seed.

Per episode: success (the env's criterion at the last step), time to the first success, the command
statuses seen, and optionally a GIF. Over episodes: the success rate with a Wilson 95% interval.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np

from sim_tests.configuration import SimConfig
from sim_tests.experts import expert_command, make_expert
from sim_tests.fetch_env import FINGER_JOINTS, GRIPPER_RANGE, ArmCommand, FetchSim, SimFrame
from vit_policy.config import ConfigError

if TYPE_CHECKING:
    from vit_policy.model.policy import Policy


class Controller(Protocol):
    """Anything that turns a frame into a command for the simulator (the runner, an expert, random)."""

    def reset(self) -> None: ...

    def command(self, frame: SimFrame) -> Any: ...


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    steps: int
    first_success_step: int | None
    time_to_success_s: float | None
    final_distance_m: float  # achieved (EE or object) to goal at the end
    final_orientation_error_deg: float | None = None  # EE to goal orientation at the end (orientation goals)
    statuses: dict[str, int] = field(default_factory=dict)  # runner command statuses per tick
    non_finite_commands: int = 0
    gif: str | None = None


@dataclass
class EvalReport:
    task: str
    controller: str
    episodes: list[EpisodeResult]
    cameras: dict[str, str]
    image_size: int
    wall_s: float

    @property
    def successes(self) -> int:
        return sum(e.success for e in self.episodes)

    @property
    def success_rate(self) -> float:
        return self.successes / max(len(self.episodes), 1)

    @property
    def wilson95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, len(self.episodes))

    @property
    def mean_time_to_success_s(self) -> float | None:
        times = [e.time_to_success_s for e in self.episodes if e.time_to_success_s is not None]
        return float(np.mean(times)) if times else None

    def summary(self) -> dict[str, Any]:
        lo, hi = self.wilson95
        return {
            "task": self.task, "controller": self.controller, "episodes": len(self.episodes), "successes": self.successes,
            "success_rate": self.success_rate, "wilson95": [lo, hi], "mean_time_to_success_s": self.mean_time_to_success_s,
            "cameras": self.cameras, "image_size": self.image_size, "wall_s": self.wall_s,
            "non_finite_commands": sum(e.non_finite_commands for e in self.episodes),
        }

    def table(self) -> str:
        """A short text table: one row per episode and the totals."""
        orient = any(e.final_orientation_error_deg is not None for e in self.episodes)
        lines = [f"{'seed':>6} {'success':>8} {'t_success s':>12} {'final dist mm':>14}" + (f" {'final deg':>10}" if orient else "") + "  statuses"]
        for e in self.episodes:
            t = f"{e.time_to_success_s:.2f}" if e.time_to_success_s is not None else "-"
            st = ", ".join(f"{k} {v}" for k, v in sorted(e.statuses.items()))
            deg = f" {e.final_orientation_error_deg:>10.1f}" if e.final_orientation_error_deg is not None else (f" {'-':>10}" if orient else "")
            lines.append(f"{e.seed:>6} {str(e.success):>8} {t:>12} {e.final_distance_m * 1e3:>14.1f}{deg}  {st}")
        lo, hi = self.wilson95
        mt = self.mean_time_to_success_s
        lines.append(
            f"{self.task} / {self.controller}: {self.successes}/{len(self.episodes)} = {self.success_rate:.0%} "
            f"(Wilson 95% [{lo:.0%}, {hi:.0%}]), mean time to success {'-' if mt is None else f'{mt:.2f} s'}, {self.wall_s:.0f} s wall"
        )
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / "sim_eval.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**self.summary(), "per_episode": [asdict(e) for e in self.episodes]}, indent=2))
        return path


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------------------------------
# Controllers
# --------------------------------------------------------------------------------------------------


class RunnerController:
    """A policy behind ``PolicyRunner``, fed like the ROS node feeds it: frames, pose, then a tick."""

    needs_images = True  # run_episode renders the cameras for it

    def __init__(self, policy: Policy, cfg: SimConfig) -> None:
        from vit_policy.runtime import PolicyRunner

        # the simulator feeds the checkpoint as its demonstrations did: cameras, frame, finger range
        policy.spec.check_inputs(cfg.cameras, cfg.base_frame, FINGER_JOINTS, GRIPPER_RANGE,
                                 {"cameras": "sim.cameras (name: MuJoCo camera)", "base_frame": "sim.base_frame",
                                  "gripper_joints": "the Fetch finger joints", "gripper_range": "the Fetch finger range"})
        step_hz = 1.0 / FetchSim.STEP_S
        if abs(cfg.runtime.control_rate_hz - step_hz) > 1e-6:
            raise ConfigError(
                f"runtime.control_rate_hz: {cfg.runtime.control_rate_hz} Hz; the simulator ticks the runner once per "
                f"{FetchSim.STEP_S * 1e3:.0f} ms env step, so set it to {step_hz:g}"
            )
        self.runner = PolicyRunner(policy, cfg.runtime, cfg.safety, clock=lambda: self._now)
        self.cameras = list(policy.cfg.cameras)
        self._now = 0
        self.statuses: Counter[str] = Counter()
        if not cfg.runtime.synchronous:
            self.runner.start()

    def reset(self) -> None:
        self.runner.reset()
        self.runner.set_enabled(True)
        self.statuses = Counter()

    def command(self, frame: SimFrame) -> Any:
        self._now = frame.stamp_ns
        for cam in self.cameras:
            self.runner.on_image(cam, frame.stamp_ns, frame.images[cam])
        self.runner.on_pose(frame.stamp_ns, frame.position, frame.quaternion, frame.gripper)
        cmd = self.runner.tick(frame.stamp_ns)
        self.statuses[cmd.status] += 1
        return cmd

    def close(self) -> None:
        self.runner.shutdown()


class RandomController:
    """Uniform random env actions in [-1, 1]^4: the chance level of a task."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def command(self, frame: SimFrame) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, 4)


class ExpertController:
    """The task's scripted expert (reference success rate)."""

    def __init__(self, task: str) -> None:
        self.expert = make_expert(task)

    def reset(self) -> None:
        self.expert.reset()

    def command(self, frame: SimFrame) -> ArmCommand:
        return expert_command(self.expert, frame)


# --------------------------------------------------------------------------------------------------
# Episodes
# --------------------------------------------------------------------------------------------------


def _achieved_distance(frame: SimFrame) -> float:
    achieved = frame.object_position if frame.object_position is not None else frame.position
    return float(np.linalg.norm(achieved - frame.goal))


def gif_frame(frame: SimFrame, success: bool, scale: int = 2) -> np.ndarray:
    """The cameras side by side, upscaled, framed green once the task is achieved (red before)."""
    img = np.concatenate([frame.images[c] for c in sorted(frame.images)], axis=1)
    img = img.repeat(scale, axis=0).repeat(scale, axis=1)
    img[:3], img[-3:], img[:, :3], img[:, -3:] = ((40, 200, 60) if success else (220, 40, 40),) * 4
    return img


def run_episode(sim: FetchSim, controller: Controller, seed: int, gif_path: Path | None = None) -> EpisodeResult:
    """One episode under ``controller``; writes a GIF of the rollout when ``gif_path`` is given."""
    render = gif_path is not None or getattr(controller, "needs_images", False)
    frame = sim.reset(seed=seed, render=render)
    controller.reset()
    first: int | None = None
    frames = [gif_frame(frame, frame.success)] if gif_path else []
    bad = 0
    while not sim.done:
        cmd = controller.command(frame)
        if hasattr(cmd, "is_finite") and not cmd.is_finite():
            bad += 1  # the runner promises never to send one; count it if it does
        frame = sim.step(cmd, render=render)
        if frame.success and first is None:
            first = sim.steps
        if gif_path:
            frames.append(gif_frame(frame, frame.success))
    gif = None
    if gif_path is not None:
        import imageio.v2 as imageio

        gif_path.parent.mkdir(parents=True, exist_ok=True)
        imageio.mimsave(gif_path, frames, duration=sim.dt * 1000, loop=0)  # duration per frame in ms
        gif = str(gif_path)
    statuses = dict(getattr(controller, "statuses", {}))
    return EpisodeResult(
        seed=seed, success=bool(frame.success), steps=sim.steps, first_success_step=first,
        time_to_success_s=None if first is None else first * sim.dt, final_distance_m=_achieved_distance(frame),
        final_orientation_error_deg=frame.orientation_error_deg, statuses=statuses, non_finite_commands=bad, gif=gif,
    )


def run_episodes(
    cfg: SimConfig,
    make_controller: Callable[[FetchSim], Controller],
    episodes: int,
    seed: int = 0,
    out_dir: str | Path | None = None,
    gifs: int = 0,
    name: str = "policy",
    progress: bool = False,
) -> EvalReport:
    """Run ``episodes`` seeded episodes (seeds ``seed``...); GIFs of the first ``gifs`` into ``out_dir``."""
    if episodes < 1:
        raise ValueError(f"episodes: {episodes} must be at least 1")
    if gifs and out_dir is None:
        raise ValueError("gifs: give an output directory for the GIFs")
    sim = FetchSim(cfg)
    controller = make_controller(sim)
    results = []
    t0 = time.perf_counter()
    seeds = range(seed, seed + episodes)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, desc=f"sim-eval {cfg.task}", unit="ep", dynamic_ncols=True)
    try:
        for i, s in enumerate(seeds):
            gif = Path(out_dir) / "gifs" / f"{name}_seed{s:04d}.gif" if out_dir is not None and i < gifs else None
            results.append(run_episode(sim, controller, s, gif))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(success=f"{sum(r.success for r in results)}/{len(results)}")
    finally:
        if bar is not None:
            bar.close()
        if hasattr(controller, "close"):
            controller.close()
        sim.close()
    cameras = {k: v if isinstance(v, str) else f"free camera {asdict(v)}" for k, v in cfg.cameras.items()}
    task = cfg.task + (f" + yaw goal (+-{cfg.goal_yaw_range_deg:g} deg)" if cfg.goal_yaw_range_deg else "")
    report = EvalReport(task, name, results, cameras, cfg.image_size, time.perf_counter() - t0)
    if out_dir is not None:
        report.save(out_dir)
    return report


def evaluate_policy(policy: Policy, cfg: SimConfig, episodes: int, seed: int = 0, out_dir: str | Path | None = None,
                    gifs: int = 0, progress: bool = False) -> EvalReport:
    """Closed-loop success of a policy (torch or ONNX Runtime) through ``PolicyRunner``."""
    return run_episodes(cfg, lambda sim: RunnerController(policy, cfg), episodes, seed, out_dir, gifs, "policy", progress)


def evaluate_random(cfg: SimConfig, episodes: int, seed: int = 0, out_dir: str | Path | None = None, gifs: int = 0,
                    progress: bool = False) -> EvalReport:
    """Success of uniformly random actions (how often a task is solved by chance)."""
    return run_episodes(cfg, lambda sim: RandomController(seed), episodes, seed, out_dir, gifs, "random", progress)


def evaluate_expert(cfg: SimConfig, episodes: int, seed: int = 0, out_dir: str | Path | None = None, gifs: int = 0,
                    progress: bool = False) -> EvalReport:
    """Success of the task's scripted expert (the reference a policy is measured against)."""
    return run_episodes(cfg, lambda sim: ExpertController(cfg.task), episodes, seed, out_dir, gifs, "expert", progress)


# --------------------------------------------------------------------------------------------------
# Task configs (vit-policy sim-eval, sim-record, sim-pretrain: sim_tests/commands.py)
# --------------------------------------------------------------------------------------------------

TASK_CONFIGS = {  # --task: a gymnasium-robotics env id, or a variant named after its config
    "FetchReach-v4": "sim/fetch_reach.yaml",
    "FetchReachOrient": "sim/fetch_reach_orient.yaml",  # FetchReach with a goal yaw as well
    "FetchPush-v4": "sim/fetch_push.yaml",
    "FetchPickAndPlace-v4": "sim/fetch_pick_and_place.yaml",
}


def load_task_config(task: str | None, path: str | None, overrides: list[str] | None = None) -> SimConfig:
    """The sim config of ``--config``, else configs/sim/ of ``--task``; ``--task`` overrides the file's task."""
    from vit_policy.config import default_config
    from sim_tests.configuration import load_sim_config

    extra = [f"task={task}"] if task and path is not None else []
    if path is None:
        if task is None:
            raise ConfigError("give --task (one of " + ", ".join(TASK_CONFIGS) + ") or --config <sim yaml>")
        if task not in TASK_CONFIGS:
            raise ConfigError(f"--task: {task!r} is not one of {list(TASK_CONFIGS)}")
        path = str(default_config(TASK_CONFIGS[task]))  # the file names its env (a variant's is not --task)
    return load_sim_config(path, [*extra, *(overrides or [])])
