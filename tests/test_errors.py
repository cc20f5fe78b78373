"""User-facing errors of the `vit-policy` command: one line on stderr naming the path, the cause and the fix,
exit code 2, no traceback (unless --debug). Each case runs the real CLI in a subprocess on a real broken input."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vit_policy.config import to_dict
from vit_policy.data.configuration import DataConfig, GripperConfig
from vit_policy.model.configuration import EncoderConfig, PolicyConfig
from synthetic import GRIPPER_JOINTS, write_synthetic_bag
from vit_policy.model.policy import VisuomotorPolicy, identity_stats

ROOT = Path(__file__).resolve().parent.parent
DT = 0.1


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_policy.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def one_line_error(res: subprocess.CompletedProcess) -> str:
    """The single stderr line of a user error (exit code 2, no traceback)."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A valid tiny checkpoint (timm's test_vit, random init), a data YAML for it and a real recorded bag."""
    root = tmp_path_factory.mktemp("errors")
    cfg = PolicyConfig(cameras=["front"], encoder=EncoderConfig(name="test_vit", img_size=32), d_model=32, n_heads=2,
                       n_encoder_layers=1, n_decoder_layers=1, chunk_size=4, control_dt=DT)
    policy = VisuomotorPolicy.from_config(cfg)
    policy.set_stats(identity_stats(cfg))
    ckpt = policy.save_pretrained(root / "ckpt")
    data = DataConfig(cameras={"front": "/camera/front/image_raw"}, pose_topic="/ee_pose",
                      gripper=GripperConfig(joints=list(GRIPPER_JOINTS)), control_rate_hz=1 / DT)
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(to_dict(data)))
    bag = write_synthetic_bag(root / "bag", image_size=(32, 32), duration_s=0.3, seed=0).path
    return {"root": root, "ckpt": ckpt, "data_yaml": data_yaml, "bag": Path(bag)}


def copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def replay(ckpt: Path, bag: Path, setup: dict[str, Path], out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli(*extra, "replay", "--checkpoint", str(ckpt), "--bags", str(bag), "--out", str(out),
               "--data-config", str(setup["data_yaml"]), "--mode", "batch", "--latency-ms", "0", "--threads", "1")


def test_truncated_model_safetensors_is_one_line_with_path_cause_and_fix(setup: dict[str, Path], tmp_path: Path) -> None:
    ckpt = copy_checkpoint(setup["ckpt"], tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    full = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: full - 1000])  # a copy cut short
    line = one_line_error(replay(ckpt, setup["bag"], setup, tmp_path / "out"))
    assert str(weights) in line
    assert f"truncated: header says {full} bytes, file has {full - 1000}" in line
    assert "copy the checkpoint directory" in line and "export it again" in line
    assert not (tmp_path / "out").exists()

    # --debug: the traceback instead of the one line
    res = cli("replay", "--checkpoint", str(ckpt), "--bags", str(setup["bag"]), "--out", str(tmp_path / "out"),
              "--data-config", str(setup["data_yaml"]), "--debug")
    assert res.returncode == 1, res.stderr
    assert "Traceback (most recent call last)" in res.stderr and "WeightsError" in res.stderr and "truncated" in res.stderr


def test_debug_is_global_before_or_after_the_subcommand() -> None:
    from vit_policy.cli import build_parser

    parser = build_parser()
    base = ["replay", "--checkpoint", "c", "--bags", "b", "--out", "o"]
    assert parser.parse_args(["--debug", *base]).debug and parser.parse_args([*base, "--debug"]).debug
    assert not parser.parse_args(base).debug
    assert "--debug" in parser.format_help() and "traceback" in parser.format_help()


def test_overrides_may_follow_options(capsys: pytest.CaptureFixture) -> None:
    """`train --config X a=1 --threads 1 b=2`: argparse alone stops the overrides at --threads and rejects b=2."""
    from vit_policy.cli import parse

    args = parse(["train", "--config", "x.yaml", "bags=[a]", "--threads", "1", "max_steps=4"])
    assert args.overrides == ["bags=[a]", "max_steps=4"] and args.threads == 1
    with pytest.raises(SystemExit):
        parse(["train", "--config", "x.yaml", "a=1", "--threads", "1", "stray"])  # not KEY=VALUE: still refused
    assert "unrecognized arguments: stray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["inspect", "bag", "--data-config", "d.yaml", "a=1"])  # a command without overrides takes none
    assert "unrecognized arguments: a=1" in capsys.readouterr().err


def test_refused_pickle_says_not_loaded_and_how_to_convert(tmp_path: Path) -> None:
    pt = tmp_path / "encoder weights.pt"  # a training checkpoint that pickled its argparse arguments, a space in the name
    state = {"patch_embed.proj.weight": torch.randn(4, 3, 2, 2), "norm.bias": torch.zeros(4)}
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, pt)
    line = one_line_error(cli("policy-demo", "--config", "configs/policy/vit_tiny.yaml", "--repeats", "1",
                              "encoder.name=test_vit", "encoder.img_size=32", f"encoder.weights={pt}"))
    assert repr(str(pt)) in line
    assert "was NOT loaded" in line and "unpickling can run arbitrary code" in line and "argparse.Namespace" in line
    # not torch's advice (rerun with weights_only=False, allowlist globals) as a general fix
    for advice in ("rerun", "Re-running", "add_safe_globals", "weights_only` set to", "will likely succeed"):
        assert advice not in line
    assert "Only if you trust" in line
    # the command it gives converts the file: one shell line, python -c <code>; run the code as printed
    command = shlex.split(line.split("instead: ", 1)[1])
    assert command[:2] == ["python", "-c"] and len(command) == 3
    exec(command[2], {})
    from safetensors.torch import load_file

    converted = load_file(str(pt.with_suffix(".safetensors")))
    assert set(converted) == set(state) and all(torch.equal(converted[k], state[k]) for k in state)


def test_bag_without_metadata_yaml_names_the_path_and_reindex(setup: dict[str, Path], tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    copy_checkpoint(setup["bag"], bag)  # the recording (its .db3) without its metadata.yaml
    (bag / "metadata.yaml").unlink()
    line = one_line_error(replay(setup["ckpt"], bag, setup, tmp_path / "out"))
    assert repr(str(bag)) in line and "no metadata.yaml" in line
    assert f"ros2 bag reindex {bag}" in line

    # a directory that is not a bag at all, or one that holds bags
    from vit_policy.data.bags import BagError, bag_topics

    (tmp_path / "notes").mkdir()
    with pytest.raises(BagError, match=r"'.*notes' is not a rosbag2 bag: no metadata.yaml .*ros2 bag record -o"):
        bag_topics(tmp_path / "notes")
    copy_checkpoint(setup["bag"], tmp_path / "notes" / "episode_000")
    with pytest.raises(BagError, match=r"'.*notes' is not a rosbag2 bag .* holds 1 bag.*give the bag directories .*episode_000"):
        bag_topics(tmp_path / "notes")
    with pytest.raises(BagError, match=r"'.*data.yaml' cannot be read as rosbag2.*give a bag directory \(with metadata.yaml\)"):
        bag_topics(setup["data_yaml"])


def test_bad_config_key_is_one_line_with_the_file_and_the_suggestion(setup: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "data.yaml"
    doc = yaml.safe_load(setup["data_yaml"].read_text())
    doc["sync_tolerence_s"] = doc.pop("sync_tolerance_s")
    bad.write_text(yaml.safe_dump(doc))
    res = cli("replay", "--checkpoint", str(setup["ckpt"]), "--bags", str(setup["bag"]), "--out", str(tmp_path / "out"),
              "--data-config", str(bad))
    line = one_line_error(res)
    assert str(bad) in line and "sync_tolerence_s" in line and "did you mean 'sync_tolerance_s'" in line

    # a bad key in a checkpoint's config.yaml names that file and how to get a good checkpoint
    from vit_policy.config import ConfigError

    ckpt = copy_checkpoint(setup["ckpt"], tmp_path / "ckpt")
    doc = yaml.safe_load((ckpt / "config.yaml").read_text())
    doc["chunk_sise"] = doc.pop("chunk_size")
    (ckpt / "config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"config\.yaml'.*chunk_sise.*did you mean 'chunk_size'.*copy the checkpoint directory"):
        VisuomotorPolicy.from_pretrained(ckpt)


def test_only_user_errors_are_one_line() -> None:
    """Project input errors and a ValueError the project's code raised are one line; a ValueError from
    inside a library, or any other exception, is a bug: traceback."""
    from vit_policy.cli import is_user_error
    from vit_policy.config import ConfigError
    from vit_policy.data.bags import BagError
    from vit_policy.model.encoders import WeightsError

    def raised(code: str, filename: str) -> BaseException:
        try:
            exec(compile(code, filename, "exec"), {})
        except Exception as exc:  # noqa: BLE001 - the exception under test
            return exc
        raise AssertionError("no exception")

    inside = str(ROOT / "vit_policy" / "replay" / "evaluation.py")  # a frame attributed to the project's code
    assert is_user_error(raised("raise ValueError('episodes: 0 must be at least 1')", inside))
    assert not is_user_error(raised("raise ValueError('x')", str(ROOT / "elsewhere.py")))
    assert not is_user_error(raised("import numpy; numpy.linalg.norm(numpy.ones(3), ord='bad')", inside))
    assert not is_user_error(RuntimeError("x")) and not is_user_error(KeyError("x"))
    for exc in (ConfigError("x"), BagError("x"), WeightsError("x"), FileNotFoundError("x")):
        assert is_user_error(exc)


def test_replay_set_data_overrides_reach_the_runtime(tmp_path: Path) -> None:
    """--set data.sync_tolerance_s=... changes the runtime's sync rule too, unless runtime.* is set explicitly."""
    from vit_policy.replay import load_replay_config

    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump(to_dict(DataConfig(cameras={"front": "/c"}, pose_topic="/p", control_rate_hz=10.0,
                                                      sync_tolerance_s=0.02, max_age_s=0.5))))
    cfg = load_replay_config(data, [])
    assert cfg.runtime.sync_tolerance_s == 0.02 and cfg.runtime.max_age_s == 0.5
    cfg = load_replay_config(data, [], ["data.sync_tolerance_s=0.1", "data.max_age_s=0.8"])
    assert cfg.data.sync_tolerance_s == 0.1 and cfg.runtime.sync_tolerance_s == 0.1
    assert cfg.data.max_age_s == 0.8 and cfg.runtime.max_age_s == 0.8
    cfg = load_replay_config(data, [], ["data.sync_tolerance_s=0.1", "runtime.sync_tolerance_s=0.05"])
    assert cfg.data.sync_tolerance_s == 0.1 and cfg.runtime.sync_tolerance_s == 0.05  # explicit runtime wins


def test_a_misspelled_override_is_blamed_on_the_override_not_the_file(capsys: pytest.CaptureFixture) -> None:
    from vit_policy.cli import main

    assert main(["train", "--config", str(ROOT / "configs/train/sim_fetch.yaml"), "policy.encoder.nmae=x"]) == 2
    err = capsys.readouterr().err
    assert "override 'policy.encoder.nmae=x': unknown config key 'policy.encoder.nmae'; did you mean 'name'?" in err
