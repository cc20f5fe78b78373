"""PolicyRunner: latest inputs -> synchronised observation -> asynchronous inference -> a command per tick.

No ROS here: the ROS node, offline replay and the simulator all drive the same runner.

* Inputs: ROS messages through ``on_message`` (the router of :mod:`vit_policy.inputs`, as the node and
  replay use it) or typed values through ``on_image`` / ``on_pose`` / ``on_gripper`` (the in-process
  simulator). They go into the :class:`vit_policy.inputs.Synchronizer`'s short buffers: a rejected
  input is counted and never replaces the last valid one.
* Timing: an observation is stamped at a reference camera frame, with the pose and gripper
  interpolated at that stamp (the rule bag extraction uses). Pixels are decoded only for the frame an
  inference uses, and resized to the encoder's input with :func:`vit_policy.images.resize_uint8`, as
  the training cache does, so the model sees the same pixels live as in training.
* Inference runs on a worker thread (``start``); ``tick`` never waits for the model. With
  ``runtime.synchronous`` the inference runs inline in ``tick`` instead (deterministic replay /
  simulation); ``runtime.inference_latency_s`` then delays the chunk's release by that much.
* A chunk is anchored at its observation stamp: step k is the target for ``stamp + (k+1) dt``. A tick
  at ``now`` commands the chunk's target for ``now + control period`` (interpolated), so steps that
  inference latency already made past are skipped. Strategies: ``receding`` (run the newest chunk; the
  next inference starts ``execute_steps`` steps after the current chunk's stamp, minus the latency
  estimate) and ``ensemble`` (ACT temporal ensembling: every live chunk's target for that time,
  weighted exp(-m i) with i = 0 for the oldest chunk).
* Every command passes :class:`vit_policy.safety.SafetyFilter`; disabled, stale, faulted or shut
  down means a stop command only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np
from scipy.spatial.transform import Rotation

from vit_policy import messages as M
from vit_policy.config import ConfigError
from vit_policy.images import resize_uint8
from vit_policy.inputs import GRIPPER, POSE, Frame, InputRouter, InputSpec, Resolved, Synchronizer, SyncRule, TIMING_HELP, camera_key, check_timing, period_ns
from vit_policy.observation import ActionChunk, Observation, ObservationError, check_image
from vit_policy.ood import OODState
from vit_policy.safety import Command, SafetyConfig, SafetyFilter

if TYPE_CHECKING:
    from vit_policy.model.policy import Policy

log = logging.getLogger(__name__)

LATENCY_WINDOW = 500  # latency samples kept for the percentiles
__all__ = ["POSE", "GRIPPER", "PolicyRunner", "camera_key"]


# --------------------------------------------------------------------------------------------------
# Configuration: runtime: of the ROS node, replay and the simulator (each help is the node parameter's description)
# --------------------------------------------------------------------------------------------------


@dataclass
class RuntimeConfig:
    """How the runner turns streamed inputs into a command each control tick."""

    control_rate_hz: float = field(default=10.0, metadata={"help": "control ticks per second (Hz); must match the checkpoint's control_dt"})
    resample_chunks: bool = field(default=False, metadata={"help": (
        "allow a control rate other than the checkpoint's 1 / control_dt: targets interpolated between chunk steps")})
    sync_tolerance_s: float = field(default=0.05, metadata={"help": TIMING_HELP["sync_tolerance_s"]})
    max_age_s: float = field(default=0.5, metadata={"help": "an input older than this at a tick is stale: stop (s)"})
    max_extrapolation_s: float = field(default=0.02, metadata={"help": (
        "the EE pose may be extrapolated this far past the newest one; else the frame waits (s)")})
    max_stamp_lead_s: float = field(default=0.2, metadata={"help": TIMING_HELP["max_stamp_lead_s"]})
    position_bound_m: float = field(default=10.0, metadata={"help": TIMING_HELP["position_bound_m"]})
    strategy: Literal["receding", "ensemble"] = field(default="ensemble", metadata={"help": (
        "receding (execute n steps, replan) or ensemble (ACT temporal ensembling)")})
    execute_steps: int = field(default=4, metadata={"help": "receding horizon: steps executed before the next chunk takes over"})
    ensemble_m: float = field(default=0.1, metadata={"help": "temporal ensembling weight exp(-m i), i = 0 for the oldest chunk"})
    inference_latency_s: float | None = field(default=None, metadata={"help": (
        "latency estimate for scheduling (s); null (as a ROS parameter: negative): measured")})
    synchronous: bool = field(default=False, metadata={"help": (
        "run inference inside the control tick (deterministic: replay, simulation; blocks the tick)")})
    backend: Literal["torch", "onnxruntime"] = field(default="torch", metadata={"help": (
        "inference backend: torch, or onnxruntime (the graph vit-policy export wrote into the checkpoint)")})
    compile: bool = field(default=False, metadata={"help": (
        "torch backend: torch.compile the encoder and the policy's transformer blocks (inductor, needs a C++ compiler); "
        "compiled at load with one warm-up step (tens of seconds to minutes on a CPU), then a faster step "
        "(benchmarks/inference.py --compile)")})
    cuda_graph: bool = field(default=False, metadata={"help": (
        "torch backend on a CUDA device: replay the step as one captured CUDA graph (about 2-4x faster than eager at "
        "batch 1, benchmarks/gpu.py); needs device: cuda")})
    onnx_file: str = field(default="policy.onnx", metadata={"help": (
        "onnxruntime: graph file in the checkpoint directory (policy.onnx, or policy.int8.onnx from export --int8)")})
    providers: list[str] = field(default_factory=lambda: ["auto"], metadata={"help": (
        "onnxruntime execution providers, e.g. [CUDAExecutionProvider, CPUExecutionProvider]; [auto]: GPU ones when present")})

    def __post_init__(self) -> None:
        if not self.onnx_file.endswith(".onnx") or "/" in self.onnx_file:
            raise ConfigError(f"runtime.onnx_file: {self.onnx_file!r} must name a .onnx file in the checkpoint directory "
                              "(policy.onnx or policy.int8.onnx)")
        if self.compile and self.backend != "torch":
            raise ConfigError(f"runtime.compile: true compiles the torch backend; runtime.backend is {self.backend}: "
                              "set runtime.compile: false (ONNX Runtime optimises its graph itself)")
        if self.cuda_graph and (self.backend != "torch" or self.compile):
            raise ConfigError(f"runtime.cuda_graph: true replays the torch backend's eager step; runtime.backend is {self.backend}"
                              f"{' and runtime.compile is true' if self.compile else ''}: set backend: torch and compile: false, "
                              "or runtime.cuda_graph: false")
        if not self.providers:
            raise ConfigError("runtime.providers: list ONNX Runtime execution providers, or [auto]")
        if not self.control_rate_hz > 0:
            raise ConfigError(f"runtime.control_rate_hz: {self.control_rate_hz} must be > 0 Hz")
        if self.sync_tolerance_s < 0 or not self.max_age_s > 0:
            raise ConfigError("runtime.sync_tolerance_s must be >= 0 and runtime.max_age_s > 0 seconds")
        check_timing("runtime", self)
        if self.execute_steps < 1:
            raise ConfigError(f"runtime.execute_steps: {self.execute_steps} must be >= 1")
        if self.ensemble_m < 0:
            raise ConfigError(f"runtime.ensemble_m: {self.ensemble_m} must be >= 0 (0 = plain average)")
        if self.inference_latency_s is not None and self.inference_latency_s < 0:
            raise ConfigError("runtime.inference_latency_s: must be >= 0 seconds, or null to measure it")

    @property
    def control_period_ns(self) -> int:
        return period_ns(self.control_rate_hz)


@dataclass
class _Plan:
    """An ActionChunk as absolute targets over time, with the observed pose at index 0 (time = stamp)."""

    chunk: ActionChunk
    times: np.ndarray  # (K+1,) ns
    positions: np.ndarray  # (K+1, 3)
    rotations: Rotation  # K+1 rotations
    gripper: np.ndarray  # (K,) targets of steps 0..K-1

    @classmethod
    def of(cls, chunk: ActionChunk) -> "_Plan":
        times = np.concatenate([[chunk.stamp_ns], chunk.step_times_ns]).astype(np.int64)
        positions = np.vstack([chunk.origin_position, chunk.target_positions])
        quats = np.vstack([chunk.origin_quaternion, chunk.target_quaternions])
        return cls(chunk, times, positions, Rotation.from_quat(quats), np.asarray(chunk.gripper, np.float64))

    @property
    def end_ns(self) -> int:
        return int(self.times[-1])

    def at(self, t_ns: int) -> tuple[np.ndarray, Rotation, float] | None:
        """Target pose and gripper at ``t_ns`` (linear / slerp between steps); None outside the chunk."""
        if t_ns < self.times[0] or t_ns > self.times[-1]:
            return None
        j = int(np.searchsorted(self.times, t_ns, side="left"))
        j = max(j, 1)
        t0, t1 = self.times[j - 1], self.times[j]
        a = (t_ns - t0) / (t1 - t0)
        p = (1 - a) * self.positions[j - 1] + a * self.positions[j]
        r0 = self.rotations[j - 1]
        r = Rotation.from_rotvec(a * (self.rotations[j] * r0.inv()).as_rotvec()) * r0
        return p, r, float(self.gripper[j - 1])

    def remaining(self, after_ns: int) -> ActionChunk | None:
        """The steps after ``after_ns``, re-anchored on the step before them (same absolute targets and times)."""
        k = len(self.chunk)
        first = int(np.searchsorted(self.chunk.step_times_ns, after_ns, side="right"))
        if first >= k:
            return None
        base = first  # index into times/positions of the anchor (0 = the observed pose)
        r_base = self.rotations[base]
        rest = self.rotations[base + 1 :]
        return ActionChunk(
            stamp_ns=int(self.times[base]), dt_ns=self.chunk.dt_ns,
            origin_position=self.positions[base].copy(), origin_quaternion=r_base.as_quat(),
            delta_position=self.positions[base + 1 :] - self.positions[base],
            delta_rotation=(rest * r_base.inv()).as_rotvec().reshape(-1, 3),
            gripper=self.gripper[first:].copy(),
        )


class PolicyRunner:
    """Streams of images and EE poses in, one safe :class:`Command` per control tick out."""

    def __init__(self, policy: Policy, runtime: RuntimeConfig, safety: SafetyConfig, clock: Callable[[], int] | None = None,
                 inputs: InputSpec | None = None) -> None:
        self.policy = policy
        self.cfg = runtime
        spec = policy.spec
        self.cameras: list[str] = list(spec.cameras)
        self.chunk_dt_ns: int = spec.control_dt_ns
        self.history_len: int = spec.pose_history
        self.image_size: tuple[int, int] | None = getattr(policy, "image_size", None)  # encoder input (H, W); stand-ins may have none
        self.period_ns = runtime.control_period_ns
        spec.check_period(self.period_ns, "runtime.control_rate_hz", runtime.resample_chunks)
        self.safety = SafetyFilter(safety, self.period_ns)
        self.clock: Callable[[], int] = clock or time.time_ns
        self.instruction: str | None = None  # passed to language-conditioned policies
        self.router: InputRouter | None = None
        if inputs is not None:
            inputs.check(spec)
            inputs = InputSpec(**{**inputs.__dict__, "cameras": {c: inputs.cameras[c] for c in self.cameras}})
            self.router = InputRouter(inputs)
        self.sync = Synchronizer(self.cameras, SyncRule.of(runtime), gripper=inputs is None or inputs.gripper_topic is not None)
        self.ood = OODState(getattr(policy, "ood", None), safety, self.cameras)

        self._lock = threading.Condition()
        self._infer_lock = threading.Lock()  # one inference at a time (worker or inline)
        self._plans: deque[_Plan] = deque(maxlen=max(2, policy.cfg.chunk_size + 1))
        self._pending: list[tuple[int, _Plan]] = []  # synchronous mode: (release time, plan)
        self._enabled = False
        self._shutdown = False
        self._fault: str | None = None
        self._last_obs_ns: int | None = None  # stamp of the observation last inferred on
        self._last_infer_ns: int | None = None  # clock time the last inference started
        self._obs_reason = ""  # why no new observation formed at the last attempt
        self._last_gripper: float | None = None
        self._last_tick_ns: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

        self.received: Counter[str] = Counter()
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.inferences = 0
        self.ticks = 0
        self.overruns = 0  # control ticks later than 1.5 periods after the previous one
        self.last_status = ("disabled", "")
        self.statuses: Counter[str] = Counter()  # ticks per command status
        self.input_lag_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)  # inference start minus observation stamp
        self._arrivals: dict[str, deque[int]] = {}
        self._bad: dict[str, str] = {}  # input -> why its latest message was rejected

    @property
    def rejected(self) -> Counter[str]:
        return self.sync.rejected

    @property
    def last_rejection(self) -> str:
        return self.sync.last_rejection

    # ---- inputs (any thread) --------------------------------------------------------------------------

    def on_message(self, topic: str, msg: Any, arrival_ns: int | None = None) -> str:
        """Route one ROS message (a node subscription or a bag record); returns the rejection reason or ''."""
        assert self.router is not None, "on_message needs PolicyRunner(..., inputs=InputSpec)"
        arrival = self.clock() if arrival_ns is None else int(arrival_ns)
        with self._lock:
            item = self.router.route(topic, msg, arrival)
            why = self.sync.add(item, arrival)
            if item.kind != "ignore":
                self._mark(camera_key(item.name) if item.kind == "image" else item.name, why)
            self._lock.notify_all()
        return why

    def on_image(self, camera: str, stamp_ns: int, rgb: np.ndarray, arrival_ns: int | None = None) -> str:
        """A decoded RGB frame of ``camera`` stamped at exposure. Returns the rejection reason or ''."""
        try:
            check_image(rgb, f"image[{camera!r}]")
        except ObservationError as exc:
            return self.reject(camera_key(camera), str(exc))
        arrival = self.clock() if arrival_ns is None else int(arrival_ns)
        with self._lock:
            why = self.sync.add_frame(camera, Frame(int(stamp_ns), rgb=rgb), arrival)
            self._mark(camera_key(camera), why)
            self._lock.notify_all()
        return why

    def on_pose(self, stamp_ns: int, position: np.ndarray, quaternion: np.ndarray, gripper: float | None = None,
                arrival_ns: int | None = None) -> str:
        """An EE pose (base frame), optionally with the gripper opening measured at the same stamp."""
        arrival = self.clock() if arrival_ns is None else int(arrival_ns)
        with self._lock:
            why = self.sync.add_pose(int(stamp_ns), position, quaternion, arrival)
            self._mark(POSE, why)
            if gripper is not None and not why:
                why = self.sync.add_gripper(int(stamp_ns), gripper, arrival)
                self._mark(GRIPPER, why)
            self._lock.notify_all()
        return why

    def on_gripper(self, stamp_ns: int, opening: float, arrival_ns: int | None = None) -> str:
        """The measured gripper opening in [0, 1] (1 = open)."""
        arrival = self.clock() if arrival_ns is None else int(arrival_ns)
        with self._lock:
            why = self.sync.add_gripper(int(stamp_ns), opening, arrival)
            self._mark(GRIPPER, why)
        return why

    def reject(self, name: str, reason: str) -> str:
        """Count a rejected input (also for messages that failed before reaching the runner)."""
        if name in self.cameras:  # a bare camera name: count it under the camera's input name
            name = camera_key(name)
        with self._lock:
            why = self.sync.reject(name, reason)
            self._mark(name, why)
        log.debug("rejected %s", why)
        return why

    def _mark(self, key: str, why: str) -> None:
        """A rejected input stops the arm until the next valid message of that input (its buffer keeps the last valid one)."""
        if why:
            self._bad[key] = why
            return
        self._bad.pop(key, None)
        self.received[key] += 1
        self._arrivals.setdefault(key, deque(maxlen=50)).append(time.monotonic_ns())

    # ---- control (the caller's thread) ----------------------------------------------------------------

    def set_enabled(self, on: bool) -> None:
        """Enable (commands follow the policy) or disable (stop only). Enabling starts from fresh chunks."""
        with self._lock:
            if on and not self._enabled:
                self._plans.clear()
                self._pending.clear()
                self._last_obs_ns = None
            self._enabled = bool(on)
            self._lock.notify_all()

    @property
    def enabled(self) -> bool:
        return self._enabled

    def reset(self) -> None:
        """Drop chunks, input buffers and a latched fault (enabled state unchanged): a new episode."""
        with self._lock:
            self._plans.clear()
            self._pending.clear()
            self.sync.reset()
            self._bad.clear()
            self._fault = None
            self.ood.clear()
            self._last_obs_ns = self._last_infer_ns = None
            self._last_gripper = None
            self.safety.release()
            self._lock.notify_all()

    def shutdown(self) -> None:
        """Stop commanding for good (every later tick is a 'shutdown' stop) and stop the worker."""
        with self._lock:
            self._shutdown = True
            self._enabled = False
        self.stop()

    def start(self) -> None:
        """Start the inference worker thread (not needed with runtime.synchronous)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._worker, name="policy-inference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the inference worker thread (waits for a running inference to finish)."""
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
            self._thread = None

    def tick(self, now_ns: int) -> Command:
        """The command for this control tick. Never waits for the model unless runtime.synchronous."""
        now_ns = int(now_ns)
        with self._lock:
            self.ticks += 1
            if self._last_tick_ns is not None and now_ns - self._last_tick_ns > 1.5 * self.period_ns:
                self.overruns += 1
            self._last_tick_ns = now_ns
        cmd = self._command(now_ns)
        if not cmd.is_finite():  # belt and braces: nothing non-finite ever leaves the runner
            cmd = self._stop_command(now_ns, "fault", "internal error: a non-finite command was replaced by a stop")
        if not cmd.is_stop:
            self._last_gripper = cmd.gripper
        self.last_status = (cmd.status, cmd.reason)
        self.statuses[cmd.status] += 1
        return cmd

    def _command(self, now_ns: int) -> Command:
        if self._shutdown:
            return self._stop_command(now_ns, "shutdown", "the node is shutting down")
        if not self._enabled:
            return self._stop_command(now_ns, "disabled", "disabled: enable the policy to command the arm")
        if self._fault:
            return self._stop_command(now_ns, "fault", f"{self._fault}; reset to clear")
        with self._lock:
            status, reason = self.sync.stale(now_ns)
            if not status and self._bad:
                status, reason = "stale", "rejected input: " + "; ".join(self._bad.values())
        if status:
            return self._stop_command(now_ns, status, reason)
        if self.cfg.synchronous:
            obs = self._next_observation(now_ns)
            if obs is not None:
                self._infer(now_ns, obs)
            if self._fault:
                return self._stop_command(now_ns, "fault", f"{self._fault}; reset to clear")
        if self.ood.stopping:
            return self._stop_command(now_ns, "ood", self.ood.reason)
        with self._lock:
            self._release_pending(now_ns)
            latest = self.sync.latest_pose()
            plans = [p for p in self._plans if p.end_ns >= now_ns]
            self._plans = deque(plans, maxlen=self._plans.maxlen)
            obs_reason = self._obs_reason
        if latest is None:
            return self._stop_command(now_ns, "waiting", "no valid EE pose yet")
        if not plans:
            if not self.inferences:
                waited = f"waiting for the first action chunk{': ' + obs_reason if obs_reason else ''}"
            else:
                waited = f"the last action chunk ran out before a new one arrived{': ' + obs_reason if obs_reason else ''}"
            return self._stop_command(now_ns, "waiting", waited)
        target = self._target(plans, now_ns + self.period_ns)
        if target is None:
            return self._stop_command(now_ns, "waiting", "the action chunk ends before the next tick; waiting for a new one")
        p, r, g = target
        pos, quat = latest[1][:3], latest[1][3:]
        remaining = plans[-1].remaining(now_ns)
        if remaining is not None:
            remaining = self.safety.limit_chunk(remaining, pos, quat, now_ns)
        cmd = self.safety.limit(now_ns, pos, quat, p, r.as_quat(), g, remaining)
        if cmd.status == "fault":
            self._fault = cmd.reason
        return cmd

    def _stop_command(self, now_ns: int, status: str, reason: str) -> Command:
        """A stop holding the newest valid measured pose; without one, a stop with no target at all."""
        with self._lock:
            latest = self.sync.latest_pose()
            measured = self.sync.latest_gripper()
        grip = self._last_gripper if self._last_gripper is not None else measured
        if latest is None:
            return self.safety.stop(now_ns, status, reason, None, None, grip)
        return self.safety.stop(now_ns, status, reason, latest[1][:3], latest[1][3:], grip)

    def _target(self, plans: list[_Plan], t_ns: int) -> tuple[np.ndarray, Rotation, float] | None:
        if self.cfg.strategy == "receding":
            return plans[-1].at(t_ns)
        values = [v for v in (p.at(t_ns) for p in plans) if v is not None]  # oldest chunk first
        if not values:
            return None
        w = np.exp(-self.cfg.ensemble_m * np.arange(len(values)))
        w /= w.sum()
        pos = np.sum([wi * v[0] for wi, v in zip(w, values)], axis=0)
        rot = Rotation.concatenate([v[1] for v in values]).mean(weights=w)
        grip = float(np.dot(w, [v[2] for v in values]))
        return pos, rot, grip

    # ---- observation and inference ----------------------------------------------------------------------

    def _next_observation(self, now_ns: int) -> Resolved | None:
        """The newest observation not inferred on yet, when the schedule says it is time to infer."""
        with self._lock:
            if not self._enabled or self._fault or self._shutdown or self._bad or self.sync.stale(now_ns)[0]:
                return None
            newest = self._pending[-1][1] if self._pending else (self._plans[-1] if self._plans else None)
            if newest is not None:
                if self.cfg.strategy == "receding":
                    switch = newest.chunk.stamp_ns + self.cfg.execute_steps * self.chunk_dt_ns
                    if now_ns < switch - self.latency_estimate_ns() and now_ns < newest.end_ns:
                        return None
                elif self._last_infer_ns is not None and now_ns - self._last_infer_ns < self.period_ns:
                    return None
            obs, why = self.sync.newest(now_ns, self._last_obs_ns)
            self._obs_reason = why.split(": ", 1)[-1] if why else ""
            if obs is not None:  # older frames can never be used again: free their pixels
                self.sync.prune(obs.stamp_ns - self.sync.rule.tolerance_ns)
            return obs

    def _observation(self, obs: Resolved) -> Observation | None:
        """Decode (and resize) the frames an inference uses; a frame that fails to decode is rejected here."""
        images = {}
        for cam, frame in obs.frames.items():
            try:
                rgb = frame.rgb()
            except M.MessageError as exc:
                with self._lock:
                    self.sync.reject(camera_key(cam), str(exc))
                    if frame in self.sync.frames[cam]:
                        self.sync.frames[cam].remove(frame)
                return None
            # the same uint8 resize as the training cache (data/bags.py): identical inputs
            images[cam] = resize_uint8(rgb, self.image_size) if self.image_size is not None else rgb
        history = None
        if self.history_len:
            with self._lock:
                history = self.sync.pose_history(obs.stamp_ns, self.chunk_dt_ns, self.history_len)
        return Observation(obs.stamp_ns, images, obs.pose[:3], obs.pose[3:], obs.gripper, history, self.instruction)

    def latency_estimate_ns(self) -> int:
        if self.cfg.inference_latency_s is not None:
            return int(round(self.cfg.inference_latency_s * 1e9))
        if not self.latencies_ms:
            return 0
        return int(np.median(list(self.latencies_ms)[-20:]) * 1e6)

    def _infer(self, now_ns: int, resolved: Resolved) -> None:
        obs = self._observation(resolved)
        if obs is None:
            return
        with self._infer_lock:
            self._last_infer_ns = now_ns
            self._last_obs_ns = obs.stamp_ns
            self.input_lag_ms.append((now_ns - obs.stamp_ns) / 1e6)
            t0 = time.perf_counter()
            try:
                chunk = self.policy.predict(obs)
            except Exception as exc:  # a model error must stop the arm, not kill the node
                self._fault = f"inference failed: {type(exc).__name__}: {exc}"
                log.error("%s: stopping until reset", self._fault)
                log.debug("inference failure", exc_info=True)
                return
            self.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            self.inferences += 1
        if not chunk.is_finite():
            self._fault = "the model output contains NaN or Inf"
            log.error("%s: stopping until reset", self._fault)
            return
        plan = _Plan.of(chunk)
        with self._lock:
            if self.ood.update(chunk):  # safety.ood_stop: no chunk of an out-of-distribution frame is ever executed
                self._plans.clear()
                self._pending.clear()
                return
            if not self._enabled:  # disabled while the model ran: the chunk belongs to the old session
                return
            if self.cfg.synchronous and self.cfg.inference_latency_s:
                self._pending.append((now_ns + self.latency_estimate_ns(), plan))
            else:
                self._plans.append(plan)

    def _release_pending(self, now_ns: int) -> None:
        while self._pending and self._pending[0][0] <= now_ns:
            self._plans.append(self._pending.pop(0)[1])

    def _worker(self) -> None:
        wait_s = min(self.period_ns / 1e9 / 4, 0.02)
        while not self._stop.is_set():
            now = self.clock()
            obs = self._next_observation(now)
            if obs is not None:
                self._infer(now, obs)
                continue
            with self._lock:
                self._lock.wait(timeout=wait_s)

    # ---- monitoring ---------------------------------------------------------------------------------

    def diagnostics(self, now_ns: int | None = None) -> dict[str, Any]:
        """Counters, input ages, rates and clock offsets, dropped frames, latency percentiles: what /diagnostics publishes."""
        now_ns = self.clock() if now_ns is None else int(now_ns)
        with self._lock:
            ages = self.sync.ages_ns(now_ns)
            offsets = self.sync.clock_offsets_ms()
            lat = np.array(self.latencies_ms) if self.latencies_ms else None
            lag = np.array(self.input_lag_ms) if self.input_lag_ms else None
            rates = {}
            for key, arr in self._arrivals.items():
                span = (arr[-1] - arr[0]) / 1e9 if len(arr) > 1 else 0.0
                rates[key] = (len(arr) - 1) / span if span > 0 else 0.0
            return {
                "status": self.last_status[0], "reason": self.last_status[1], "enabled": self._enabled,
                "fault": self._fault or "",
                "inputs": {k: {"age_ms": None if v is None else v / 1e6, "rate_hz": rates.get(k, 0.0),
                               "received": self.received[k], "rejected": self.rejected[k],
                               "clock_offset_ms": offsets.get(k)} for k, v in ages.items()},
                "rejected_total": sum(self.rejected.values()), "last_rejection": self.last_rejection,
                "dropped_frames": sum(self.sync.dropped.values()), "last_drop": self.sync.last_drop,
                "inferences": self.inferences, "ticks": self.ticks, "ticks_ok": self.statuses["ok"], "overruns": self.overruns,
                "input_lag_ms_p50": float(np.percentile(lag, 50)) if lag is not None else None,
                "input_lag_ms_p99": float(np.percentile(lag, 99)) if lag is not None else None,
                "latency_ms_p50": float(np.percentile(lat, 50)) if lat is not None else None,
                "latency_ms_p99": float(np.percentile(lat, 99)) if lat is not None else None,
                "ood": self.ood.diagnostics(),
            }

    @property
    def stats(self) -> dict[str, Any]:
        return self.diagnostics()
