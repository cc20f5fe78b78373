"""A gymnasium-robotics Fetch task that looks like a robot: stamped camera frames, EE pose, gripper.

The policy stack never sees the gym observation dict. It gets what a real arm gives: RGB frames
per camera and the end-effector pose in the robot base frame (MuJoCo site ``robot0:grip``; base =
body ``robot0:base_link``) with the gripper opening in [0, 1], all stamped with the simulation time
in integer nanoseconds. It is commanded like a real arm too: a runtime ``Command`` (absolute target
pose, or a twist) becomes the env's 4-D action, clipped to the env's limits (at most 5 cm per step).

Orientation: a raw env action leaves it to the Fetch env, which pulls the gripper to point down. A
Command's orientation (target quaternion, or angular twist) is applied by driving the mocap body's
orientation as well, at most MAX_ROT_STEP_RAD per step, so a policy's rotations reach the arm as
they would on a robot; a stop holds the current orientation.

Orientation goals (``goal_yaw_range_deg`` > 0, FetchReach): each episode also draws a gripper yaw;
the goal marker becomes a bar along it, and success needs position and orientation.
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # CPU rendering through EGL/Mesa; must precede the mujoco import

# Mesa's software renderer loads its own LLVM into the process with the first GL context; loading
# triton's LLVM after that crashes the process (segfault in ``import triton``, which torch pulls in
# lazily, e.g. when timm builds a model after frames were rendered). Loading triton first avoids it.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401, E402

from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Protocol  # noqa: E402

import contextlib  # noqa: E402
import io  # noqa: E402

import gymnasium as gym  # noqa: E402

with contextlib.redirect_stderr(io.StringIO()):  # it prints a notice about its Adroit envs (not used here) on import
    import gymnasium_robotics  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from sim_tests.configuration import FreeCameraConfig, SimConfig  # noqa: E402
from vit_policy.config import ConfigError  # noqa: E402
from vit_policy.geometry import geodesic_deg  # noqa: E402

gym.register_envs(gymnasium_robotics)

GRIP_SITE = "robot0:grip"
BASE_BODY = "robot0:base_link"
FINGER_JOINTS = ("robot0:l_gripper_finger_joint", "robot0:r_gripper_finger_joint")
FINGER_SUM_OPEN = 0.1  # metres: both fingers at their 0.05 m upper limit
GRIPPER_RANGE = (0.0, FINGER_SUM_OPEN)  # (closed, open) summed finger positions mapped to the opening 0 and 1
MAX_STEP_M = 0.05  # the Fetch env scales its position action by 5 cm
MAX_ROT_STEP_RAD = 0.1  # orientation change per 40 ms step (2.5 rad/s), like the 5 cm position clip
GRIPPER_BODY = "robot0:gripper_link"  # the body the env's mocap is welded to
HIDDEN_GROUP = 5  # every Fetch geom is in group 0; visibility() moves the robot's here to render without it


class SimCommand(Protocol):
    """What the wrapper reads from a runtime Command (duck-typed: the runtime's dataclass fits)."""

    target_position: np.ndarray | None
    target_quaternion: np.ndarray | None
    linear: np.ndarray | None
    angular: np.ndarray | None
    gripper: float | None
    is_stop: bool


@dataclass
class ArmCommand:
    """A driver-level command (what /cmd/pose carries) for callers without a runtime Command."""

    target_position: np.ndarray | None = None
    target_quaternion: np.ndarray | None = None  # x y z w, base frame; None: keep the env's orientation
    linear: np.ndarray | None = None
    angular: np.ndarray | None = None
    gripper: float | None = None
    is_stop: bool = False


@dataclass
class SimFrame:
    """Everything the robot reports at one instant, stamped with sim time."""

    stamp_ns: int
    images: dict[str, np.ndarray]  # camera name -> RGB uint8 (H, W, 3)
    position: np.ndarray  # (3,) EE position in the base frame
    quaternion: np.ndarray  # (4,) EE orientation in the base frame, x y z w
    gripper: float  # opening, 0 closed .. 1 open
    finger_positions: np.ndarray  # (2,) joint positions of FINGER_JOINTS (for JointState)
    success: bool = False
    # privileged state, for scripted experts and metrics only (never given to a policy)
    goal: np.ndarray = field(default_factory=lambda: np.zeros(3))  # base frame
    object_position: np.ndarray | None = None  # base frame, tasks with an object
    goal_quaternion: np.ndarray | None = None  # base frame, x y z w: tasks with an orientation goal
    orientation_error_deg: float | None = None  # EE orientation to goal_quaternion, when there is one


def _mj_quat_to_xyzw(q_wxyz: np.ndarray) -> np.ndarray:
    return np.array([q_wxyz[1], q_wxyz[2], q_wxyz[3], q_wxyz[0]], dtype=np.float64)


class FetchSim:
    """One Fetch task: ``reset(seed) -> SimFrame``, ``step(action | Command) -> SimFrame``."""

    STEP_S = 0.04  # every Fetch task: 20 substeps of 2 ms per env step

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.env = gym.make(cfg.task).unwrapped  # episode length and success are handled here
        self.model: mujoco.MjModel = self.env.model
        self.data: mujoco.MjData = self.env.data
        self._cameras: dict[str, str | mujoco.MjvCamera] = {}
        for name, cam in cfg.cameras.items():
            if isinstance(cam, FreeCameraConfig):
                free = mujoco.MjvCamera()
                free.type = mujoco.mjtCamera.mjCAMERA_FREE
                free.lookat[:] = cam.lookat
                free.distance, free.azimuth, free.elevation = cam.distance, cam.azimuth, cam.elevation
                self._cameras[name] = free
            elif mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                have = [self.model.camera(i).name for i in range(self.model.ncam)]
                raise ConfigError(
                    f"sim.cameras.{name}: MuJoCo camera {cam!r} does not exist in {cfg.task}; use one of {have} "
                    "or a free camera {lookat, distance, azimuth, elevation}"
                )
            else:
                self._cameras[name] = cam
        self._marker = self.model.site("target0").id
        self.model.site_size[self._marker] = cfg.target_marker_radius
        self.goal_rotation: Rotation | None = None  # base frame, tasks with an orientation goal
        if cfg.goal_yaw_range_deg > 0:  # a bar along the goal yaw instead of a sphere
            r = cfg.target_marker_radius
            self.model.site_type[self._marker] = mujoco.mjtGeom.mjGEOM_BOX
            self.model.site_size[self._marker] = (1.6 * r, 0.4 * r, 0.4 * r)
            self.model.site_sameframe[self._marker] = 0  # compiled as "same frame as the body": site_quat would be ignored
        self._renderer: mujoco.Renderer | None = None
        self._seg_renderer: mujoco.Renderer | None = None
        self._robot_geoms = [g for g in range(self.model.ngeom)
                             if self.model.body(self.model.geom_bodyid[g]).name.startswith("robot0:")]
        self._finger_qpos = [self.model.joint(j).qposadr[0] for j in FINGER_JOINTS]
        self.has_object = bool(self.env.has_object)
        assert abs(self.dt - self.STEP_S) < 1e-9, f"{cfg.task}: env step is {self.dt} s, expected {self.STEP_S}"
        self.steps = 0
        self.last_action = np.zeros(4)
        self.home_quaternion: np.ndarray | None = None  # EE orientation after reset: gripper pointing down
        # orientation: the grip site's fixed rotation in the welded body, and the site orientation the
        # next step commands (None: the env's own pointing-down pull)
        site = self.model.site(GRIP_SITE)
        if site.bodyid[0] != self.model.body(GRIPPER_BODY).id:
            raise RuntimeError(f"{cfg.task}: site {GRIP_SITE} is not on body {GRIPPER_BODY}; the orientation control assumes it")
        self._site_in_body = Rotation.from_quat(_mj_quat_to_xyzw(self.model.site_quat[site.id]))
        self._site_goal: Rotation | None = None
        env_set_action = self.env._set_action

        def set_action(action: np.ndarray) -> None:  # the env's own, then the commanded orientation on top
            env_set_action(action)
            if self._site_goal is not None:
                x, y, z, w = (self._site_goal * self._site_in_body.inv()).as_quat()
                self.data.mocap_quat[0] = (w, x, y, z)

        self.env._set_action = set_action

    # ---------------------------------------------------------------------------------------------
    @property
    def dt(self) -> float:
        """Seconds of simulated time per step."""
        return float(self.env.n_substeps * self.model.opt.timestep)

    @property
    def dt_ns(self) -> int:
        return int(round(self.dt * 1e9))

    @property
    def stamp_ns(self) -> int:
        return int(round(float(self.data.time) * 1e9))

    def base_pose_world(self) -> tuple[np.ndarray, Rotation]:
        """The robot base body's world pose (position, rotation)."""
        body = self.model.body(BASE_BODY).id
        return self.data.xpos[body].copy(), Rotation.from_quat(_mj_quat_to_xyzw(self.data.xquat[body]))

    def to_base(self, p_world: np.ndarray) -> np.ndarray:
        """A world point in the robot base frame."""
        t, r = self.base_pose_world()
        return r.inv().apply(np.asarray(p_world, np.float64) - t)

    def to_world(self, p_base: np.ndarray) -> np.ndarray:
        t, r = self.base_pose_world()
        return r.apply(np.asarray(p_base, np.float64)) + t

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """EE (site robot0:grip) pose in the base frame: position (3,), quaternion x y z w (4,)."""
        site = self.data.site(GRIP_SITE)
        _, r_base = self.base_pose_world()
        r_world = Rotation.from_matrix(site.xmat.reshape(3, 3))
        q = (r_base.inv() * r_world).as_quat()
        return self.to_base(site.xpos), q if q[3] >= 0 else -q

    def _site_rotation_world(self) -> Rotation:
        return Rotation.from_matrix(self.data.site(GRIP_SITE).xmat.reshape(3, 3))

    def orientation_goal(self, cmd: SimCommand) -> Rotation | None:
        """The grip site orientation (world) for this step: toward the command's orientation.

        Target quaternion (base frame) first, else the angular twist, integrated from the previous
        step's goal; each step turns at most MAX_ROT_STEP_RAD. None when the command carries none.
        """
        current = self._site_rotation_world()
        _, r_base = self.base_pose_world()
        if getattr(cmd, "is_stop", False):
            step = Rotation.identity()  # hold the orientation the arm has now
        elif getattr(cmd, "target_quaternion", None) is not None:
            q = check_vector(cmd.target_quaternion, 4, "command.target_quaternion")
            if not 0.5 < np.linalg.norm(q) < 1.5:
                raise ValueError(f"command.target_quaternion: {q} is not a unit quaternion (x y z w); normalise it")
            step = (r_base * Rotation.from_quat(q)) * current.inv()
        elif getattr(cmd, "angular", None) is not None:
            # integrate from the last commanded orientation (the weld lags it), unless the arm fell behind
            if self._site_goal is not None and (self._site_goal * current.inv()).magnitude() < 2 * MAX_ROT_STEP_RAD:
                current = self._site_goal
            step = Rotation.from_rotvec(r_base.apply(check_vector(cmd.angular, 3, "command.angular")) * self.dt)
        else:
            return None
        rotvec = step.as_rotvec()
        angle = float(np.linalg.norm(rotvec))
        if angle > MAX_ROT_STEP_RAD:
            rotvec *= MAX_ROT_STEP_RAD / angle
        return Rotation.from_rotvec(rotvec) * current

    def gripper_opening(self) -> float:
        fingers = self.data.qpos[self._finger_qpos]
        closed, open_ = GRIPPER_RANGE
        return float(np.clip((fingers.sum() - closed) / (open_ - closed), 0.0, 1.0))

    def render(self) -> dict[str, np.ndarray]:
        """One RGB frame per configured camera, at the current state."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.cfg.image_size, self.cfg.image_size)
        frames = {}
        for name, cam in self._cameras.items():
            self._renderer.update_scene(self.data, camera=cam)
            frames[name] = self._renderer.render().copy()
        return frames

    def visibility(self) -> dict[str, dict[str, float]]:
        """Per camera, the fraction of the goal marker (and of the object, in tasks with one) that the
        robot does not hide at the current state: 0 where the arm covers it or it is out of view.

        A goal one fixed camera cannot see is placed from the other cameras alone (one view leaves its
        depth open), so this is what camera placements are chosen by (benchmarks/sim_success.py --visibility).
        """
        if self._seg_renderer is None:
            self._seg_renderer = mujoco.Renderer(self.model, self.cfg.image_size, self.cfg.image_size)
            self._seg_renderer.enable_segmentation_rendering()
        targets = {"goal": (mujoco.mjtObj.mjOBJ_SITE, self.model.site("target0").id)}
        if self.has_object:
            targets["object"] = (mujoco.mjtObj.mjOBJ_GEOM, self.model.geom("object0").id)
        hide_robot = mujoco.MjvOption()
        hide_robot.geomgroup[HIDDEN_GROUP] = 0
        groups = self.model.geom_group[self._robot_geoms].copy()
        counts: dict[tuple[str, bool], dict[str, int]] = {}
        try:
            for hidden in (False, True):  # as the cameras see it, then with the robot out of the scene
                self.model.geom_group[self._robot_geoms] = HIDDEN_GROUP if hidden else groups
                for name, cam in self._cameras.items():
                    self._seg_renderer.update_scene(self.data, camera=cam, scene_option=hide_robot if hidden else None)
                    seg = self._seg_renderer.render()
                    counts[name, hidden] = {t: int(((seg[..., 1] == kind) & (seg[..., 0] == oid)).sum()) for t, (kind, oid) in targets.items()}
        finally:
            self.model.geom_group[self._robot_geoms] = groups
        return {name: {t: counts[name, False][t] / counts[name, True][t] if counts[name, True][t] else 0.0 for t in targets}
                for name in self._cameras}

    def frame(self, render: bool = True) -> SimFrame:
        """The current state as a robot would report it (plus privileged goal / object for experts)."""
        pos, quat = self.ee_pose()
        obj = self.to_base(self.data.site("object0").xpos) if self.has_object else None
        achieved = self.data.site("object0").xpos.copy() if self.has_object else self.data.site(GRIP_SITE).xpos.copy()
        success = bool(self.env._is_success(achieved, self.env.goal))
        goal_q, err = None, None
        if self.goal_rotation is not None:
            goal_q = self.goal_rotation.as_quat()
            err = float(geodesic_deg(goal_q, quat))
            success = success and err <= self.cfg.yaw_tolerance_deg
        return SimFrame(
            stamp_ns=self.stamp_ns,
            images=self.render() if render else {},
            position=pos,
            quaternion=quat,
            gripper=self.gripper_opening(),
            finger_positions=self.data.qpos[self._finger_qpos].copy(),
            success=success,
            goal=self.to_base(self.env.goal),
            object_position=obj,
            goal_quaternion=goal_q,
            orientation_error_deg=err,
        )

    # ---------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, render: bool = True) -> SimFrame:
        """Start an episode; ``seed`` fixes the goal and object placement."""
        self._site_goal = None
        self.env.reset(seed=seed)
        self.env._render_callback()  # moves the goal marker to this episode's goal
        self.steps = 0
        self.last_action = np.zeros(4)
        if self.home_quaternion is None:
            self.home_quaternion = self.ee_pose()[1]  # the same after every reset: gripper pointing down
        if self.cfg.goal_yaw_range_deg > 0:  # drawn from the env's generator: fixed by the seed
            yaw = Rotation.from_euler("z", self.env.np_random.uniform(-1.0, 1.0) * self.cfg.goal_yaw_range_deg, degrees=True)
            self.goal_rotation = yaw * Rotation.from_quat(self.home_quaternion)
            x, y, z, w = (self.base_pose_world()[1] * yaw).as_quat()
            self.model.site_quat[self._marker] = (w, x, y, z)
            mujoco.mj_kinematics(self.model, self.data)  # the rendered marker pose (site_xmat) follows site_quat
        return self.frame(render)

    def action_from_target(self, target_position: np.ndarray, gripper: float | None) -> np.ndarray:
        """Env action for an absolute EE target (base frame) and a gripper target in [0, 1]."""
        target = check_vector(target_position, 3, "command.target_position")
        delta_world = self.to_world(target) - self.data.site(GRIP_SITE).xpos
        action = np.zeros(4)
        action[:3] = np.clip(delta_world / MAX_STEP_M, -1.0, 1.0)
        action[3] = self._gripper_action(gripper)
        return action

    def action_from_command(self, cmd: SimCommand) -> np.ndarray:
        """Env action for a runtime Command: stop -> hold; target pose, else twist (base frame)."""
        if getattr(cmd, "is_stop", False):
            return np.zeros(4)  # hold the arm where it is; fingers keep their position
        if getattr(cmd, "target_position", None) is not None:
            return self.action_from_target(cmd.target_position, cmd.gripper)
        if getattr(cmd, "linear", None) is not None:
            lin = check_vector(cmd.linear, 3, "command.linear")
            _, r = self.base_pose_world()
            action = np.zeros(4)
            action[:3] = np.clip(r.apply(lin) * self.dt / MAX_STEP_M, -1.0, 1.0)
            action[3] = self._gripper_action(cmd.gripper)
            return action
        raise ValueError("command: has neither target_position nor linear; send a pose target or a twist (or is_stop)")

    def _gripper_action(self, gripper: float | None) -> float:
        if gripper is None:
            return 0.0  # finger actuators are relative: 0 holds the current opening
        g = float(gripper)
        if not np.isfinite(g):
            raise ValueError(f"command.gripper: {g} is not finite; send an opening in [0, 1]")
        return float(np.clip(2.0 * g - 1.0, -1.0, 1.0))  # >0.5 opens, <0.5 closes

    def step(self, action_or_command: np.ndarray | SimCommand, render: bool = True) -> SimFrame:
        """Advance one env step (40 ms) under an env action (4,) or a Command (position and orientation)."""
        if isinstance(action_or_command, np.ndarray):
            action, goal = np.clip(check_vector(action_or_command, 4, "action"), -1.0, 1.0), None
        else:
            action = self.action_from_command(action_or_command)
            goal = self.orientation_goal(action_or_command)
        self._site_goal = goal
        self.env.step(action)
        self.steps += 1
        self.last_action = action
        return self.frame(render)

    @property
    def done(self) -> bool:
        return self.steps >= self.cfg.episode_steps

    def close(self) -> None:
        for r in (self._renderer, self._seg_renderer):
            if r is not None:
                r.close()
        self._renderer = self._seg_renderer = None
        self.env.close()


def check_vector(value: Any, n: int, field_name: str) -> np.ndarray:
    """A finite float vector of length n, or a ValueError naming the field."""
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{field_name}: expected {n} values, got shape {np.shape(value)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{field_name}: contains NaN or inf ({arr}); the command is rejected")
    return arr
