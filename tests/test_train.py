"""Training on synthetic rosbag2 demonstrations: learning, exact resume, torchrun DDP, the CLI.

The bags are real rosbag2 files from ``tests/synthetic.py``; the encoder is a real timm ViT
(``test_vit``: timm's 6-block, 64-wide ViT, so that a CPU learns the task in about a minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vit_policy.config import ConfigError, to_dict
from vit_policy.data.configuration import AugmentConfig, DataConfig, GripperConfig
from vit_policy.model.configuration import EncoderConfig, PolicyConfig
from vit_policy.train import TrainConfig, load_train_config
from synthetic import GRIPPER_JOINTS, write_synthetic_dataset
from vit_policy.model.policy import VisuomotorPolicy
from vit_policy.observation import Observation
from vit_policy.train import STATE_FILE, train

REPO = Path(__file__).resolve().parent.parent


def train_config(bags: Path, tmp: Path, img: int = 32, chunk: int = 4, **kw) -> TrainConfig:
    policy = PolicyConfig(
        cameras=["front"], encoder=EncoderConfig(name="test_vit", img_size=img, token_mode="pooled", num_pooled_tokens=4),
        d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, chunk_size=chunk, dropout=0.1,
    )
    data = DataConfig(cameras={"front": "/camera/front/image_raw"}, gripper=GripperConfig(joints=list(GRIPPER_JOINTS), closed=0.0, open=0.08))
    base = dict(policy=policy, data=data, bags=[str(bags / "*")], val_fraction=0.25, cache_dir=str(tmp / "cache"), out_dir=str(tmp / "out"),
                epochs=2, batch_size=8, lr_encoder=1e-3, lr_head=1e-3, warmup_steps=2, progress=False, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def small_bags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small")
    write_synthetic_dataset(root / "bags", 4, duration_s=1.5, image_size=(32, 32), camera_hz=10.0)  # one frame per control period
    return root / "bags"


def test_resume_matches_uninterrupted_run(small_bags: Path, tmp_path: Path) -> None:
    """3 steps, stop, resume 3 steps == 6 steps straight: weights, optimiser, EMA, schedule and RNG."""
    common = dict(max_steps=6, ema=0.9, augment=AugmentConfig(shift_px=2, brightness=0.2), cache_dir=str(tmp_path / "cache"))
    straight = train(train_config(small_bags, tmp_path / "a", **common))
    assert straight.step == 6
    first = train(train_config(small_bags, tmp_path / "b", **common), stop_at_step=3)
    assert first.step == 3 and (tmp_path / "b/out/last" / STATE_FILE).is_file()
    mid = torch.load(tmp_path / "b/out/last" / STATE_FILE, weights_only=True)
    resumed = train(train_config(small_bags, tmp_path / "b", resume="auto", **common))
    assert resumed.step == 6
    a = torch.load(tmp_path / "a/out/last" / STATE_FILE, weights_only=True)
    b = torch.load(tmp_path / "b/out/last" / STATE_FILE, weights_only=True)
    assert a["step"] == b["step"] == 6 and a["scheduler"] == b["scheduler"]
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=0, atol=1e-7, msg=key)
        torch.testing.assert_close(b["ema"][key], a["ema"][key], rtol=0, atol=1e-7, msg=key)
    assert any(not torch.equal(mid["model"][k], a["model"][k]) for k in a["model"])  # the second half did train
    # the checkpoint holds the EMA weights and loads for inference
    policy = VisuomotorPolicy.from_pretrained(tmp_path / "b/out/last")
    for key, value in policy.state_dict().items():
        torch.testing.assert_close(value, b["ema"][key], rtol=0, atol=0)


def test_resume_rejects_a_directory_without_state(small_bags: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="trainer_state.pt"):
        train(train_config(small_bags, tmp_path, resume=str(tmp_path / "nothing")))


@pytest.mark.slow
def test_training_beats_the_mean_action(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The policy must read the target from the image: 3x below the mean-action predictor's loss."""
    root = tmp_path_factory.mktemp("learn")
    write_synthetic_dataset(root / "bags", 30, duration_s=3.0, image_size=(64, 64), camera_hz=10.0)  # one frame per control period
    cfg = train_config(root / "bags", root, img=64, chunk=8, epochs=4, batch_size=16, lr_encoder=1e-3, lr_head=1e-3, warmup_steps=10,
                       val_fraction=0.2, tensorboard=True)
    cfg.policy.d_model, cfg.policy.n_heads, cfg.policy.dropout = 64, 4, 0.0
    torch.manual_seed(0)
    result = train(cfg)
    final = result.history[-1]
    print({k: round(v, 4) for k, v in final.items()})
    assert final["val/loss"] * 3 <= final["val/baseline_loss"], final
    assert final["val/err_x_mm"] < 3.0 and final["val/err_y_mm"] < 3.0  # read from the wrist image
    # best / last are loadable checkpoints that act on an Observation
    best = VisuomotorPolicy.from_pretrained(result.best)
    meta = json.loads((result.best / "metadata.json").read_text())
    assert meta["metrics"]["val/loss"] == min(h["val/loss"] for h in result.history)
    assert len(meta["val_episodes"]) == 6 and not set(meta["val_episodes"]) & set(meta["train_episodes"])
    assert meta["data"]["cameras"] == cfg.data.cameras  # the topic map travels with the checkpoint (replay reads it)
    obs = Observation(1, {"front": np.zeros((64, 64, 3), np.uint8)}, np.array([0.45, 0.0, 0.3]), np.array([1.0, 0, 0, 0]), 1.0)
    chunk = best.predict(obs)
    assert len(chunk) == 8 and chunk.is_finite()
    assert list((root / "out" / "tb").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_torchrun_ddp_shards_and_rank0_writes(small_bags: Path, tmp_path: Path) -> None:
    """Two gloo processes through the CLI: half the steps per epoch each, one checkpoint, resumable config."""
    cfg = train_config(small_bags, tmp_path, epochs=2, batch_size=4, val_fraction=0.25)
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vit_policy.cli", "train", "--config", str(cfg_path), "--threads", "1", "epochs=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((tmp_path / "out/last/metadata.json").read_text())
    assert meta["world_size"] == 2 and len(meta["train_episodes"]) == 3
    lengths = {d.name.rsplit("-", 1)[0]: json.loads((d / "meta.json").read_text())["episodes"][0]["length"] for d in (tmp_path / "cache").iterdir()}
    samples = sum(lengths[Path(s).name] for s in meta["train_episodes"])
    steps_per_epoch = -(-samples // (4 * 2))  # each rank takes every other batch of the epoch
    assert meta["step"] == 2 * steps_per_epoch, (meta["step"], samples)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best", "last", "tb", "train_config.yaml"]
    VisuomotorPolicy.from_pretrained(tmp_path / "out/last")
    assert "trained" in proc.stdout


def test_cli_train_and_config_errors(small_bags: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vit_policy.cli import main

    cfg = train_config(small_bags, tmp_path, max_steps=2)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert main(["train", "--config", str(path), "batch_size=4"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    run = tmp_path / "out"  # the run's folder where its best/ or last/ belongs: named as such, with the folders to pass
    bag = str(next(small_bags.iterdir()))
    assert main(["replay", "--checkpoint", str(run), "--bags", bag, "--out", str(tmp_path / "replay")]) == 2
    assert f"is a training run's folder, not a checkpoint: pass {run / 'best'} or {run / 'last'}" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="training run's folder, not a checkpoint"):
        VisuomotorPolicy.from_pretrained(run)
    assert main(["train", "--config", str(path), "bach_size=4"]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err
    assert main(["train", "--config", str(path), "data.control_rate_hz=25"]) == 2
    assert "control_dt" in capsys.readouterr().err
    assert main(["train", "--config", str(path), f"bags=[{tmp_path / 'none*'}]"]) == 2
    assert "matches no bag" in capsys.readouterr().err


def test_bag_globs_skip_files_that_are_not_bags(small_bags: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`dir/*` over recordings with a manifest beside them (sim-record's demos.yaml, a README) takes the bags and
    names what it skipped; a pattern that only finds such files is still an error."""
    from vit_policy.train import expand_bags

    folder = tmp_path / "demos"
    folder.mkdir()
    bags = sorted(small_bags.iterdir())
    for b in bags:
        (folder / b.name).symlink_to(b, target_is_directory=True)
    (folder / "demos.yaml").write_text("episodes: []\n")
    (folder / "notes.txt").write_text("recorded on the left arm\n")
    with caplog.at_level("WARNING"):
        got = expand_bags([f"{folder}/*"])
    assert [p.name for p in got] == [b.name for b in bags]
    assert "demos.yaml" in caplog.text and "notes.txt" in caplog.text
    with pytest.raises(FileNotFoundError, match="matches no bag"):
        expand_bags([f"{folder}/*.yaml"])


@pytest.mark.parametrize("name", ["real_two_cameras.yaml", "sim_fetch.yaml"])
def test_example_configs_load(name: str) -> None:
    cfg = load_train_config(REPO / "configs/train" / name)
    assert set(cfg.policy.cameras) <= set(cfg.data.cameras)
    if name == "real_two_cameras.yaml":
        assert len(cfg.data.cameras) == 2 and cfg.data.pose_topic is None and cfg.data.gripper.kind == "joint_state"
    with pytest.raises(ConfigError, match="unknown config key 'data.gripper.joint'"):
        load_train_config(REPO / "configs/train" / name, ["data.gripper.joint=[a]"])


def test_exponent_overrides_are_numbers() -> None:
    """PyYAML (YAML 1.1) reads `1e-4` as a string; a float field takes it as the number a user meant."""
    cfg = load_train_config(REPO / "configs/train/sim_fetch.yaml", ["lr_encoder=1e-4", "lr_head=2.5E-3", "weight_decay=1e-2"])
    assert (cfg.lr_encoder, cfg.lr_head, cfg.weight_decay) == (1e-4, 2.5e-3, 1e-2)
    with pytest.raises(ConfigError, match="lr_encoder: expected a number, got 'fast'"):
        load_train_config(REPO / "configs/train/sim_fetch.yaml", ["lr_encoder=fast"])
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        load_train_config(REPO / "configs/train/sim_fetch.yaml", ["epochs=1e3"])  # an integer field stays strict


def test_sim_fetch_config_reads_what_the_simulator_records() -> None:
    """configs/train/sim_fetch.yaml's topic map is the one sim_tests.record uses for FetchReach bags."""
    from sim_tests.closed_loop import load_task_config
    from sim_tests.record import data_config_for

    cfg = load_train_config(REPO / "configs/train/sim_fetch.yaml")
    assert cfg.data == data_config_for(load_task_config("FetchReach-v4", None), labels="command")


def test_the_checkpoint_owns_its_observation_spec_and_settings_are_checked_against_it(small_bags: Path, tmp_path: Path) -> None:
    """Training writes what the policy was trained to see (cameras, period, chunk, frame, gripper range) into the
    checkpoint; the runner (node, simulator), replay and ONNX loader read it, and a node, data config or older
    checkpoint that disagrees fails at load naming both values and the fix."""
    from ros_nodes.configuration import NodeConfig
    from vit_policy.inputs import InputSpec
    from vit_policy.model.checkpoint import load_checkpoint
    from vit_policy.replay.evaluation import _check_policy
    from vit_policy.runtime import PolicyRunner, RuntimeConfig
    from vit_policy.safety import SafetyConfig

    cfg = train_config(small_bags, tmp_path, max_steps=2, ood_quantile=None)
    train(cfg)
    ckpt = tmp_path / "out" / "last"
    meta = json.loads((ckpt / "metadata.json").read_text())
    assert meta["observation"] == {"cameras": ["front"], "image_size": 32, "control_dt_ns": 100_000_000, "chunk_size": 4,
                                   "pose_history": 0, "base_frame": "base_link", "gripper_joints": list(GRIPPER_JOINTS),
                                   "gripper_range": [0.0, 0.08]}
    policy = load_checkpoint(ckpt)
    assert policy.spec == cfg.observation_spec

    def runner(**node: object) -> PolicyRunner:
        inputs = InputSpec.from_node(NodeConfig(checkpoint=str(ckpt), **node), list(policy.spec.cameras))  # type: ignore[arg-type]
        return PolicyRunner(policy, RuntimeConfig(synchronous=True), SafetyConfig(), inputs=inputs)

    runner(gripper_joints=list(GRIPPER_JOINTS), gripper_open=0.08)  # as recorded
    with pytest.raises(ConfigError, match=r"gripper_joints: none set, so the gripper input would be a constant 1.0 .*set gripper_joints: \["):
        runner()  # no gripper feedback for a checkpoint trained on one: a made-up input, refused at configure
    with pytest.raises(ConfigError, match=r"gripper_closed / gripper_open: \(closed, open\) \(0.0, 0.1\).*mapped \(0.0, 0.08\).*set them to 0 and 0.08"):
        runner(gripper_joints=list(GRIPPER_JOINTS), gripper_open=0.1)
    with pytest.raises(ConfigError, match=r"gripper_joints: \['left'\], but the checkpoint read the gripper from"):
        runner(gripper_joints=["left"], gripper_open=0.08)
    with pytest.raises(ConfigError, match=r"base_frame: 'world', but .* recorded in 'base_link'; set base_frame: base_link"):
        runner(base_frame="world")

    wide = DataConfig(cameras=dict(cfg.data.cameras), gripper=GripperConfig(joints=list(GRIPPER_JOINTS), closed=0.0, open=0.1))
    _check_policy("last", policy, cfg.data)
    with pytest.raises(ConfigError, match=r"checkpoint 'last': data.gripper.closed / open: .*0.1"):
        _check_policy("last", policy, wide)

    # a checkpoint saved before the spec existed: frame and range from its recorded data config, else unknown
    del meta["observation"]
    (ckpt / "metadata.json").write_text(json.dumps(meta))
    assert load_checkpoint(ckpt).spec == policy.spec
    del meta["data"]
    (ckpt / "metadata.json").write_text(json.dumps(meta))
    old = load_checkpoint(ckpt)
    assert old.spec.gripper_range is None and old.spec.base_frame is None and old.spec.control_dt_ns == policy.spec.control_dt_ns
    # a metadata.json from another save than config.yaml
    meta["observation"] = {**policy.spec.to_dict(), "chunk_size": 8}
    (ckpt / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"metadata.json.*observation.chunk_size: 8 in metadata.json, 4 in config.yaml"):
        load_checkpoint(ckpt)


def test_pretrain_command_learns_from_the_bags_alone_and_training_starts_from_it(small_bags: Path, tmp_path: Path,
                                                                                   capsys: pytest.CaptureFixture) -> None:
    """vit-policy pretrain: the training config's own bags, labelled in hindsight (EE, where each demonstration ended),
    give a backbone + point head that a policy with points.count=2 loads and trains from."""
    from safetensors import safe_open

    from vit_policy.cli import main
    from vit_policy.model.checkpoint import build_policy

    cfg = train_config(small_bags, tmp_path, max_steps=2, ood_quantile=None)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    enc = tmp_path / "enc.safetensors"
    assert main(["pretrain", "--config", str(path), "--points", "ee", "end", "--steps", "3", "--batch-size", "8", "--out", str(enc)]) == 0
    out = capsys.readouterr().out
    assert "encoder pretraining: 3 steps" in out and f"policy.encoder.weights={enc}" in out and "policy.points.count=2" in out
    with safe_open(str(enc), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["points"]) == ["ee", "end"] and json.loads(meta["cameras"]) == ["front"]
    raw = to_dict(cfg.policy)
    raw["encoder"].update(token_mode="patches", weights=str(enc), freeze="all")
    policy = build_policy({**raw, "points": {"count": 2, "frame": "ee"}})  # ee frame: needs the file's point statistics
    assert policy.point_head is not None and policy.point_mean.shape == (2, 3)
    assert main(["pretrain", "--config", str(path), "--points", "grasp", "--steps", "1", "--out", str(tmp_path / "g.safetensors"),
                 "batch_size=4"]) == 0
    assert f"train on it: vit-policy train --config {path} batch_size=4 policy.encoder.weights=" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--config", str(path), "--points", "goal", "--out", str(tmp_path / "x.safetensors")])
    assert exit_.value.code == 2 and "invalid choice: 'goal'" in capsys.readouterr().err


def test_points_loss_keeps_the_point_head_on_its_hindsight_labels(small_bags: Path, tmp_path: Path) -> None:
    """points_loss: the point head trains on the hindsight labels of the points its pretraining file names (here
    ee and end) beside the action loss, so its point error on the training frames falls well below where it
    started and below that of the same run without it (3 training episodes: this measures the loss being
    optimised, not generalisation); without a pretrained point head the setting fails at load."""
    from dataclasses import replace

    from torch.utils.data import DataLoader

    from vit_policy.model.configuration import PointTokenConfig
    from vit_policy.pretrain import hindsight_points, pretrain_encoder, pretrain_on_demonstrations
    from vit_policy.train import Trainer

    cfg = train_config(small_bags, tmp_path, ood_quantile=None)
    enc = tmp_path / "enc.safetensors"
    pretrain_on_demonstrations(cfg, ["ee", "end"], enc, steps=2, batch_size=8)
    policy = replace(cfg.policy, encoder=replace(cfg.policy.encoder, token_mode="patches", weights=str(enc), freeze="none"),
                     points=PointTokenConfig(count=2, frame="ee"))
    common = dict(policy=policy, max_steps=60, ood_quantile=None, cache_dir=str(tmp_path / "cache"))
    probe = Trainer(train_config(small_bags, tmp_path / "probe", points_loss=1.0, **common))  # the frames with their labels
    frames = DataLoader(probe.loader.dataset, batch_size=16)

    @torch.no_grad()
    def point_error(model: VisuomotorPolicy) -> float:
        model.eval()
        return float(np.mean([model.point_loss(model(b)["points"], b).item() for b in frames]))

    start = point_error(probe.policy)
    runs = {w: train(train_config(small_bags, tmp_path / str(w), points_loss=w, **common)) for w in (0.0, 1.0)}
    error = {w: point_error(VisuomotorPolicy.from_pretrained(r.last)) for w, r in runs.items()}
    assert error[1.0] < 0.5 * start and error[1.0] < 0.5 * error[0.0], (start, error)
    assert "val/points_loss" in runs[1.0].history[-1] and "val/points_loss" not in runs[0.0].history[-1]
    with pytest.raises(ConfigError, match="points_loss: needs a pretrained point head"):
        train_config(small_bags, tmp_path, points_loss=1.0)
    images, targets = hindsight_points(probe.train_eps, ["ee"])  # a file whose point the bags cannot label (sim-pretrain's goal)
    goal = tmp_path / "goal.safetensors"
    pretrain_encoder(policy.encoder, {"front": images["front"]}, targets, ["goal"], goal, steps=1, batch_size=8)
    other = replace(policy, encoder=replace(policy.encoder, weights=str(goal)), points=PointTokenConfig(count=1, frame="ee"))
    with pytest.raises(ConfigError, match=r"points_loss: '.*goal.safetensors' was pretrained on points \['goal'\], which the bags cannot label"):
        Trainer(train_config(small_bags, tmp_path / "goal", points_loss=1.0, **{**common, "policy": other}))
