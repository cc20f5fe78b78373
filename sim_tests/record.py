"""Scripted-expert demonstrations in simulation, written as rosbag2 with the robot's topic layout.

One bag per episode (``<out>/episode_000``, ...), written with ``rosbags`` (mcap or sqlite3); every
message is built by ``vit_policy.messages``, the code the node and bag reading use, so the data
pipeline reads these bags exactly as it reads bags recorded on a robot:

  /camera/<cam>/image_raw   sensor_msgs/Image rgb8, frame ``<cam>_optical_frame``
  /ee_pose                  geometry_msgs/PoseStamped, EE (site robot0:grip) in ``base_link``
  /joint_states             sensor_msgs/JointState: arm joints and the two finger joints
                            (gripper opening = finger sum / 0.1 m: ``closed 0.0, open 0.1``)
  /expert/target_pose       geometry_msgs/PoseStamped, the expert's absolute target in ``base_link``
  /expert/gripper           std_msgs/Float64, the expert's gripper target in [0, 1] (1 open)

All messages of a step share its sim-time stamp (offset so each episode has its own time range) and
are written at that bag time. ``<out>/demos.yaml`` lists each episode's seed, length and success.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import yaml

from sim_tests.configuration import SimConfig
from sim_tests.experts import expert_command, make_expert, with_execution_noise
from sim_tests.fetch_env import FINGER_JOINTS, GRIPPER_RANGE, FetchSim, SimFrame
from vit_policy import messages as M
from vit_policy.config import apply_overrides, from_dict, to_dict
from vit_policy.data.configuration import DataConfig, GripperConfig
from vit_policy.model.configuration import PolicyConfig, load_policy_config
from vit_policy.train import TrainConfig

NS = 1_000_000_000
EPOCH_NS = 1_750_000_000 * NS  # bag stamps start here: a plausible wall-clock time, not 0
ARM_JOINTS = (
    "robot0:shoulder_pan_joint", "robot0:shoulder_lift_joint", "robot0:upperarm_roll_joint", "robot0:elbow_flex_joint",
    "robot0:forearm_roll_joint", "robot0:wrist_flex_joint", "robot0:wrist_roll_joint",
)


def camera_topic(cam: str) -> str:
    return f"/camera/{cam}/image_raw"


@dataclass
class EpisodeInfo:
    """What ``demos.yaml`` records about one episode."""

    bag: str
    seed: int
    steps: int
    success: bool
    first_success_step: int | None
    start_ns: int


def episode_start_ns(index: int) -> int:
    """Bag time of episode ``index``'s sim time 0: episodes 1000 s apart, so stamps never overlap."""
    return EPOCH_NS + index * 1000 * NS


class BagWriter:
    """A rosbag2 writer over ``rosbags`` that registers each topic on its first message."""

    def __init__(self, path: Path, storage: Literal["mcap", "sqlite3"] = "mcap") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if path.exists():
            raise FileExistsError(f"bag {str(path)!r} already exists; choose a new output directory or delete it")
        self.store = get_typestore(Stores.ROS2_HUMBLE)
        self.factory = M.rosbags_factory(self.store)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(path, version=9, storage_plugin=plugin)
        self.conns: dict[str, object] = {}

    def __enter__(self) -> "BagWriter":
        self.writer.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.close()

    def write(self, topic: str, t_ns: int, msg: object) -> None:
        typename = str(type(msg).__msgtype__)  # type: ignore[attr-defined]
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, typename, typestore=self.store)
        self.writer.write(self.conns[topic], int(t_ns), self.store.serialize_cdr(msg, typename))


def write_observation(bag: BagWriter, sim: FetchSim, frame: SimFrame, t_ns: int, base_frame: str) -> None:
    """The robot's side of one step: camera frames, EE pose and joint states, stamped ``t_ns``."""
    f = bag.factory
    for cam, rgb in frame.images.items():
        bag.write(camera_topic(cam), t_ns, M.rgb_to_image(f, rgb, t_ns, f"{cam}_optical_frame", encoding="rgb8"))
    bag.write("/ee_pose", t_ns, M.make_pose_stamped(f, t_ns, base_frame, frame.position, frame.quaternion))
    arm = [float(sim.data.qpos[sim.model.joint(j).qposadr[0]]) for j in ARM_JOINTS]
    names = [*ARM_JOINTS, *FINGER_JOINTS]
    bag.write("/joint_states", t_ns, M.make_joint_state(f, t_ns, names, [*arm, *frame.finger_positions.tolist()]))


def record_episode(
    sim: FetchSim, path: Path, seed: int, start_ns: int, storage: Literal["mcap", "sqlite3"] = "mcap", action_noise_m: float = 0.0,
    hold_steps: int | None = None, expert_options: dict[str, Any] | None = None,
) -> EpisodeInfo:
    """Run the task's expert for one episode and write it to the bag at ``path``.

    With ``hold_steps`` the bag ends that many steps after the task is first achieved instead of at the
    episode's end: a Reach expert arrives in about 4 of 50 steps, and 46 frames of holding still would
    outweigh the reaching (measured: 200 such demos, 28511 steps, 2/50 closed loop).

    With ``action_noise_m`` > 0 the arm executes the expert's target plus Gaussian noise (that standard
    deviation per axis, metres) while the bag records the expert's clean command (DART, Laskey et al.
    2017): the demonstrations then show the expert correcting from states a cloned policy drifts into.

    ``expert_options``: the scripted expert's settings (``sim_tests.experts.make_expert``).
    """
    expert = make_expert(sim.cfg.task, expert_options)
    rng = np.random.default_rng(seed)
    frame = sim.reset(seed=seed)
    t0 = frame.stamp_ns
    first: int | None = None
    with BagWriter(path, storage) as bag:
        f = bag.factory
        while True:
            t = start_ns + frame.stamp_ns - t0
            write_observation(bag, sim, frame, t, sim.cfg.base_frame)
            cmd = expert_command(expert, frame)
            # without an orientation goal the Fetch env holds the gripper pointing down: the commanded
            # orientation is that, not the measured wobble
            quat = cmd.target_quaternion if cmd.target_quaternion is not None else sim.home_quaternion
            bag.write("/expert/target_pose", t, M.make_pose_stamped(f, t, sim.cfg.base_frame, cmd.target_position, quat))
            bag.write("/expert/gripper", t, M.make_float64(f, float(cmd.gripper)))
            if sim.done or (hold_steps is not None and first is not None and sim.steps - first >= hold_steps):
                break
            frame = sim.step(with_execution_noise(cmd, rng, action_noise_m))
            if frame.success and first is None:
                first = sim.steps
    return EpisodeInfo(path.name, seed, sim.steps, bool(frame.success), first, start_ns)


def record_demonstrations(
    cfg: SimConfig,
    out_dir: str | Path,
    episodes: int,
    seed: int = 0,
    storage: Literal["mcap", "sqlite3"] = "mcap",
    keep_failures: bool = False,
    progress: Callable[[EpisodeInfo], None] | None = None,
    action_noise_m: float = 0.0,
    hold_steps: int | None = None,
    expert_options: dict[str, Any] | None = None,
) -> list[EpisodeInfo]:
    """Record ``episodes`` successful expert demonstrations (seeds ``seed``, ``seed+1``, ...) as bags.

    A failed expert episode is deleted and replaced by the next seed unless ``keep_failures``.
    ``action_noise_m``: execution noise; ``hold_steps``: end each bag that many steps after success; ``expert_options``: the
    expert's settings; see :func:`record_episode`.
    """
    if action_noise_m < 0:
        raise ValueError(f"action_noise_m: {action_noise_m} must be >= 0 (metres of execution noise; 0 for none)")
    if hold_steps is not None and hold_steps < 0:
        raise ValueError(f"hold_steps: {hold_steps} must be >= 0 (steps recorded after the first success; None for whole episodes)")
    import shutil

    if episodes < 1:
        raise ValueError(f"episodes: {episodes} must be at least 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sim = FetchSim(cfg)
    infos: list[EpisodeInfo] = []
    attempt = 0
    try:
        while len(infos) < episodes:
            if attempt >= 2 * episodes + 10:
                raise RuntimeError(f"expert for {cfg.task} failed too often ({attempt - len(infos)} of {attempt} episodes)")
            path = out / f"episode_{len(infos):03d}"
            info = record_episode(sim, path, seed + attempt, episode_start_ns(seed + attempt), storage, action_noise_m, hold_steps,
                                  expert_options)
            attempt += 1
            if not info.success and not keep_failures:
                shutil.rmtree(path)
                continue
            infos.append(info)
            if progress:
                progress(info)
    finally:
        sim.close()
    meta = {
        "task": cfg.task,
        "cameras": {name: {"mujoco": cam if isinstance(cam, str) else asdict(cam), "topic": camera_topic(name)}
                    for name, cam in cfg.cameras.items()},
        "image_size": cfg.image_size,
        "step_s": sim.dt,
        "action_noise_m": action_noise_m,
        "hold_steps": hold_steps,
        "expert": dict(expert_options or {}),
        "gripper_joints": list(FINGER_JOINTS),
        "gripper_range": {"closed": GRIPPER_RANGE[0], "open": GRIPPER_RANGE[1]},
        "episodes": [asdict(i) for i in infos],
    }
    (out / "demos.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return infos


def expert_success_rate(cfg: SimConfig, episodes: int, seed: int = 0) -> tuple[int, list[int | None]]:
    """Run the expert without rendering: (successes, first-success step per episode)."""
    sim = FetchSim(cfg)
    wins, firsts = 0, []
    try:
        for i in range(episodes):
            expert = make_expert(cfg.task)
            frame = sim.reset(seed=seed + i, render=False)
            first = None
            while not sim.done:
                frame = sim.step(expert_command(expert, frame), render=False)
                if frame.success and first is None:
                    first = sim.steps
            wins += int(frame.success)
            firsts.append(first)
    finally:
        sim.close()
    return wins, firsts


def data_config_for(cfg: SimConfig, labels: Literal["command", "future_pose"] = "future_pose") -> DataConfig:
    """The ``DataConfig`` that reads bags recorded from ``cfg``: topics, frame, gripper joints and range, the sim's step."""
    return DataConfig(
        cameras={name: camera_topic(name) for name in cfg.cameras},
        pose_topic="/ee_pose",
        tf_base_frame=cfg.base_frame,
        gripper=GripperConfig(topic="/joint_states", kind="joint_state", joints=list(FINGER_JOINTS), closed=GRIPPER_RANGE[0], open=GRIPPER_RANGE[1]),
        command_topic="/expert/target_pose",
        command_gripper_topic="/expert/gripper",
        labels=labels,
        control_rate_hz=cfg.runtime.control_rate_hz,
        sync_tolerance_s=cfg.runtime.sync_tolerance_s,
        max_age_s=cfg.runtime.max_age_s,
    )


def policy_config_for(cfg: SimConfig, path: str | Path | None = None, overrides: list[str] | None = None) -> PolicyConfig:
    """configs/sim/policy.yaml with this task's cameras and frame size (its control_dt is checked against the
    recorded rate when training starts)."""
    from vit_policy.config import default_config

    base = [f"cameras={list(cfg.cameras)}", f"encoder.img_size={cfg.image_size}"]
    return load_policy_config(path or default_config("sim/policy.yaml"), [*base, *(overrides or [])])


def train_config_for(cfg: SimConfig, bags: list[str], out_dir: str | Path, steps: int, batch_size: int = 32,
                     lr: float = 1e-3, policy_overrides: list[str] | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Training from scratch on recorded demonstrations: command labels, ``steps`` optimiser steps;
    ``overrides``: TrainConfig KEY=VALUE on top (e.g. augment.pose_noise_m=0.02)."""
    out = Path(out_dir)
    train = TrainConfig(
        policy=policy_config_for(cfg, overrides=policy_overrides), data=data_config_for(cfg, labels="command"), bags=bags,
        val_fraction=0.1, cache_dir=str(out / "cache"), out_dir=str(out / "train"), epochs=1_000_000, max_steps=steps,
        batch_size=batch_size, lr_encoder=lr, lr_head=lr, warmup_steps=min(50, steps // 10), tensorboard=False, progress=False,
    )
    return from_dict(TrainConfig, apply_overrides(to_dict(train), overrides), "train") if overrides else train
