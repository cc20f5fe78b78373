"""The out-of-distribution monitor (vit_policy/ood.py): fit at the end of training, detection rates on held-out and
corrupted frames, the stop of safety.ood_stop, checkpoints without statistics, fit-ood, and the replay report.

Data: synthetic rosbag2 demonstrations (tests/synthetic.py) with two cameras, the wrist view of a
four-colour marker and a fixed overview. The policy is timm's ``test_vit`` trained for 2 steps: its encoder
is as good as random, so the detection rates here are what the feature statistics alone achieve, not
what a trained encoder adds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vit_policy.config import ConfigError
from vit_policy.data.configuration import DataConfig, GripperConfig
from vit_policy.model.configuration import EncoderConfig, PolicyConfig
from vit_policy.replay import ReplayConfig
from vit_policy.runtime import RuntimeConfig
from vit_policy.safety import SafetyConfig
from vit_policy.train import TrainConfig
from vit_policy.data.bags import extract_episodes
from synthetic import GRIPPER_JOINTS, write_synthetic_dataset
from vit_policy.model.encoders import WeightsError
from vit_policy.model.policy import VisuomotorPolicy
from vit_policy.ood import CORRUPTIONS, OOD_FILE, corrupt, detection_rates, episode_images, format_rates
from vit_policy.runtime import PolicyRunner
from vit_policy.train import train

CAMS = ("front", "overview")
IMG = 64


def data_config() -> DataConfig:
    return DataConfig(cameras={c: f"/camera/{c}/image_raw" for c in CAMS},
                      gripper=GripperConfig(joints=list(GRIPPER_JOINTS), closed=0.0, open=0.08))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """24 training bags (7 of them the validation split), 6 held-out bags, and a 2-step training run on them."""
    root = tmp_path_factory.mktemp("ood")
    kw = dict(duration_s=3.0, image_size=(IMG, IMG), camera_hz=10.0, cameras=CAMS)
    write_synthetic_dataset(root / "bags", 24, **kw)
    write_synthetic_dataset(root / "held_out", 6, seed=100, **kw)
    policy = PolicyConfig(cameras=list(CAMS), encoder=EncoderConfig(name="test_vit", img_size=IMG, token_mode="pooled", num_pooled_tokens=4),
                          d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, chunk_size=4)
    cfg = TrainConfig(policy=policy, data=data_config(), bags=[str(root / "bags" / "*")], val_fraction=0.3,
                      cache_dir=str(root / "cache"), out_dir=str(root / "out"), max_steps=2, batch_size=8, warmup_steps=1,
                      lr_encoder=1e-3, lr_head=1e-3, progress=False, tensorboard=False)
    torch.manual_seed(0)
    result = train(cfg)
    held = [e for b in sorted((root / "held_out").iterdir()) for e in extract_episodes(b, data_config(), 4, (IMG, IMG))]
    return {"root": root, "last": result.last, "best": result.best, "held_out": held}


def test_training_fits_a_monitor_that_flags_corrupted_frames(run: dict) -> None:
    """>= 95% of blacked-out, occluded, shifted or foreign frames above the threshold; >= 95% of held-out frames below."""
    for name in ("last", "best"):
        assert (run[name] / OOD_FILE).is_file()
    policy = VisuomotorPolicy.from_pretrained(run["last"])
    assert policy.ood is not None and list(policy.ood.cameras) == list(CAMS)
    assert len(policy.ood.cameras["front"].val_scores) == 7 * 29 and policy.ood.cameras["front"].n_train == 17 * 29
    rates = detection_rates(policy, policy.ood, episode_images(run["held_out"], CAMS))
    print("\n" + format_rates(rates))
    assert set(rates) == {"in_distribution", *CORRUPTIONS, "foreign"}
    for cam in CAMS:
        assert rates["in_distribution"][cam] <= 0.05, (cam, rates)
        for case in [*CORRUPTIONS, "foreign"]:
            assert rates[case][cam] >= 0.95, (case, cam, rates)


def obs_frames(ep, i: int) -> dict[str, np.ndarray]:
    return {c: ep.images[c][i] for c in CAMS}


def drive(runner: PolicyRunner, ep, i: int, t_ns: int, images: dict[str, np.ndarray] | None = None):
    """Feed frame i of an episode (or replacement images) at t_ns and tick."""
    runner.on_pose(t_ns, ep.position[i], ep.quaternion[i], float(ep.gripper[i]))
    for cam, img in (images or obs_frames(ep, i)).items():
        runner.on_image(cam, t_ns, img)
    return runner.tick(t_ns)


def test_ood_stop_stops_the_arm_while_a_camera_is_out_of_distribution(run: dict) -> None:
    policy = VisuomotorPolicy.from_pretrained(run["last"])
    runtime = RuntimeConfig(synchronous=True, inference_latency_s=0.0, control_rate_hz=10.0)
    runner = PolicyRunner(policy, runtime, SafetyConfig(ood_stop=True, max_step=1.0, max_linear_speed=10.0))
    runner.set_enabled(True)
    ep, t0, dt = run["held_out"][0], 10**12, 100_000_000
    statuses = [drive(runner, ep, i, t0 + i * dt).status for i in range(3)]  # each score below its threshold (checked next)
    assert statuses == ["ok"] * 3, statuses
    d = runner.diagnostics(t0 + 2 * dt)["ood"]
    assert d["monitor"].startswith("on: mahalanobis") and d["stop"] and d["frames_scored"] == 3
    assert all(v["score"] <= v["threshold"] for v in d["cameras"].values()), d
    # the wrist camera goes black: the arm stops, the reason names the camera and its score, its chunk is never run
    black = {"front": np.zeros((IMG, IMG, 3), np.uint8), "overview": ep.images["overview"][3]}
    for i in (3, 4):
        cmd = drive(runner, ep, i, t0 + i * dt, black)
        assert cmd.is_stop and cmd.status == "ood", (cmd.status, cmd.reason)
        assert "camera 'front' out of distribution: OOD score" in cmd.reason and "overview" not in cmd.reason
    d = runner.diagnostics(t0 + 4 * dt)["ood"]
    assert d["cameras"]["front"]["score"] > d["cameras"]["front"]["threshold"] and d["cameras"]["front"]["frames_out"] == 2
    assert d["cameras"]["overview"]["frames_out"] == 0 and "'front'" in d["out"]
    # the camera is back: commanding resumes from a chunk of an in-distribution frame
    cmd = drive(runner, ep, 5, t0 + 5 * dt)
    assert cmd.status == "ok" and not cmd.is_stop and runner.diagnostics()["ood"]["out"] == ""
    # without ood_stop the same frames are scored, counted and executed
    runner = PolicyRunner(policy, runtime, SafetyConfig(max_step=1.0, max_linear_speed=10.0))
    runner.set_enabled(True)
    drive(runner, ep, 0, t0)
    assert drive(runner, ep, 1, t0 + dt, black).status == "ok"
    assert runner.diagnostics()["ood"]["cameras"]["front"]["frames_out"] == 1 and not runner.diagnostics()["ood"]["stop"]


def test_checkpoint_without_stats_runs_with_the_monitor_off_and_fit_ood_fits_it(run: dict, tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture) -> None:
    from vit_policy.cli import main

    old = tmp_path / "old"
    shutil.copytree(run["last"], old)
    (old / OOD_FILE).unlink()  # a checkpoint from before the monitor
    policy = VisuomotorPolicy.from_pretrained(old)
    assert policy.ood is None
    runner = PolicyRunner(policy, RuntimeConfig(synchronous=True, inference_latency_s=0.0), SafetyConfig())
    runner.set_enabled(True)
    ep = run["held_out"][0]
    assert drive(runner, ep, 0, 10**12).status == "ok" and policy.predict(ep_obs(ep)).ood is None
    assert runner.diagnostics()["ood"] == {"monitor": "off: the checkpoint has no OOD statistics (vit-policy fit-ood fits them)", "stop": False}
    with pytest.raises(ConfigError, match="safety.ood_stop: true, but the checkpoint has no OOD statistics.*fit-ood"):
        PolicyRunner(policy, RuntimeConfig(), SafetyConfig(ood_stop=True))
    # fit-ood on the training bags (the data config comes from the checkpoint's metadata.json)
    bags = str(run["root"] / "bags" / "*")
    assert main(["fit-ood", "--checkpoint", str(old), "--bags", bags, "--quantile", "1.5"]) == 2
    assert "--quantile: 1.5 must be in (0, 1]" in capsys.readouterr().err
    assert main(["fit-ood", "--checkpoint", str(old), "--bags", str(tmp_path / "none*")]) == 2
    assert "matches no bag" in capsys.readouterr().err
    assert main(["fit-ood", "--checkpoint", str(old), "--bags", bags, "--val-fraction", "0.3"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {OOD_FILE}" in out and "self-check on the validation frames" in out and "blacked_out" in out, out
    fitted = VisuomotorPolicy.from_pretrained(old)
    assert fitted.ood is not None and fitted.ood.describe().startswith("on: mahalanobis")
    chunk = fitted.predict(ep_obs(ep))
    assert set(chunk.ood) == set(CAMS) and all(np.isfinite(v) for v in chunk.ood.values())
    # the same split as training: the same statistics as the ones training wrote
    trained = VisuomotorPolicy.from_pretrained(run["last"]).ood
    for cam in CAMS:
        np.testing.assert_allclose(fitted.ood.cameras[cam].threshold, trained.cameras[cam].threshold, rtol=1e-6)


def ep_obs(ep, i: int = 0):
    from vit_policy.observation import Observation

    return Observation(int(ep.stamps_ns[i]), obs_frames(ep, i), ep.position[i], ep.quaternion[i], float(ep.gripper[i]))


def test_statistics_of_other_weights_are_refused(run: dict, tmp_path: Path) -> None:
    policy = VisuomotorPolicy.from_pretrained(run["last"])
    with torch.no_grad():
        next(policy.encoders.parameters()).add_(0.01)  # fine-tuned after the fit
    policy.save_pretrained(tmp_path / "tuned")
    assert not (tmp_path / "tuned" / OOD_FILE).exists()  # stale statistics are not written beside new weights
    shutil.copy(run["last"] / OOD_FILE, tmp_path / "tuned" / OOD_FILE)  # ... nor accepted when copied there
    with pytest.raises(WeightsError, match="fitted with other encoder weights.*fit-ood"):
        VisuomotorPolicy.from_pretrained(tmp_path / "tuned")
    (tmp_path / "tuned" / OOD_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(WeightsError, match="ood.safetensors.*truncated.*fit-ood"):
        VisuomotorPolicy.from_pretrained(tmp_path / "tuned")
    with pytest.raises(ConfigError, match="safety.ood_margin"):
        SafetyConfig(ood_margin=0.0)
    with pytest.raises(ConfigError, match="ood_quantile: 1.5"):
        TrainConfig(bags=["x"], ood_quantile=1.5)
    with pytest.raises(ValueError, match="corruption 'smudge'"):
        corrupt(np.zeros((1, 8, 8, 3), np.uint8), "smudge", np.random.default_rng(0))


def test_replay_reports_the_ood_score(run: dict, tmp_path: Path) -> None:
    from vit_policy.replay import replay_policies

    policy = VisuomotorPolicy.from_pretrained(run["last"])
    cfg = ReplayConfig(data=data_config(), runtime=RuntimeConfig(inference_latency_s=0.0), safety=SafetyConfig(ood_stop=True),
                       attention_frames=0)
    bag = sorted((run["root"] / "held_out").iterdir())[0]
    result = replay_policies({"ckpt": policy}, [bag], tmp_path, cfg)[0]
    for mode in ("batch", "faithful"):
        ood = result.metrics[mode]["ood"]
        assert ood["monitor"].startswith("on: mahalanobis") and set(ood["cameras"]) == set(CAMS)
        assert ood["fraction_out"] <= 0.05 and 0 < ood["p99_over_threshold"]
        assert ood["cameras"]["front"]["threshold"] == pytest.approx(policy.ood.thresholds["front"])
    assert result.metrics["faithful"]["frames_lost"]["ood"] <= 1  # an in-distribution bag hardly ever stops
    page = (tmp_path / "report.html").read_text()
    assert "Out-of-distribution monitor: on: mahalanobis" in page and "frames out of distribution (any camera)" in page
    assert list((tmp_path / "plots").glob("ood_ckpt_*_batch.png"))


def test_the_monitor_runs_on_the_onnxruntime_backend_as_on_torch(run: dict, tmp_path: Path) -> None:
    """The exported graph returns each camera's pooled features: OnnxPolicy scores them with the checkpoint's
    statistics (the same scores as torch), and safety.ood_stop stops the arm on onnxruntime too."""
    from vit_policy.deploy import OnnxPolicy, export_policy

    report = export_policy(run["last"], tmp_path / "onnx", [sorted((run["root"] / "held_out").iterdir())[0]], frames=8)
    print(f"\nexport check: OOD score difference to torch {report['fp32']['ood_score_abs_max']:.2e}")
    assert report["fp32"]["ood_score_abs_max"] < 1e-3, report
    assert (tmp_path / "onnx" / OOD_FILE).is_file()  # copied beside the graph
    torch_policy, ort_policy = VisuomotorPolicy.from_pretrained(run["last"]), OnnxPolicy(tmp_path / "onnx")
    assert ort_policy.ood is not None and ort_policy.ood.thresholds == torch_policy.ood.thresholds
    ep = run["held_out"][1]
    black = {"front": np.zeros((IMG, IMG, 3), np.uint8), "overview": ep.images["overview"][0]}
    for images in (obs_frames(ep, 0), black):
        obs = ep_obs(ep)
        obs.images = images
        got, want = ort_policy.predict(obs).ood, torch_policy.predict(obs).ood
        assert set(got) == set(CAMS)
        for cam in CAMS:
            assert got[cam] == pytest.approx(want[cam], rel=1e-3, abs=1e-3), (cam, got, want)
    assert got["front"] > ort_policy.ood.thresholds["front"]  # the blacked-out wrist camera
    runtime = RuntimeConfig(synchronous=True, inference_latency_s=0.0, backend="onnxruntime")
    runner = PolicyRunner(ort_policy, runtime, SafetyConfig(ood_stop=True, max_step=1.0, max_linear_speed=10.0))
    runner.set_enabled(True)
    t0, dt = 10**12, 100_000_000
    assert drive(runner, ep, 0, t0).status == "ok"
    cmd = drive(runner, ep, 1, t0 + dt, black)
    assert cmd.is_stop and cmd.status == "ood" and "camera 'front' out of distribution" in cmd.reason
