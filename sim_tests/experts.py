"""Scripted experts for the Fetch tasks: they see privileged state and command EE targets.

Each expert maps a ``SimFrame`` (EE pose, gripper, object and goal in the base frame) to an absolute
EE target in the base frame and a gripper target in [0, 1] (1 = open) — exactly what a teleoperator
publishes on ``/expert/target_pose`` and ``/expert/gripper``. The target is a short-horizon waypoint
(at most ``step`` metres away), so the recorded command is what the arm can follow in one step.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from sim_tests.fetch_env import ArmCommand, SimFrame

OBJECT_HALF = 0.025  # the Fetch cube is 5 cm


def _toward(current: np.ndarray, goal: np.ndarray, step: float) -> np.ndarray:
    """A waypoint at most ``step`` metres from ``current`` on the way to ``goal``."""
    delta = np.asarray(goal, np.float64) - current
    dist = float(np.linalg.norm(delta))
    return goal if dist <= step else current + delta * (step / dist)


class Expert:
    """Base class: ``reset()`` per episode, ``act(frame) -> (target_position, gripper)``."""

    step = 0.04  # metres per 40 ms env step (the env allows 0.05)

    def reset(self) -> None:
        self.phase = "start"

    def act(self, frame: SimFrame) -> tuple[np.ndarray, float]:
        raise NotImplementedError


class ReachExpert(Expert):
    """Move the gripper straight to the goal."""

    def act(self, frame: SimFrame) -> tuple[np.ndarray, float]:
        self.phase = "reach"
        return _toward(frame.position, frame.goal, self.step), 0.0


class PushExpert(Expert):
    """Go behind the object (opposite the goal), lower, then push it along the object->goal line.

    The push aims slightly past the object's centre on the line to the goal, and steers back onto that
    line when the object drifts sideways; if the gripper loses the object it backs off and re-approaches.

    ``finish``: what the gripper does once the object is at the goal: ``hold`` where the push ended (behind
    the object, wherever the push came from), or ``lift`` straight up and over the object, so the
    demonstration ends with the EE above the goal and its final pose says where the goal was (a label
    in hindsight, ``vit_policy.pretrain.end_point``; a teleoperator does the same by lifting off).
    """

    behind = 0.06  # metres behind the object's centre where a push starts
    hover = 0.10  # height above the object for the approach: a learned policy that lowers early still clears it
    push_gain = 0.4  # push speed per step = this x the object's distance to the goal ...
    min_push = 0.004  # ... but at least this (metres per step), so the push always ends
    max_push = 0.024  # ... and at most this
    finish = "hold"  # "hold" | "lift": see the class docstring

    def act(self, frame: SimFrame) -> tuple[np.ndarray, float]:
        p, obj, goal = frame.position, frame.object_position, frame.goal
        assert obj is not None, "PushExpert needs a task with an object"
        to_goal = goal[:2] - obj[:2]
        dist = float(np.linalg.norm(to_goal))
        if self.phase == "lift" or (dist < 0.01 and self.finish == "lift"):
            self.phase = "lift"  # stays: the object is left where the push put it
            top = obj[2] + self.hover
            if p[2] < top - 0.02:  # straight up first, so the gripper never drags the object off the goal
                return _toward(p, np.array([p[0], p[1], top]), self.step), 0.0
            return _toward(p, np.array([obj[0], obj[1], top]), self.step), 0.0
        if dist < 0.01:
            self.phase = "done"
            return p.copy(), 0.0
        u = to_goal / dist
        start = np.array([*(obj[:2] - u * self.behind), obj[2]])
        rel = p[:2] - obj[:2]
        along = float(rel @ u)  # < 0: gripper is behind the object
        lateral = float(abs(rel @ np.array([-u[1], u[0]])))
        aligned = along < -0.02 and lateral < 0.02
        if self.phase in ("start", "approach", "lower") and not (aligned and abs(p[2] - obj[2]) < 0.01):
            if np.linalg.norm(p[:2] - start[:2]) > 0.015:
                self.phase = "approach"  # at hover height, to the point behind the object
                target = np.array([*start[:2], obj[2] + self.hover])
                if p[2] < obj[2] + self.hover - 0.02:  # rise first so the approach never hits the object
                    target = np.array([p[0], p[1], obj[2] + self.hover])
                return _toward(p, target, self.step), 0.0
            self.phase = "lower"
            return _toward(p, start, self.step), 0.0
        self.phase = "push"
        if lateral > 0.035 or along > -0.005:  # lost the object: back off and re-approach
            self.phase = "approach"
            return _toward(p, np.array([p[0], p[1], obj[2] + self.hover]), self.step), 0.0
        # push along the object->goal line, steering back onto it; slow down in proportion to the distance
        # left, so the object stops at the goal instead of sliding past it (and a learned policy sees a
        # smooth speed-vs-distance law, not a stop switched at one distance)
        line_point = obj[:2] - u * (OBJECT_HALF + 0.01)
        speed = min(self.max_push, max(self.min_push, self.push_gain * dist))
        target_xy = p[:2] + u * speed + (line_point - p[:2]) - u * float((line_point - p[:2]) @ u)
        return _toward(p, np.array([*target_xy, obj[2]]), self.step), 0.0


class PickAndPlaceExpert(Expert):
    """Above the object, descend, grasp, lift, carry above the goal, lower onto it, hold."""

    hover = 0.08
    lift = 0.12
    grasp_steps = 6

    def reset(self) -> None:
        super().reset()
        self.closing = 0
        self.table_z = 0.0

    def act(self, frame: SimFrame) -> tuple[np.ndarray, float]:
        p, obj, goal = frame.position, frame.object_position, frame.goal
        assert obj is not None, "PickAndPlaceExpert needs a task with an object"
        held = np.linalg.norm(obj - p) < 0.03 and frame.gripper < 0.9 and self.closing >= self.grasp_steps
        if self.phase in ("start", "above", "descend"):
            above = obj + np.array([0.0, 0.0, self.hover])
            if np.linalg.norm(p[:2] - obj[:2]) > 0.01 and self.phase != "descend":
                self.phase = "above"
                return _toward(p, above, self.step), 1.0
            self.phase = "descend"
            if np.linalg.norm(p - obj) > 0.01:
                return _toward(p, np.array([obj[0], obj[1], obj[2]]), self.step), 1.0
            self.phase = "grasp"
        if self.phase == "grasp":
            self.closing += 1
            if self.closing < self.grasp_steps:
                return obj.copy(), 0.0
            self.phase = "carry"
            self.table_z = float(obj[2])
        if not held and np.linalg.norm(obj - p) > 0.05:  # dropped or missed: start over
            self.phase, self.closing = "above", 0
            return _toward(p, p + np.array([0.0, 0.0, 0.05]), self.step), 1.0
        carry_z = max(goal[2], self.table_z + self.lift)
        if self.phase == "carry":
            if p[2] < carry_z - 0.02 and np.linalg.norm(p[:2] - goal[:2]) > 0.02:
                return _toward(p, np.array([p[0], p[1], carry_z]), self.step), 0.0  # lift first
            if np.linalg.norm(p[:2] - goal[:2]) > 0.01:
                return _toward(p, np.array([goal[0], goal[1], max(carry_z, p[2])]), self.step), 0.0
            self.phase = "place"
        # place: lower onto the goal (on the table or in the air) and hold it there
        return _toward(p, goal + (p - obj), self.step), 0.0


EXPERTS: dict[str, type[Expert]] = {
    "FetchReach-v4": ReachExpert,
    "FetchPush-v4": PushExpert,
    "FetchPickAndPlace-v4": PickAndPlaceExpert,
}


def expert_command(expert: Expert, frame: SimFrame) -> ArmCommand:
    """The expert's next command: its position waypoint and gripper, turning toward the goal
    orientation when the task has one (else the env keeps the gripper pointing down)."""
    target, grip = expert.act(frame)
    return ArmCommand(target_position=target, target_quaternion=frame.goal_quaternion, gripper=grip)


def with_execution_noise(cmd: ArmCommand, rng: np.random.Generator, noise_m: float) -> ArmCommand:
    """``cmd`` with Gaussian noise (``noise_m`` metres per axis) on its target position: what the arm
    executes in DART-style recording and noisy rollouts, while the label stays ``cmd``."""
    if noise_m <= 0:
        return cmd
    return replace(cmd, target_position=cmd.target_position + rng.normal(0.0, noise_m, 3))


def make_expert(task: str, options: dict[str, Any] | None = None) -> Expert:
    """The scripted expert for a Fetch task; ``options`` set its class settings (e.g. ``{"finish": "lift"}``)."""
    if task not in EXPERTS:
        raise ValueError(f"task: no scripted expert for {task!r}; choose one of {sorted(EXPERTS)}")
    expert = EXPERTS[task]()
    settings = sorted(k for k in dir(expert) if not k.startswith("_") and not callable(getattr(expert, k)))
    for key, value in (options or {}).items():
        if key not in settings:
            raise ValueError(f"expert.{key}: {EXPERTS[task].__name__} has no such setting; choose from {settings}")
        default = getattr(expert, key)
        value = float(value) if isinstance(default, float) and isinstance(value, int) else value
        if type(value) is not type(default):
            raise ValueError(f"expert.{key}: {value!r} is not a {type(default).__name__} (default {default!r})")
        setattr(expert, key, value)
    if getattr(expert, "finish", "hold") not in ("hold", "lift"):
        raise ValueError(f"expert.finish: {expert.finish!r}; choose 'hold' or 'lift'")  # type: ignore[attr-defined]
    expert.reset()
    return expert
