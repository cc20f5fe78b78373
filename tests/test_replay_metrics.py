"""Replay metrics on hand-made arrays (``vit_policy.replay.metrics``): no bag, no model.

The end-to-end checks (an oracle policy scores zero, a constant one the independently computed
error) are in test_replay.py; here each metric is checked on arrays whose answer is known by hand.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from vit_policy.data.bags import Episode
from vit_policy.geometry import rotvec_to_rot6d
from vit_policy.replay.metrics import (
    CommandStream, Predictions, chunk_metrics, error_summary, jerk, latency_summary, recorded_target_at, stream_metrics,
)

K = 8
DT_NS = 10**8  # 10 Hz control
IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])


def ramp_episode(n: int = 10, speed: float = 1.0, padded_from: int | None = None) -> Episode:
    """An episode moving along x at ``speed`` m/s, a frame per control period; its labels are the future poses."""
    stamps = np.arange(n, dtype=np.int64) * DT_NS
    pos = np.zeros((n, 3))
    pos[:, 0] = speed * stamps / 1e9
    action = np.zeros((n, K, 10))
    action[..., 0] = speed * DT_NS / 1e9 * np.arange(1, K + 1)  # step k: (k + 1) periods ahead
    action[..., 3:9] = rotvec_to_rot6d(np.zeros(3))
    action[..., 9] = 1.0
    mask = np.ones((n, K), bool)
    if padded_from is not None:
        mask[padded_from:, 0] = False
    return Episode("ramp", stamps, {}, pos, np.tile(IDENTITY, (n, 1)), np.ones(n), action, mask)


def test_metrics_need_no_model_and_no_io() -> None:
    """The module's imports: numpy, scipy and the core's array helpers; never torch, a model, a bag or the runtime
    (type hints aside)."""
    tree = ast.parse((Path(__file__).resolve().parent.parent / "vit_policy" / "replay" / "metrics.py").read_text())
    hints = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
             for n in ast.walk(block)}
    names = set()
    for node in (n for n in ast.walk(tree) if id(n) not in hints):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
    forbidden = ("torch", "vit_policy.model", "vit_policy.data", "vit_policy.runtime", "vit_policy.deploy", "pathlib", "json")
    assert [n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden)] == []



def test_jerk_of_a_cubic_is_its_third_derivative() -> None:
    t = np.arange(10) * 0.1
    p = np.stack([t**3, 2 * t**3, np.zeros_like(t)], axis=1)  # d3/dt3 = (6, 12, 0)
    np.testing.assert_allclose(jerk(p, 0.1), np.hypot(6, 12), rtol=1e-9)


def test_chunk_metrics_on_known_arrays() -> None:
    n = 3
    true_dp = np.zeros((n, K, 3))
    pred_dp = true_dp.copy()
    pred_dp[..., 0] = 0.004  # 4 mm off in x on every step
    pred_dp[:, -1, 1] = -0.03  # and 30 mm off in y on the last step
    rot = np.zeros((n, K, 3))
    pred_rot = rot.copy()
    pred_rot[..., 2] = np.radians(2.0)
    true_g = np.ones((n, K))
    true_g[:, 4:] = 0.0  # the gripper closes at step 5: a change from the open state at observation time
    pred_g = true_g.copy()
    pred_g[0, 4] = 1.0  # one missed close event
    mask = np.ones((n, K), bool)
    mask[2, 6:] = False  # padding past the episode end
    p = Predictions(np.arange(n) * 10**8, 10**8, np.zeros((n, 3)), np.tile([0, 0, 0, 1.0], (n, 1)), np.ones(n),
                    pred_dp, pred_rot, pred_g, true_dp, rot, true_g, mask)
    m = chunk_metrics(p, tolerance_mm=10.0, tolerance_deg=5.0)
    assert m["steps"] == mask.sum() == 22
    assert m["translation_mae_mm"]["x"] == pytest.approx(4.0)
    assert m["translation_mae_mm"]["y"] == pytest.approx(30.0 * 2 / 22)  # two unpadded last steps
    assert m["translation_rmse_mm"]["y"] == pytest.approx(np.sqrt(900.0 * 2 / 22))
    assert m["rotation_error_deg"]["mean"] == pytest.approx(2.0)
    assert m["gripper_events"] == 4 + 4 + 2
    assert m["gripper_event_accuracy"] == pytest.approx(9 / 10)
    assert m["within_tolerance"] == pytest.approx(20 / 22)
    assert m["horizon"]["translation_mm"][0] == pytest.approx(4.0)
    assert m["horizon"]["translation_mm"][-1] == pytest.approx(np.hypot(4.0, 30.0))


def test_stream_metrics_separate_seam_jerk() -> None:
    """A step in the command stream where a new chunk takes over is seam jerk; a smooth ramp is not."""
    m = 12
    stamps = np.arange(m, dtype=np.int64) * 10**8
    pos = np.zeros((m, 3))
    pos[:, 0] = 0.01 * np.arange(m)
    pos[6:, 0] += 0.005  # a 5 mm jump when chunk 2 takes over at tick 6
    chunk_id = np.where(np.arange(m) < 6, 1, 2)
    stream = CommandStream(stamps, pos, np.tile([0, 0, 0, 1.0], (m, 1)), np.ones(m), np.zeros(m, bool), chunk_id,
                           ["ok"] * m, [""] * m)
    out = stream_metrics([(stream, [])], 10**8)
    assert out["seams"] == 1
    assert out["jerk_rms_within"] == pytest.approx(0.0, abs=1e-6)
    assert out["jerk_rms_seams"] > 1.0
    assert out["jerk_max"] == pytest.approx(2 * 0.005 / 0.1**3, rel=1e-6)  # third difference of a step: h, -2h, h



def test_summaries() -> None:
    assert error_summary(np.array([1.0, 2.0, 3.0, 10.0])) == {"mean": 4.0, "p50": 2.5, "p95": pytest.approx(8.95), "max": 10.0}
    assert all(math.isnan(v) for v in error_summary(np.zeros(0)).values()) and list(error_summary(np.zeros(0))) == ["mean", "p50", "p95", "max"]
    lat = latency_summary(np.array([4.0, 2.0]))
    assert list(lat) == ["n", "mean", "p50", "p90", "p99", "max"] and lat["n"] == 2 and lat["mean"] == 3.0 and lat["max"] == 4.0
    assert latency_summary(np.zeros(0)) is None


def test_recorded_target_interpolates_the_step_one_labels() -> None:
    """Step 1 of frame t is the target for stamp_t + dt; in between, linear; outside or next to padding, not valid."""
    ep = ramp_episode(n=10, padded_from=8)
    times = np.array([DT_NS, DT_NS + DT_NS // 4, 5 * DT_NS + DT_NS // 2, 8 * DT_NS + DT_NS // 2, 11 * DT_NS, 0])
    pos, quat, valid = recorded_target_at([ep], times, DT_NS)
    assert valid.tolist() == [True, True, True, False, False, False]  # frame 8's step is padding; 1.1 s is past the end
    np.testing.assert_allclose(pos[valid, 0], times[valid] / 1e9, atol=1e-12)  # at 1 m/s the target at time s is x = s
    np.testing.assert_allclose(pos[valid, 1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.abs(quat[valid] @ IDENTITY), 1.0, atol=1e-12)


def test_stream_metrics_score_the_executed_target_against_the_recording() -> None:
    """A stream that commands the recorded target 2 mm off in y (and rotated 1 deg about z) scores exactly that."""
    ep = ramp_episode(n=12)
    m = 8
    stamps = np.arange(m, dtype=np.int64) * DT_NS
    target_time = stamps + DT_NS  # the command of a tick is the target one period later
    pos = np.stack([target_time / 1e9, np.full(m, 0.002), np.zeros(m)], axis=1)
    half = np.radians(1.0) / 2
    quat = np.tile([0.0, 0.0, np.sin(half), np.cos(half)], (m, 1))
    is_stop = np.zeros(m, bool)
    is_stop[0] = True  # a stop tick is neither scored nor part of a jerk window
    stream = CommandStream(stamps, pos, quat, np.ones(m), is_stop, np.ones(m, np.int64), ["ok"] * m, [""] * m)
    out = stream_metrics([(stream, [ep])], DT_NS)
    assert out["ticks_commanding"] == out["ticks_scored"] == m - 1 and out["seams"] == 0
    assert out["translation_error_mm"]["mean"] == pytest.approx(2.0) and out["translation_error_mm"]["max"] == pytest.approx(2.0)
    assert out["rotation_error_deg"]["mean"] == pytest.approx(1.0)
    assert out["jerk_rms"] == pytest.approx(0.0, abs=1e-6) and out["jerk_rms_recorded"] == pytest.approx(0.0, abs=1e-6)
    assert out["jerk_rms_seams"] is None  # no seam: no seam window


def test_predictions_concatenate_and_refuse_an_empty_evaluation() -> None:
    n = 2

    def preds(stamp0: int) -> Predictions:
        z = np.zeros((n, K, 3))
        return Predictions(stamp0 + np.arange(n) * DT_NS, DT_NS, np.zeros((n, 3)), np.tile(IDENTITY, (n, 1)), np.ones(n),
                           z, z, np.ones((n, K)), z, z, np.ones((n, K)), np.ones((n, K), bool), np.zeros((n, 0)))

    both = Predictions.concat([preds(0), preds(10 * DT_NS)])
    assert len(both) == 4 and both.dt_ns == DT_NS and both.pred_dp.shape == (4, K, 3)
    assert both.stamps_ns.tolist() == [0, DT_NS, 10 * DT_NS, 11 * DT_NS]
    with pytest.raises(ValueError, match="no frame could be evaluated"):
        Predictions.concat([])
