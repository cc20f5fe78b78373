"""Closed-loop evaluation through PolicyRunner: plumbing, statistics, GIFs and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim_tests.closed_loop import RunnerController, evaluate_expert, evaluate_policy, evaluate_random, wilson_interval
from sim_tests.configuration import SimConfig
from vit_policy.cli import main
from vit_policy.config import ConfigError
from vit_policy.model.configuration import EncoderConfig, PolicyConfig
from vit_policy.model.policy import VisuomotorPolicy, identity_stats


def _tiny_policy(cameras: list[str], control_dt: float = 0.04) -> VisuomotorPolicy:
    cfg = PolicyConfig(cameras=cameras, encoder=EncoderConfig(name="test_vit", img_size=32, token_mode="pooled"),
                       d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, chunk_size=4, control_dt=control_dt)
    policy = VisuomotorPolicy.from_config(cfg).eval()
    policy.set_stats(identity_stats(cfg))
    return policy


def test_wilson_interval_matches_known_values() -> None:
    lo, hi = wilson_interval(10, 20)
    assert lo == pytest.approx(0.2993, abs=1e-4) and hi == pytest.approx(0.7007, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    lo, hi = wilson_interval(20, 20)
    assert lo == pytest.approx(0.8389, abs=1e-4) and hi == 1.0


def test_untrained_policy_runs_through_the_runner_safely(tmp_path: Path) -> None:
    """Random weights: every tick is a finite, workspace-bounded command; a GIF per episode is written."""
    cfg = SimConfig(task="FetchReach-v4", image_size=32, episode_steps=12)
    policy = _tiny_policy(["external"])
    report = evaluate_policy(policy, cfg, episodes=2, seed=5, out_dir=tmp_path, gifs=2)
    assert len(report.episodes) == 2
    for ep in report.episodes:
        assert ep.non_finite_commands == 0 and ep.steps == 12
        assert ep.statuses.get("ok", 0) == 12  # synchronous runner: a chunk from the very first tick
        import imageio.v2 as imageio

        frames = imageio.mimread(ep.gif)
        assert len(frames) == 13 and frames[0].shape[:2] == (64, 64)  # reset + 12 steps, 2x upscaled
    saved = json.loads((tmp_path / "sim_eval.json").read_text())
    assert saved["episodes"] == 2 and saved["task"] == "FetchReach-v4" and len(saved["per_episode"]) == 2
    assert 0.0 <= saved["wilson95"][0] <= saved["success_rate"] <= saved["wilson95"][1] <= 1.0


def test_runner_commands_stay_in_the_safety_workspace() -> None:
    cfg = SimConfig(task="FetchReach-v4", image_size=32, episode_steps=10)
    policy = _tiny_policy(["external"])
    policy.set_stats(identity_stats(policy.cfg))
    from sim_tests.fetch_env import FetchSim

    sim = FetchSim(cfg)
    ctl = RunnerController(policy, cfg)
    ctl.reset()
    frame = sim.reset(seed=0)
    lo, hi = np.array(cfg.safety.workspace_min), np.array(cfg.safety.workspace_max)
    for _ in range(10):
        cmd = ctl.command(frame)
        assert cmd.is_finite() and np.all(cmd.target_position >= lo - 1e-9) and np.all(cmd.target_position <= hi + 1e-9)
        assert np.linalg.norm(cmd.target_position - frame.position) <= cfg.safety.max_step + 1e-6
        frame = sim.step(cmd)
    ctl.close()
    sim.close()
    assert ctl.runner.inferences >= 1


def test_mismatched_cameras_and_rates_are_config_errors() -> None:
    cfg = SimConfig(task="FetchReach-v4", image_size=32)
    with pytest.raises(ConfigError, match=r"sim.cameras \(name: MuJoCo camera\): the checkpoint needs camera\(s\) \['head'\]"):
        RunnerController(_tiny_policy(["head"]), cfg)
    slow = SimConfig(task="FetchReach-v4", image_size=32)
    slow.runtime.control_rate_hz = 10.0
    with pytest.raises(ConfigError, match="runtime.control_rate_hz: 10.0 Hz.*set it to 25"):
        RunnerController(_tiny_policy(["external"]), slow)


def test_expert_and_random_baselines() -> None:
    cfg = SimConfig(task="FetchPush-v4", image_size=32, episode_steps=50)
    assert evaluate_expert(cfg, episodes=5, seed=50).successes == 5
    rand = evaluate_random(cfg, episodes=5, seed=50)
    assert rand.successes <= 1 and all(e.time_to_success_s is None or e.time_to_success_s > 0 for e in rand.episodes)


def test_cli_sim_record_and_sim_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim-record", "--task", "FetchReach-v4", "--episodes", "2", "--out", str(tmp_path / "demos"),
                 "image_size=32", "episode_steps=8"]) == 0
    assert sorted(p.name for p in (tmp_path / "demos").iterdir()) == ["demos.yaml", "episode_000", "episode_001"]
    assert main(["sim-eval", "--baseline", "expert", "--task", "FetchReach-v4", "--episodes", "3", "--gifs", "1",
                 "--out", str(tmp_path / "eval"), "image_size=32", "episode_steps=20"]) == 0
    out = capsys.readouterr().out
    assert "FetchReach-v4 / expert: 3/3 = 100%" in out and "Wilson 95%" in out
    assert len(list((tmp_path / "eval" / "gifs").glob("*.gif"))) == 1
    # bad input: a clear message and exit code 2, no traceback
    assert main(["sim-eval", "--task", "FetchReach-v4", "--episodes", "1"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["sim-eval", "--checkpoint", str(tmp_path / "nope"), "--task", "FetchReach-v4"]) == 2
    assert "does not exist" in capsys.readouterr().err
