"""PolicyRunner: staleness, strategies, latency compensation, safety, NaN model output, the async worker."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from vit_policy.model.configuration import EncoderConfig, PolicyConfig, PoseConfig
from vit_policy.runtime import RuntimeConfig
from vit_policy.safety import SafetyConfig
from vit_policy.model.policy import VisuomotorPolicy, identity_stats
from vit_policy.observation import ActionChunk, Observation, ObservationSpec
from vit_policy.runtime import PolicyRunner

MS = 1_000_000
S0 = 100_000 * MS  # an arbitrary start time
P0 = np.array([0.4, 0.0, 0.3])
Q0 = np.array([0.0, 0.0, 0.0, 1.0])
LOOSE = SafetyConfig(max_linear_speed=100.0, max_angular_speed=100.0, max_step=10.0)


def tiny_cfg(**kw) -> PolicyConfig:
    return PolicyConfig(cameras=["front"], encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=64, token_mode="pooled"),
                        d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, chunk_size=8, **kw)


@pytest.fixture(scope="module")
def tiny_policy() -> VisuomotorPolicy:
    torch.manual_seed(0)
    policy = VisuomotorPolicy.from_config(tiny_cfg()).eval()
    policy.set_stats(identity_stats(policy.cfg))
    return policy


class ScriptedPolicy:
    """A model stand-in with known outputs: chunk i moves +x at ``speed`` m/s plus ``offsets[i]``."""

    def __init__(self, speed: float = 0.1, offsets: list[float] | None = None, chunk_size: int = 8, sleep_s: float = 0.0):
        self.cfg = tiny_cfg(chunk_size=chunk_size) if chunk_size != 8 else tiny_cfg()
        self.spec = ObservationSpec.of(self.cfg)
        self.speed, self.offsets, self.sleep_s = speed, offsets or [], sleep_s
        self.calls: list[Observation] = []

    def predict(self, obs: Observation) -> ActionChunk:
        time.sleep(self.sleep_s)
        i = len(self.calls)
        self.calls.append(obs)
        k = self.cfg.chunk_size
        dt = self.cfg.control_dt_ns
        dp = np.zeros((k, 3))
        dp[:, 0] = self.speed * dt / 1e9 * np.arange(1, k + 1) + (self.offsets[i] if i < len(self.offsets) else 0.0)
        return ActionChunk(obs.stamp_ns, dt, obs.position, obs.quaternion, dp, np.zeros((k, 3)), np.full(k, 0.25 * (i % 4)))


def feed(runner: PolicyRunner, stamp: int, pos=P0, size: int = 64) -> None:
    runner.on_pose(stamp, pos, Q0, 1.0)
    runner.on_image("front", stamp, np.full((size, size, 3), 120, np.uint8))


def test_disabled_sends_only_stop(tiny_policy):
    runner = PolicyRunner(tiny_policy, RuntimeConfig(synchronous=True), SafetyConfig())
    for i in range(3):
        feed(runner, S0 + i * 100 * MS)
        cmd = runner.tick(S0 + i * 100 * MS)
        assert cmd.is_stop and cmd.status == "disabled" and np.all(cmd.linear == 0) and np.all(cmd.angular == 0)
        np.testing.assert_allclose(cmd.target_position, P0)  # zero_twist: target = measured pose
    assert runner.inferences == 0


def test_waiting_then_stale_input_stops_and_names_the_camera(tiny_policy):
    runner = PolicyRunner(tiny_policy, RuntimeConfig(synchronous=True, max_age_s=0.3), SafetyConfig())
    runner.set_enabled(True)
    cmd = runner.tick(S0)
    assert cmd.status == "waiting" and "no message yet" in cmd.reason and cmd.is_finite()
    feed(runner, S0)
    cmd = runner.tick(S0 + 10 * MS)
    assert cmd.status == "ok" and not cmd.is_stop and runner.inferences == 1
    runner.on_pose(S0 + 350 * MS, P0, Q0, 1.0)  # pose keeps coming, the camera went silent
    cmd = runner.tick(S0 + 350 * MS)
    assert cmd.is_stop and cmd.status == "stale" and "camera/front" in cmd.reason
    assert np.all(cmd.linear == 0)


def test_frame_waits_for_the_pose_at_its_stamp_and_gets_it_interpolated():
    """A frame newer than every pose waits (a stop naming why); the next pose brackets it: interpolated."""
    policy = ScriptedPolicy()
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True, max_extrapolation_s=0.02), LOOSE)
    runner.set_enabled(True)
    runner.on_pose(S0 + 150 * MS, P0, Q0, 1.0)
    runner.on_image("front", S0 + 200 * MS, np.zeros((64, 64, 3), np.uint8))
    cmd = runner.tick(S0 + 205 * MS)
    assert cmd.is_stop and cmd.status == "waiting" and "50 ms older than the frame" in cmd.reason
    assert runner.inferences == 0
    runner.on_pose(S0 + 210 * MS, P0 + [0.012, 0, 0], Q0, 0.0)  # the arm moved 12 mm in 60 ms
    assert runner.tick(S0 + 215 * MS).status == "ok"
    obs = policy.calls[0]
    assert obs.stamp_ns == S0 + 200 * MS
    np.testing.assert_allclose(obs.position, P0 + [0.010, 0, 0], atol=1e-9)  # at the frame's stamp, not the newest pose
    assert obs.gripper == pytest.approx(1.0 - 50 / 60)


def test_frame_before_any_pose_is_dropped_and_counted(tiny_policy):
    runner = PolicyRunner(tiny_policy, RuntimeConfig(synchronous=True, sync_tolerance_s=0.05), SafetyConfig())
    runner.set_enabled(True)
    runner.on_pose(S0 + 200 * MS, P0, Q0, 1.0)
    runner.on_image("front", S0 + 100 * MS, np.zeros((64, 64, 3), np.uint8))
    cmd = runner.tick(S0 + 210 * MS)
    assert cmd.is_stop and cmd.status == "waiting" and "100 ms before the first EE pose" in cmd.reason
    diag = runner.diagnostics(S0 + 210 * MS)
    assert diag["dropped_frames"] == 1 and "before the first EE pose" in diag["last_drop"]


def test_bad_stamps_are_rejected_and_counted(tiny_policy):
    runner = PolicyRunner(tiny_policy, RuntimeConfig(synchronous=True, max_stamp_lead_s=0.2), SafetyConfig(),
                          clock=lambda: S0 + 100 * MS)
    runner.on_pose(S0 + 100 * MS + 10_000 * MS, P0, Q0, 1.0)  # 10 s in the future of its arrival
    assert runner.rejected["pose"] == 1 and "10.000 s in the future" in runner.last_rejection
    runner.on_image("front", S0 + 90 * MS, np.zeros((64, 64, 3), np.uint8))
    runner.on_image("front", S0 + 50 * MS, np.zeros((64, 64, 3), np.uint8))  # older than the previous frame
    assert runner.rejected["camera/front"] == 1 and "backwards by 40.0 ms" in runner.last_rejection
    runner.on_pose(S0 + 95 * MS, P0 + [1e300, 0, 0], Q0, 1.0)  # finite but absurd
    assert runner.rejected["pose"] == 2 and "position_bound_m" in runner.last_rejection
    offsets = runner.diagnostics()["inputs"]["camera/front"]["clock_offset_ms"]
    assert offsets == pytest.approx(10.0)  # arrival - stamp of the accepted frame


def test_stop_before_any_valid_pose_has_no_target(tiny_policy):
    runner = PolicyRunner(tiny_policy, RuntimeConfig(synchronous=True), SafetyConfig(stop_mode="hold_pose"))
    runner.set_enabled(True)
    runner.on_pose(S0, np.array([np.nan, 0, 0.3]), Q0, 1.0)
    cmd = runner.tick(S0)
    assert cmd.is_stop and not cmd.has_target and cmd.target_position is None and cmd.gripper is None
    assert cmd.is_finite() and np.all(cmd.linear == 0)


def test_latency_compensation_skips_steps_already_past():
    """Chunk anchored at the observation; a tick 250 ms later commands the target for t_obs + 350 ms."""
    policy = ScriptedPolicy(speed=0.1)
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True, max_age_s=1.0), LOOSE)
    runner.set_enabled(True)
    feed(runner, S0)
    cmd = runner.tick(S0 + 250 * MS)
    assert cmd.status == "ok"
    np.testing.assert_allclose(cmd.target_position, P0 + [0.035, 0, 0], atol=1e-12)
    np.testing.assert_allclose(cmd.linear, [0.35, 0, 0], atol=1e-9)  # target minus current over one period
    # the remaining chunk holds the steps after now (t_obs + 300 ms ...) with their original absolute targets
    rest = cmd.chunk
    np.testing.assert_array_equal(rest.step_times_ns, S0 + np.arange(3, 9) * 100 * MS)
    np.testing.assert_allclose(rest.target_positions[:, 0], P0[0] + 0.1 * np.arange(3, 9) * 0.1, atol=1e-12)


def test_a_control_rate_other_than_the_chunk_step_is_an_error_unless_resampling_is_asked_for():
    """The one rate rule: 25 Hz ticks against a 10 Hz checkpoint fail at construction naming both; with
    runtime.resample_chunks the 40 ms tick commands the chunk interpolated between its 100 ms steps."""
    from vit_policy.config import ConfigError

    policy = ScriptedPolicy(speed=0.1)
    with pytest.raises(ConfigError, match=r"runtime.control_rate_hz: 25 Hz .*40 ms.*control_dt 0.1 s = 100 ms.*set runtime.control_rate_hz to 10 Hz"):
        PolicyRunner(policy, RuntimeConfig(synchronous=True, control_rate_hz=25.0), LOOSE)
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True, control_rate_hz=25.0, resample_chunks=True, max_age_s=1.0), LOOSE)
    runner.set_enabled(True)
    feed(runner, S0)
    cmd = runner.tick(S0 + 10 * MS)  # commands the target for S0 + 50 ms: half of the first 100 ms step
    assert cmd.status == "ok"
    np.testing.assert_allclose(cmd.target_position, P0 + [0.005, 0, 0], atol=1e-9)


def test_temporal_ensembling_weights():
    m = 0.5
    offsets = [0.01, 0.02, 0.04]
    policy = ScriptedPolicy(speed=0.0, offsets=offsets)
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True, strategy="ensemble", ensemble_m=m), LOOSE)
    runner.set_enabled(True)
    for i in range(3):
        feed(runner, S0 + i * 100 * MS)
        cmd = runner.tick(S0 + i * 100 * MS)
    assert len(policy.calls) == 3
    w = np.exp(-m * np.arange(3))  # oldest chunk first (ACT)
    w /= w.sum()
    np.testing.assert_allclose(cmd.target_position[0], P0[0] + np.dot(w, offsets), atol=1e-12)
    np.testing.assert_allclose(cmd.gripper, np.dot(w, [0.0, 0.25, 0.5]), atol=1e-12)
    # and the newest chunk alone with the receding strategy
    policy = ScriptedPolicy(speed=0.0, offsets=offsets)
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True, strategy="receding", execute_steps=1), LOOSE)
    runner.set_enabled(True)
    for i in range(3):
        feed(runner, S0 + i * 100 * MS)
        cmd = runner.tick(S0 + i * 100 * MS)
    np.testing.assert_allclose(cmd.target_position[0], P0[0] + offsets[2], atol=1e-12)


def test_receding_horizon_replans_after_execute_steps():
    policy = ScriptedPolicy(speed=0.05)
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True, strategy="receding", execute_steps=3, inference_latency_s=0.0), LOOSE)
    runner.set_enabled(True)
    inferred_at = []
    for i in range(8):
        feed(runner, S0 + i * 100 * MS)
        before = len(policy.calls)
        assert runner.tick(S0 + i * 100 * MS).status == "ok"
        if len(policy.calls) > before:
            inferred_at.append(i)
    assert inferred_at == [0, 3, 6]


def test_synchronous_simulated_latency_delays_the_chunk():
    policy = ScriptedPolicy(speed=0.1)
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True, inference_latency_s=0.15), LOOSE)
    runner.set_enabled(True)
    feed(runner, S0)
    assert runner.tick(S0).status == "waiting"  # inferred, not yet released
    feed(runner, S0 + 100 * MS)
    assert runner.tick(S0 + 100 * MS).status == "waiting"
    feed(runner, S0 + 200 * MS)
    cmd = runner.tick(S0 + 200 * MS)
    assert cmd.status == "ok"  # the chunk of S0 is used: target for S0 + 300 ms
    np.testing.assert_allclose(cmd.target_position[0], P0[0] + 0.03, atol=1e-12)


def test_safety_limits_apply_to_policy_commands():
    policy = ScriptedPolicy(speed=2.0)  # 2 m/s requested
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True), SafetyConfig(max_linear_speed=0.25))
    runner.set_enabled(True)
    feed(runner, S0)
    cmd = runner.tick(S0)
    assert cmd.status == "ok" and np.linalg.norm(cmd.linear) == pytest.approx(0.25)
    assert np.linalg.norm(cmd.target_position - P0) == pytest.approx(0.025)
    assert "limited" in cmd.reason


def test_nan_model_output_stops_until_reset():
    torch.manual_seed(0)
    policy = VisuomotorPolicy.from_config(tiny_cfg()).eval()
    policy.set_stats(identity_stats(policy.cfg))
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True), SafetyConfig())
    runner.set_enabled(True)
    with torch.no_grad():
        policy.head.bias[0] = float("nan")  # a real network producing NaN
    feed(runner, S0)
    cmd = runner.tick(S0)
    assert cmd.is_stop and cmd.status == "fault" and "NaN" in cmd.reason and cmd.is_finite()
    feed(runner, S0 + 100 * MS)
    assert runner.tick(S0 + 100 * MS).status == "fault"  # latched
    with torch.no_grad():
        policy.head.bias[0] = 0.0
    runner.reset()
    feed(runner, S0 + 200 * MS)
    cmd = runner.tick(S0 + 200 * MS)
    assert cmd.status == "ok" and cmd.is_finite()


def test_rejected_inputs_are_counted_and_stop(tiny_policy):
    runner = PolicyRunner(tiny_policy, RuntimeConfig(synchronous=True), SafetyConfig())
    runner.set_enabled(True)
    feed(runner, S0)
    assert runner.tick(S0).status == "ok"
    runner.on_pose(S0 + 100 * MS, np.array([np.nan, 0, 0.3]), Q0, 1.0)
    cmd = runner.tick(S0 + 100 * MS)
    assert cmd.is_stop and cmd.is_finite() and runner.rejected["pose"] == 1
    np.testing.assert_allclose(cmd.target_position, P0)  # the stop holds the last valid measured pose
    feed(runner, S0 + 200 * MS)
    assert runner.tick(S0 + 200 * MS).status == "ok"
    runner.on_image("front", S0 + 300 * MS, np.zeros((64, 64), np.uint8))  # no colour channels
    runner.on_image("front", S0 + 300 * MS, np.zeros((64, 64, 3), np.float32))  # wrong dtype
    runner.on_image("side", S0 + 300 * MS, np.zeros((64, 64, 3), np.uint8))  # camera the policy does not use
    cmd = runner.tick(S0 + 300 * MS)
    assert cmd.is_stop and cmd.status == "stale" and "rejected input" in cmd.reason and runner.rejected["camera/front"] == 2
    assert runner.rejected["camera/side"] == 1 and "unknown camera" in runner.last_rejection
    diag = runner.diagnostics(S0 + 300 * MS)
    assert diag["rejected_total"] == 4 and diag["inputs"]["camera/front"]["rejected"] == 2


def test_pose_history_given_to_the_policy():
    torch.manual_seed(0)
    policy = VisuomotorPolicy.from_config(tiny_cfg(pose=PoseConfig(history=2))).eval()
    policy.set_stats(identity_stats(policy.cfg))
    calls = []
    real_predict = policy.predict
    policy.predict = lambda obs: calls.append(obs) or real_predict(obs)
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True, strategy="receding", execute_steps=8), SafetyConfig())
    runner.set_enabled(True)
    for i in range(4):  # poses at 50 ms spacing, x increasing by 1 cm
        runner.on_pose(S0 + i * 50 * MS, P0 + [0.01 * i, 0, 0], Q0, 1.0)
    runner.on_image("front", S0 + 150 * MS, np.zeros((64, 64, 3), np.uint8))
    assert runner.tick(S0 + 150 * MS).status == "ok"
    hist = calls[0].history
    assert hist.shape == (2, 7)
    np.testing.assert_allclose(hist[:, 0], P0[0] + [0.0, 0.01])  # poses at t - 200 ms (the oldest kept), t - 100 ms


def test_async_worker_never_blocks_the_tick(tiny_policy):
    """A 300 ms model: ticks stay fast, the first chunk arrives, then commands are ok."""

    class Slow:
        cfg, spec = tiny_policy.cfg, tiny_policy.spec

        def predict(self, obs):
            time.sleep(0.3)
            return tiny_policy.predict(obs)

    runner = PolicyRunner(Slow(), RuntimeConfig(max_age_s=1.0), SafetyConfig())
    runner.start()
    try:
        runner.set_enabled(True)
        statuses, durations = [], []
        t_end = time.monotonic() + 3.0
        while time.monotonic() < t_end and "ok" not in statuses[-3:]:
            now = time.time_ns()
            feed(runner, now)
            t0 = time.perf_counter()
            statuses.append(runner.tick(now).status)
            durations.append(time.perf_counter() - t0)
            time.sleep(0.05)
        assert statuses[0] == "waiting" and statuses[-1] == "ok"
        assert max(durations) < 0.1  # never the 300 ms of the model
        assert runner.diagnostics()["latency_ms_p50"] >= 300
    finally:
        runner.shutdown()
    assert runner.tick(time.time_ns()).status == "shutdown"


def test_frames_reach_the_model_resized_like_the_training_cache(tiny_policy):
    from vit_policy.images import resize_uint8

    seen = []

    class Recording:
        cfg, spec = tiny_policy.cfg, tiny_policy.spec
        image_size = tiny_policy.image_size

        def predict(self, obs):
            seen.append(obs)
            return tiny_policy.predict(obs)

    runner = PolicyRunner(Recording(), RuntimeConfig(synchronous=True), SafetyConfig())
    runner.set_enabled(True)
    frame = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    runner.on_pose(S0, P0, Q0, 1.0)
    runner.on_image("front", S0, frame)
    assert runner.tick(S0).status == "ok"
    np.testing.assert_array_equal(seen[0].images["front"], resize_uint8(frame, tiny_policy.image_size))
