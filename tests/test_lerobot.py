"""rosbag2 <-> LeRobotDataset v3 (vit_policy/data/lerobot.py): the round trip and lerobot 0.4.4's own loader.

Bags come from tests/realtime_bags.py (independent writer, real camera timing: exposure stamps,
arrival jitter, two cameras at 10 and 15 Hz, a 2 s pause that splits the bag into two episodes).

* Lossless (PNG frames): bag -> export -> read_episodes gives the frames of the direct extraction
  (extract_episodes) exactly, the same stamps, poses and gripper (float32 storage: within 1e-6) and
  the same K-step labels and masks.
* Video (H.264, yuv420p, crf 18): the same samples; every frame within VIDEO_PSNR_DB of the bag's.
* A 30 Hz camera exported at 10 fps keeps one frame per 100 ms tick, each the direct extraction's.
* lerobot 0.4.4's LeRobotDataset (built beside this venv by tests/lerobot_env.py) loads both exports,
  its frames, states and actions match the bag's, and its K-frame action chunks (delta_timestamps) are
  the extraction's K-step labels and masks.
* train reads an exported directory; a dataset without an EE pose is refused naming what is missing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from realtime_bags import CameraSpec, RealtimeBag, Scenario, write_scenario
from vit_policy.config import to_dict
from vit_policy.data.configuration import DataConfig, GripperConfig
from vit_policy.model.configuration import EncoderConfig, PolicyConfig
from vit_policy.train import TrainConfig
from vit_policy.data import lerobot as L
from vit_policy.data.bags import extract_episodes
from vit_policy.geometry import pose_delta, rotvec_to_rot6d

REPO = Path(__file__).resolve().parent.parent
K = 5
C = CameraSpec
TWO_CAMS = Scenario("two_cams_gap_mcap", (C("front", 10, 0.013, "png", latency_s=0.06), C("wrist", 15, 0.029, "bgr8", latency_s=0.03, row_padding=8)),
                    storage="mcap", pose_rate_hz=100, pose_phase_s=0.0061, gap=(1.6, 2.0), duration_s=4.2, image_size=(24, 32))
FAST_CAM = Scenario("c30_jpeg_sqlite3", (C("front", 30, 0.0049, "jpeg", latency_s=0.04),), pose_rate_hz=50, pose_phase_s=0.0151,
                    duration_s=2.0, image_size=(24, 32))


def data_config(bag: RealtimeBag) -> DataConfig:
    sc = bag.scenario
    return DataConfig(cameras=bag.camera_topics, pose_topic="/ee_pose",
                      gripper=GripperConfig(topic="/joint_states", kind="joint_state", joints=list(sc.gripper_joints),
                                            closed=sc.gripper_closed, open=sc.gripper_open),
                      control_rate_hz=10.0)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lerobot")


@pytest.fixture(scope="module")
def two_cams(root: Path) -> RealtimeBag:
    return write_scenario(root / TWO_CAMS.name, TWO_CAMS)


@pytest.fixture(scope="module")
def exported(root: Path, two_cams: RealtimeBag) -> dict[str, Path]:
    data = data_config(two_cams)
    out = {}
    for kind, video in (("png", False), ("video", True)):
        out[kind] = root / f"ds_{kind}"
        L.export_dataset([two_cams.path], data, out[kind], video=video, progress=False)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def assert_same_samples(got: list, want: list, lossless: bool) -> None:
    assert [len(e) for e in got] == [len(e) for e in want] and len(want) == 2  # the pause: two episodes
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.stamps_ns, w.stamps_ns)
        np.testing.assert_allclose(g.position, w.position, atol=1e-6)  # float32 in the parquet
        np.testing.assert_allclose(g.quaternion, w.quaternion, atol=1e-6)
        np.testing.assert_allclose(g.gripper, w.gripper, atol=1e-6)
        np.testing.assert_array_equal(g.action_mask, w.action_mask)
        np.testing.assert_allclose(g.action, w.action, atol=2e-6)
        assert set(g.images) == set(w.images) == {"front", "wrist"}
        for cam in w.images:
            assert g.images[cam].shape == w.images[cam].shape and g.images[cam].dtype == np.uint8
            if lossless:
                np.testing.assert_array_equal(g.images[cam], w.images[cam])
            else:
                worst = min(psnr(a, b) for a, b in zip(g.images[cam], w.images[cam]))
                assert worst >= L.VIDEO_PSNR_DB, f"{cam}: a frame at {worst:.1f} dB"


@pytest.mark.parametrize("kind", ["png", "video"])
def test_round_trip_matches_direct_extraction(two_cams: RealtimeBag, exported: dict[str, Path], kind: str) -> None:
    data = data_config(two_cams)
    want = extract_episodes(two_cams.path, data, K, None)
    got = L.read_episodes(exported[kind], data, K, None)
    assert_same_samples(got, want, lossless=kind == "png")
    # the LeRobot columns: timestamps from the observation stamps, conventions stated
    info = json.loads((exported[kind] / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["total_episodes"] == 2
    assert info["total_frames"] == sum(len(e) for e in want)
    assert info["features"]["observation.state"]["names"] == ["x", "y", "z", "qx", "qy", "qz", "qw", "gripper"]
    assert info["features"]["observation.images.front"]["dtype"] == ("video" if kind == "video" else "image")
    assert "ROS" in info["vit_policy"]["quaternion"] and "timestamp + 1/fps" in info["vit_policy"]["action"]
    assert info["vit_policy"]["labels"] == "future_pose"
    import pyarrow.parquet as pq

    table = pq.read_table(exported[kind] / "data/chunk-000/file-000.parquet").to_pydict()
    first = np.asarray(table["episode_index"]) == 1
    stamps = np.asarray(table["stamp_ns"])[first]
    np.testing.assert_allclose(np.asarray(table["timestamp"])[first], (stamps - stamps[0]) / 1e9, atol=1e-6)
    assert np.asarray(table["index"]).tolist() == list(range(info["total_frames"]))
    stats = json.loads((exported[kind] / "meta/stats.json").read_text())
    assert np.allclose(stats["observation.state"]["mean"][:3], np.concatenate([e.position for e in want]).mean(0), atol=1e-6)
    assert np.asarray(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)


def test_fast_camera_is_thinned_to_one_frame_per_tick(root: Path) -> None:
    bag = write_scenario(root / FAST_CAM.name, FAST_CAM)
    data = data_config(bag)
    direct = extract_episodes(bag.path, data, 1, None)[0]
    res = L.export_dataset([bag.path], data, root / "ds_fast", progress=False)
    got = L.read_episodes(root / "ds_fast", data, 1, None)[0]
    assert res.thinned > len(got) and res.fps == 10
    gaps = np.diff(got.stamps_ns) / 1e6
    assert np.all(np.abs(gaps - 100.0) < 17.0)  # one frame per 100 ms tick (a 30 Hz frame is at most 1/60 s off it)
    where = np.searchsorted(direct.stamps_ns, got.stamps_ns)
    np.testing.assert_array_equal(direct.stamps_ns[where], got.stamps_ns)  # each kept frame is one of the extraction's samples
    np.testing.assert_array_equal(direct.images["front"][where], got.images["front"])
    np.testing.assert_allclose(direct.position[where], got.position, atol=1e-6)
    np.testing.assert_allclose(direct.action[where], got.action, atol=2e-6)


@pytest.fixture(scope="module")
def lerobot_env() -> dict[str, str]:
    import lerobot_env

    try:
        return lerobot_env.build()
    except lerobot_env.Unavailable as exc:
        pytest.skip(f"lerobot 0.4.4 cannot be installed beside torch here: {exc}")


def test_lerobot_env_links_ffmpeg_of_this_venv(tmp_path: Path) -> None:
    """The lerobot directory outlives the venv that built it (it is shared by every clone): links left pointing
    into a deleted venv are replaced by links to this venv's PyAV libraries, which torchcodec then loads."""
    import lerobot_env

    libs = lerobot_env._av_libs()
    first = lerobot_env.environment(tmp_path)["LD_LIBRARY_PATH"].split(":")[0]
    links = sorted(Path(first).iterdir())
    assert {p.name.split(".so")[0] for p in links} >= {"libavutil", "libavcodec", "libavformat"}
    for p in links:  # a venv since deleted: every link dangles
        p.unlink()
        p.symlink_to(tmp_path / "deleted_venv" / p.name)
    links = sorted(Path(lerobot_env.environment(tmp_path)["LD_LIBRARY_PATH"].split(":")[0]).iterdir())
    assert links and all(p.resolve().is_file() and p.resolve().parent == libs.resolve() for p in links)
    ctypes.CDLL(str(next(p for p in links if p.name.startswith("libavutil.so"))))  # loads by soname, as torchcodec does


@pytest.mark.parametrize("kind", ["png", "video"])
def test_lerobot_loads_the_export(two_cams: RealtimeBag, exported: dict[str, Path], lerobot_env: dict[str, str], kind: str,
                                  tmp_path: Path) -> None:
    out = tmp_path / "items.npz"
    res = subprocess.run([sys.executable, str(REPO / "tests/lerobot_env.py"), "--check", str(exported[kind]), str(out), str(K)],
                         env=lerobot_env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = np.load(out)
    data = data_config(two_cams)
    want = extract_episodes(two_cams.path, data, 1, None)
    assert int(got["fps"]) == 10 and int(got["num_episodes"]) == 2 and set(got["tasks"].tolist()) == {"demonstration"}
    if kind == "video":
        assert str(got["video_backend"]) == "torchcodec"
    cat = lambda f: np.concatenate([f(e) for e in want])  # noqa: E731
    np.testing.assert_array_equal(got["stamp_ns"], cat(lambda e: e.stamps_ns))
    state = np.concatenate([cat(lambda e: e.position), cat(lambda e: e.quaternion), cat(lambda e: e.gripper)[:, None]], 1)
    np.testing.assert_allclose(got["observation.state"], state, atol=1e-6)
    np.testing.assert_allclose(got["action"], cat(L._absolute_action), atol=1e-6)
    for cam in ("front", "wrist"):
        frames = np.rint(got[f"observation.images.{cam}"].transpose(0, 2, 3, 1) * 255.0)  # lerobot: float CHW in [0, 1]
        bag_frames = cat(lambda e: e.images[cam])
        if kind == "png":
            np.testing.assert_array_equal(frames, bag_frames)
        else:
            assert min(psnr(a, b) for a, b in zip(frames, bag_frames)) >= L.VIDEO_PSNR_DB
    # a lerobot policy's K-step action chunk (delta_timestamps of K frames) is this policy's K-step label
    labels = extract_episodes(two_cams.path, data, K, None)
    chunk, pad = got["chunk_action"].astype(np.float64), got["chunk_is_pad"]
    pos, quat = np.repeat(state[:, :3], K, 0), np.repeat(state[:, 3:7], K, 0)
    dp, dr = pose_delta(pos, quat, chunk[..., :3].reshape(-1, 3), chunk[..., 3:7].reshape(-1, 4))
    as_labels = np.concatenate([dp, rotvec_to_rot6d(dr), chunk[..., 7].reshape(-1, 1)], 1).reshape(-1, K, 10)
    mask = np.concatenate([e.action_mask for e in labels])
    np.testing.assert_array_equal(~pad, mask)
    np.testing.assert_allclose(as_labels[mask], np.concatenate([e.action for e in labels])[mask], atol=1e-5)


def tiny_train_config(dataset: Path, tmp: Path, data: DataConfig) -> TrainConfig:
    policy = PolicyConfig(cameras=["front", "wrist"], encoder=EncoderConfig(name="test_vit", img_size=32, token_mode="pooled", num_pooled_tokens=2),
                          d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, chunk_size=K, control_dt=0.1)
    return TrainConfig(policy=policy, data=data, bags=[str(dataset)], val_fraction=0.5, cache_dir=str(tmp / "cache"),
                       out_dir=str(tmp / "out"), max_steps=2, batch_size=4, warmup_steps=1, progress=False, tensorboard=False)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vit_policy.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_train_reads_an_exported_dataset(two_cams: RealtimeBag, exported: dict[str, Path], tmp_path: Path) -> None:
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(tiny_train_config(exported["png"], tmp_path, data_config(two_cams)))))
    res = run_cli("train", "--config", str(cfg_path), "--threads", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    meta = json.loads((tmp_path / "out/last/metadata.json").read_text())
    assert sorted(meta["train_episodes"] + meta["val_episodes"]) == [f"{exported['png']}#episode_{i}" for i in (0, 1)]


def test_train_refuses_a_dataset_without_ee_pose(two_cams: RealtimeBag, exported: dict[str, Path], tmp_path: Path) -> None:
    joints = tmp_path / "joint_space"
    shutil.copytree(exported["png"], joints)
    info = json.loads((joints / "meta/info.json").read_text())
    for key in ("observation.state", "action"):  # a joint-space dataset, as most LeRobot recordings are
        info["features"][key]["names"] = [f"joint_{i}" for i in range(7)] + ["gripper"]
    (joints / "meta/info.json").write_text(json.dumps(info))
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(tiny_train_config(joints, tmp_path, data_config(two_cams)))))
    res = run_cli("train", "--config", str(cfg_path))
    assert res.returncode == 2, res.stderr[-3000:]
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: LeRobot dataset") and str(joints) in err
    assert "no EE pose: observation.state lacks ['x', 'y', 'z', 'qx', 'qy', 'qz', 'qw']" in err and "joint_0" in err


def test_export_cli_checks_bags_first_and_never_overwrites(two_cams: RealtimeBag, exported: dict[str, Path], tmp_path: Path) -> None:
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"data": to_dict(data_config(two_cams))}))
    res = run_cli("export-dataset", "--bags", str(two_cams.path), "--data-config", str(data_yaml), "--out", str(tmp_path / "ds"),
                  "--no-progress")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 episode(s)" in res.stdout and "MB/s" in res.stdout and L.is_dataset(tmp_path / "ds")
    again = run_cli("export-dataset", "--bags", str(two_cams.path), "--data-config", str(data_yaml), "--out", str(tmp_path / "ds"))
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
    wrong = run_cli("export-dataset", "--bags", str(two_cams.path), "--data-config", str(data_yaml), "--out", str(tmp_path / "ds2"),
                    "--set", "data.pose_topic=/nope")
    assert wrong.returncode == 2 and "/nope" in wrong.stderr and "would not extract" in wrong.stderr
    assert not (tmp_path / "ds2").exists() and not (tmp_path / "ds2.partial").exists()


def test_corrupt_dataset_names_the_file(exported: dict[str, Path], two_cams: RealtimeBag, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(exported["png"], broken)
    part = broken / "data/chunk-000/file-000.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    with pytest.raises(L.DatasetError, match=r"data/chunk-000/file-000.parquet cannot be read"):
        L.read_episodes(broken, data_config(two_cams), K, None)


def test_command_labels_with_tf_pose_round_trip(tmp_path: Path) -> None:
    """The real-robot config's path: TF pose, compressed frames, the recorded command as the action."""
    from synthetic import GRIPPER_JOINTS, write_synthetic_bag

    write_synthetic_bag(tmp_path / "bag", command=True, pose_source="tf", compressed=True, camera_hz=10.0, duration_s=2.0,
                        image_size=(32, 32), seed=7)
    data = DataConfig(cameras={"front": "/camera/front/image_raw/compressed"}, pose_topic=None, tf_base_frame="base_link",
                      tf_ee_frame="ee_link", gripper=GripperConfig(topic="/joint_states", joints=list(GRIPPER_JOINTS), closed=0.0, open=0.08),
                      command_topic="/expert/target_pose", command_gripper_topic="/expert/gripper", labels="command", control_rate_hz=10.0)
    L.export_dataset([tmp_path / "bag"], data, tmp_path / "ds", progress=False)
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())
    assert info["vit_policy"]["labels"] == "command" and "recorded command" in info["vit_policy"]["action"]
    (want,) = extract_episodes(tmp_path / "bag", data, K, None)
    (got,) = L.read_episodes(tmp_path / "ds", data, K, None)
    np.testing.assert_array_equal(got.stamps_ns, want.stamps_ns)
    np.testing.assert_array_equal(got.images["front"], want.images["front"])
    np.testing.assert_array_equal(got.action_mask, want.action_mask)
    np.testing.assert_allclose(got.action, want.action, atol=2e-6)
    # the command leads the pose: its labels are not the future-pose labels, so the round trip kept which one
    fut = extract_episodes(tmp_path / "bag", dataclasses.replace(data, labels="future_pose"), K, None)[0]
    assert np.abs(fut.action[..., :3] - got.action[..., :3])[got.action_mask].max() > 1e-4


def test_hub_dataset_offline_says_how_to_get_it(two_cams: RealtimeBag, tmp_path: Path) -> None:
    cfg = tiny_train_config(tmp_path / "unused", tmp_path, data_config(two_cams))
    cfg.bags = ["hf://datasets/someone/not_here_xyz"]
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(to_dict(cfg)))
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # this machine has no hub anyway
    res = subprocess.run([sys.executable, "-m", "vit_policy.cli", "train", "--config", str(cfg_path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    err = res.stderr.strip().splitlines()[-1]
    assert "hf://datasets/someone/not_here_xyz" in err and "huggingface-cli download --repo-type dataset someone/not_here_xyz" in err


def test_thinning_keeps_the_frame_nearest_each_tick_and_a_missing_tick_ends_a_run() -> None:
    ms = 1_000_000
    t0 = 1_718_000_000_000_000_000
    # 30 Hz with 2 ms jitter, then frames 8 and 9 (t = 267, 300 ms) lost: the 300 ms tick has no frame
    stamps = t0 + np.array([0, 33, 67, 100, 133, 167, 200, 233, 367, 400, 433, 467, 500], np.int64) * ms + np.array(
        [0, 1, -2, 2, 0, -1, -2, 1, 2, -1, 0, 2, 1]) * ms
    runs = L.thin_to_fps(stamps, 10)
    assert [r.tolist() for r in runs] == [[0, 3, 6], [9, 12]]  # 0, 100, 200 ms | 400, 500 ms (the 300 ms tick: none)
    assert [r.tolist() for r in L.thin_to_fps(stamps[:8], 30)] == [list(range(8))]  # at the camera's rate: every frame
