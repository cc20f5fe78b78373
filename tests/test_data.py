"""rosbag2 -> episodes -> cache -> Dataset, checked against the synthetic generator's ground truth.

The bags are real rosbag2 recordings (sqlite3 and mcap, written by ``rosbags``) whose messages were
built by ``vit_policy.messages``; nothing here is mocked.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vit_policy.config import ConfigError
from vit_policy.data.configuration import AugmentConfig, DataConfig, GripperConfig
from vit_policy.model.configuration import EncoderConfig, PolicyConfig
from vit_policy.data import cache as cache_mod
from vit_policy.data.bags import BagError, bag_topics, extract_episodes, iter_bag_messages
from vit_policy.data.cache import load_or_extract
from vit_policy.data.dataset import EpisodeDataset, EpochBatchSampler, dataset_stats, episode_history, split_episodes
from synthetic import GRIPPER_JOINTS, SyntheticBag, write_synthetic_bag
from vit_policy.geometry import geodesic_deg, pose_delta, rotvec_to_rot6d
from vit_policy.images import resize_uint8

K = 5
DT = 100_000_000


def data_config(cameras=("front",), compressed=False, pose_source="pose", **kw) -> DataConfig:
    suffix = "/compressed" if compressed else ""
    return DataConfig(
        cameras={c: f"/camera/{c}/image_raw{suffix}" for c in cameras},
        pose_topic="/ee_pose" if pose_source == "pose" else None,
        tf_base_frame="base_link", tf_ee_frame="ee_link",
        gripper=GripperConfig(topic="/joint_states", joints=list(GRIPPER_JOINTS), closed=0.0, open=0.08),
        **kw,
    )


def expected_samples(gt: SyntheticBag, cameras) -> np.ndarray:
    """The timing rule written out for the generator: every frame of the reference (first) camera whose
    stamp lies inside the pose stream, except the last ones whose first chunk step is past the last
    pose (nothing to learn). The other cameras are 3 ms apart, well within the tolerance."""
    stamps = gt.frame_stamps_ns[cameras[0]]
    inside = (stamps >= gt.pose_stamps_ns[0]) & (stamps + DT <= gt.pose_stamps_ns[-1])
    return stamps[inside]


def frame_at(gt: SyntheticBag, cam: str, stamp: int) -> np.ndarray:
    """The frame of ``cam`` whose stamp is nearest ``stamp``."""
    return gt.frames[cam][int(np.argmin(np.abs(gt.frame_stamps_ns[cam] - stamp)))]


def gripper_samples_at(gt: SyntheticBag, t_ns: np.ndarray) -> np.ndarray:
    """The recorded gripper samples, linearly interpolated at ``t_ns`` (what the timing rule does)."""
    t = gt.joint_stamps_ns
    return np.interp(np.asarray(t_ns, np.float64), t.astype(np.float64), gt.gripper_at(t))


@pytest.mark.parametrize(
    "storage,compressed,pose_source",
    [("sqlite3", False, "pose"), ("mcap", True, "tf"), ("mcap", False, "pose"), ("sqlite3", True, "tf")],
)
def test_extraction_matches_ground_truth(tmp_path: Path, storage: str, compressed: bool, pose_source: str) -> None:
    cams = ("front", "wrist")
    gt = write_synthetic_bag(tmp_path / "bag", storage=storage, cameras=cams, compressed=compressed, compression_format="png",
                             pose_source=pose_source, duration_s=2.0, image_size=(48, 64), seed=3)
    (ep,) = extract_episodes(tmp_path / "bag", data_config(cams, compressed, pose_source), K, None)

    np.testing.assert_array_equal(ep.stamps_ns, expected_samples(gt, cams))
    assert len(ep) >= 30
    pos, quat = gt.pose_at(ep.stamps_ns)  # the pose at the frame's stamp, interpolated between 50 Hz poses
    np.testing.assert_allclose(ep.position, pos, atol=5e-4)
    assert np.max(geodesic_deg(ep.quaternion, quat)) < 0.1
    np.testing.assert_allclose(ep.gripper, gripper_samples_at(gt, ep.stamps_ns), atol=1e-5)  # float32
    for cam in cams:  # rgb8 / bgr8 raw and png are lossless: the frame nearest the observation's stamp
        for t, img in zip(ep.stamps_ns, ep.images[cam]):
            np.testing.assert_array_equal(img, frame_at(gt, cam, int(t)))

    # labels: deltas to the future poses at stamp + (k+1) dt, padded after the last pose
    steps = ep.stamps_ns[:, None] + DT * np.arange(1, K + 1)
    mask = steps <= gt.pose_stamps_ns[-1]
    np.testing.assert_array_equal(ep.action_mask, mask)
    assert (~mask[-1]).sum() >= K - 2 and mask[: -2 * K].all()  # the episode end really is padded (20 Hz frames)
    p1, q1 = gt.pose_at(steps.ravel())
    dp, dr = pose_delta(np.repeat(ep.position, K, 0), np.repeat(ep.quaternion, K, 0), p1, q1)
    want = np.concatenate([dp, rotvec_to_rot6d(dr), gripper_samples_at(gt, steps.ravel())[:, None]], -1).reshape(-1, K, 10)
    np.testing.assert_allclose(ep.action[mask], want[mask], atol=5e-4)
    last_real = ep.action[-1, 0]
    np.testing.assert_array_equal(ep.action[-1, 1:], np.repeat(last_real[None], K - 1, 0))  # padding holds the last step


def test_jpeg_frames_and_resize(tmp_path: Path) -> None:
    gt = write_synthetic_bag(tmp_path / "bag", storage="mcap", compressed=True, duration_s=1.5, image_size=(96, 128), seed=1)
    (ep,) = extract_episodes(tmp_path / "bag", data_config(compressed=True), K, (32, 32))
    assert ep.images["front"].shape == (len(ep), 32, 32, 3) and ep.images["front"].dtype == np.uint8
    for t, img in zip(ep.stamps_ns, ep.images["front"]):
        want = resize_uint8(frame_at(gt, "front", int(t)), (32, 32)).astype(int)
        assert np.abs(img.astype(int) - want).mean() < 4.0  # JPEG quality 90


def test_command_labels(tmp_path: Path) -> None:
    gt = write_synthetic_bag(tmp_path / "bag", command=True, duration_s=2.0, image_size=(32, 32), seed=5)
    data = data_config(labels="command", command_topic="/expert/target_pose", command_gripper_topic="/expert/gripper")
    (ep,) = extract_episodes(tmp_path / "bag", data, K, None)
    steps = ep.stamps_ns[:, None] + DT * np.arange(1, K + 1)
    sent = gt.pose_stamps_ns  # a command every 20 ms: the label is the latest one sent by each step
    cp, cq, cg = gt.command_at(sent[np.searchsorted(sent, steps.ravel(), side="right") - 1])
    dp, dr = pose_delta(np.repeat(ep.position, K, 0), np.repeat(ep.quaternion, K, 0), cp, cq)
    want = np.concatenate([dp, rotvec_to_rot6d(dr), cg[:, None]], -1).reshape(-1, K, 10)
    m = ep.action_mask
    np.testing.assert_allclose(ep.action[m], want[m], atol=1e-6)
    # the command leads the pose, so command labels differ from future-pose labels
    (fp,) = extract_episodes(tmp_path / "bag", data_config(), K, None)
    assert np.abs(fp.action[..., :3] - ep.action[..., :3])[m].max() > 1e-4


def test_time_gap_splits_the_bag(tmp_path: Path) -> None:
    gt = write_synthetic_bag(tmp_path / "bag", duration_s=4.0, gap_s=(1.5, 1.5), image_size=(32, 32), seed=2)
    first, second = extract_episodes(tmp_path / "bag", data_config(), K, None)
    assert first.stamps_ns[-1] < gt.gap[0] <= gt.gap[1] <= second.stamps_ns[0]
    # labels never reach across the gap: steps after the last pose before it are padding
    last_before = gt.pose_stamps_ns[gt.pose_stamps_ns < gt.gap[0]][-1]
    steps = first.stamps_ns[:, None] + DT * np.arange(1, K + 1)
    np.testing.assert_array_equal(first.action_mask, steps <= last_before)


def test_float64_gripper(tmp_path: Path) -> None:
    gt = write_synthetic_bag(tmp_path / "bag", command=True, duration_s=1.5, image_size=(32, 32), seed=4)
    data = data_config()
    data.gripper = GripperConfig(topic="/expert/gripper", kind="float64")
    (ep,) = extract_episodes(tmp_path / "bag", data, K, None)
    sent = gt.pose_stamps_ns  # Float64 has no header: stamped at arrival (= its send time here), interpolated
    np.testing.assert_allclose(ep.gripper, np.interp(ep.stamps_ns, sent, gt.command_at(sent)[2]), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# bad bags
# --------------------------------------------------------------------------------------------------


def test_missing_topic_lists_what_the_bag_has(tmp_path: Path) -> None:
    write_synthetic_bag(tmp_path / "bag", duration_s=0.5, image_size=(16, 16))
    with pytest.raises(BagError) as err:
        extract_episodes(tmp_path / "bag", data_config(cameras=("front", "side")), K, None)
    msg = str(err.value)
    assert "/camera/side/image_raw" in msg and "data.cameras.side" in msg and "bag" in msg
    assert "/camera/front/image_raw (sensor_msgs/msg/Image)" in msg and "/ee_pose (geometry_msgs/msg/PoseStamped)" in msg


def test_wrong_message_type_is_named(tmp_path: Path) -> None:
    write_synthetic_bag(tmp_path / "bag", duration_s=0.5, image_size=(16, 16))
    data = data_config()
    data.cameras["front"] = "/ee_pose"
    with pytest.raises(BagError, match=r"'/ee_pose' has type geometry_msgs/msg/PoseStamped.*data.cameras.front needs sensor_msgs/msg/Image"):
        extract_episodes(tmp_path / "bag", data, K, None)


def test_missing_gripper_joint(tmp_path: Path) -> None:
    write_synthetic_bag(tmp_path / "bag", duration_s=0.5, image_size=(16, 16))
    data = data_config()
    data.gripper = GripperConfig(joints=["no_such_joint"], closed=0.0, open=0.08)
    with pytest.raises(BagError, match="no_such_joint"):
        extract_episodes(tmp_path / "bag", data, K, None)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_truncated_bag(tmp_path: Path, storage: str) -> None:
    write_synthetic_bag(tmp_path / "bag", storage=storage, duration_s=1.0, image_size=(32, 32))
    (db,) = [p for p in (tmp_path / "bag").iterdir() if p.suffix in (".db3", ".mcap")]
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    with pytest.raises(BagError, match=str(tmp_path / "bag")):
        extract_episodes(tmp_path / "bag", data_config(), K, None)


def test_empty_bag_and_missing_path(tmp_path: Path) -> None:
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    with Writer(tmp_path / "empty", version=9) as w:
        for topic, typ in [("/camera/front/image_raw", "sensor_msgs/msg/Image"), ("/ee_pose", "geometry_msgs/msg/PoseStamped"),
                           ("/joint_states", "sensor_msgs/msg/JointState")]:
            w.add_connection(topic, typ, typestore=store)
    assert bag_topics(tmp_path / "empty")["/ee_pose"] == "geometry_msgs/msg/PoseStamped"
    with pytest.raises(BagError, match=r"empty'.*no EE pose"):
        extract_episodes(tmp_path / "empty", data_config(), K, None)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        extract_episodes(tmp_path / "nowhere", data_config(), K, None)


def test_frames_stamped_long_before_arrival_get_the_pose_at_their_stamp(tmp_path: Path) -> None:
    """A camera stamped 300 ms before its frames arrive: each frame still gets the pose at its own stamp."""
    gt = write_synthetic_bag(tmp_path / "bag", duration_s=1.5, image_size=(16, 16), latency_ms=300)
    (ep,) = extract_episodes(tmp_path / "bag", data_config(), K, None)
    np.testing.assert_array_equal(ep.stamps_ns, expected_samples(gt, ("front",)))
    np.testing.assert_allclose(ep.position, gt.pose_at(ep.stamps_ns)[0], atol=5e-4)


def test_no_pose_names_the_setting(tmp_path: Path) -> None:
    """A TF chain that never reaches the configured EE frame: the error names the frames and the settings."""
    write_synthetic_bag(tmp_path / "bag", duration_s=0.5, image_size=(16, 16), pose_source="tf")
    data = data_config(pose_source="tf")
    data.tf_ee_frame = "tool0"
    with pytest.raises(BagError, match=r"no EE pose.*tool0.*data.tf_ee_frame"):
        extract_episodes(tmp_path / "bag", data, K, None)


def test_iter_bag_messages_in_time_order(tmp_path: Path) -> None:
    write_synthetic_bag(tmp_path / "bag", storage="mcap", duration_s=0.5, image_size=(16, 16))
    items = list(iter_bag_messages(tmp_path / "bag", ["/ee_pose", "/camera/front/image_raw"]))
    times = [t for _, t, _ in items]
    assert times == sorted(times) and {tp for tp, _, _ in items} == {"/ee_pose", "/camera/front/image_raw"}


# --------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------


def test_cache_reuses_and_rebuilds_on_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bag = tmp_path / "bag"
    write_synthetic_bag(bag, duration_s=1.0, image_size=(32, 32), seed=0)
    calls = []
    real = cache_mod.extract_episodes
    monkeypatch.setattr(cache_mod, "extract_episodes", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    data = data_config()
    first = load_or_extract(bag, data, K, (16, 16), tmp_path / "cache")
    again = load_or_extract(bag, data, K, (16, 16), tmp_path / "cache")
    assert len(calls) == 1
    assert isinstance(again[0].images["front"], np.memmap) and again[0].images["front"].shape[1:] == (16, 16, 3)
    np.testing.assert_array_equal(again[0].action, first[0].action)
    fresh = extract_episodes(bag, data, K, (16, 16))[0]
    np.testing.assert_array_equal(again[0].images["front"], fresh.images["front"])
    # touching the bag without changing it keeps the cache; new content rebuilds it
    os.utime(next(bag.glob("*.db3")), None)
    load_or_extract(bag, data, K, (16, 16), tmp_path / "cache")
    assert len(calls) == 1
    shutil.rmtree(bag)
    write_synthetic_bag(bag, duration_s=1.0, image_size=(32, 32), seed=7)
    changed = load_or_extract(bag, data, K, (16, 16), tmp_path / "cache")
    assert len(calls) == 2 and not np.array_equal(changed[0].position, first[0].position)
    # another extraction setting is another entry
    load_or_extract(bag, data, K + 1, (16, 16), tmp_path / "cache")
    assert len(calls) == 3 and len(list((tmp_path / "cache").iterdir())) == 2


def test_cache_that_cannot_be_written_loses_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cache_dir that cannot be written (here a path below a file; in CI once a full disk) warns, naming the
    folder and the fix, and the run goes on with the extracted episodes."""
    bag = tmp_path / "bag"
    write_synthetic_bag(bag, duration_s=1.0, image_size=(32, 32), seed=0)
    (tmp_path / "not_a_dir").write_text("")
    data = data_config()
    with caplog.at_level(logging.WARNING, logger=cache_mod.__name__):
        got = load_or_extract(bag, data, K, (16, 16), tmp_path / "not_a_dir" / "cache")
    want = extract_episodes(bag, data, K, (16, 16))
    assert len(got) == len(want)
    np.testing.assert_array_equal(got[0].images["front"], want[0].images["front"])
    np.testing.assert_array_equal(got[0].action, want[0].action)
    assert "not_a_dir/cache" in caplog.text and "cache_dir" in caplog.text


# --------------------------------------------------------------------------------------------------
# dataset, sampler, statistics
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> list:
    root = tmp_path_factory.mktemp("bags")
    eps = []
    for i in range(3):
        write_synthetic_bag(root / f"b{i}", duration_s=1.5, image_size=(32, 32), seed=10 + i)
        eps += extract_episodes(root / f"b{i}", data_config(), K, (32, 32))
    return eps


def test_dataset_samples_and_loss_ignores_padding(episodes: list) -> None:
    from vit_policy.model.policy import VisuomotorPolicy

    ds = EpisodeDataset(episodes, ["front"], history=2)
    assert len(ds) == sum(len(e) for e in episodes)
    e, t = ds.locate(len(episodes[0]) + 3)
    assert (e, t) == (1, 3)
    s = ds[len(episodes[0]) + 3]
    np.testing.assert_array_equal(s["images"]["front"].numpy(), episodes[1].images["front"][3])
    np.testing.assert_allclose(s["history"].numpy(), episode_history(episodes[1], 3, 2), rtol=1e-6)
    np.testing.assert_allclose(s["history"][-1, :3].numpy(), episodes[1].position[2], rtol=1e-6)  # the previous tick
    assert episode_history(episodes[1], 0, 2).tolist() == [list(episodes[1].position[0]) + list(episodes[1].quaternion[0])] * 2

    cfg = PolicyConfig(cameras=["front"], encoder=EncoderConfig(name="test_vit", img_size=32), d_model=32, n_heads=2,
                       n_encoder_layers=1, n_decoder_layers=1, chunk_size=K, dropout=0.0)
    cfg.pose.history = 2
    policy = VisuomotorPolicy(cfg)
    policy.set_stats(dataset_stats(episodes, cfg))
    last = len(episodes[0]) - 1  # the episode's last sample: its later steps are padding
    batch = next(iter(DataLoader(torch.utils.data.Subset(ds, [0, last]), batch_size=2)))
    assert batch["images"]["front"].shape == (2, 32, 32, 3) and not batch["action_mask"][1].all()
    loss, _ = policy.compute_loss(batch)
    batch["action"][1][~batch["action_mask"][1]] = 1e3  # garbage in padded steps changes nothing
    assert torch.allclose(policy.compute_loss(batch)[0], loss)


def test_statistics_skip_padding(episodes: list) -> None:
    cfg = PolicyConfig(cameras=["front"], chunk_size=K)
    stats = dataset_stats(episodes, cfg)
    act = np.concatenate([e.action for e in episodes])[..., :9]
    mask = np.concatenate([e.action_mask for e in episodes])
    k = K - 1
    np.testing.assert_allclose(stats["action"].mean[k], act[mask[:, k], k].mean(0), rtol=1e-5, atol=1e-7)
    assert not np.allclose(stats["action"].mean[k], act[:, k].mean(0))  # padded values would shift it
    assert stats["state"].mean.shape == (10,)


def test_augmentation_is_seeded_per_epoch_and_sample(episodes: list) -> None:
    ds = EpisodeDataset(episodes, ["front"], augment=AugmentConfig(shift_px=4, brightness=0.3, contrast=0.3, saturation=0.3), seed=1)
    a, b, c = ds[(0, 5)]["images"]["front"], ds[(0, 5)]["images"]["front"], ds[(1, 5)]["images"]["front"]
    raw = torch.from_numpy(np.asarray(episodes[0].images["front"][5]))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, raw)
    assert a.shape == raw.shape and a.dtype == torch.uint8
    plain = EpisodeDataset(episodes, ["front"])
    assert torch.equal(plain[(3, 5)]["images"]["front"], raw)


def test_pose_noise_is_seeded_training_only_and_leaves_the_labels(episodes: list) -> None:
    ds = EpisodeDataset(episodes, ["front"], augment=AugmentConfig(pose_noise_m=0.02), seed=1)
    plain = EpisodeDataset(episodes, ["front"])
    a, b, c = ds[(0, 5)], ds[(0, 5)], ds[(1, 5)]
    assert torch.equal(a["state_position"], b["state_position"]) and not torch.equal(a["state_position"], c["state_position"])
    noise = torch.stack([s["state_position"] - s["position"] for s in (ds[(e, i)] for e in range(4) for i in range(len(ds)))])
    assert 0.015 < float(noise.std()) < 0.025 and abs(float(noise.mean())) < 0.003
    # the true pose, the labels and the frames are untouched: only what the model reads moves
    for key in ("position", "action"):
        assert torch.equal(a[key], plain[(0, 5)][key])
    assert torch.equal(a["images"]["front"], plain[(0, 5)]["images"]["front"])
    assert "state_position" not in plain[(0, 5)]
    with pytest.raises(ConfigError, match="augment.pose_noise_m"):
        AugmentConfig(pose_noise_m=-0.01)


def test_sampler_shards_are_disjoint_and_resumable() -> None:
    n, bs = 23, 4
    shards = []
    for rank in range(2):
        s = EpochBatchSampler(n, bs, seed=3, rank=rank, world_size=2)
        s.set_epoch(1)
        batches = list(s)
        assert len(batches) == len(s) == 3 and all(len(b) == bs for b in batches)
        shards.append([i for b in batches for _, i in b])
    assert set(shards[0]).union(shards[1]) == set(range(n))  # every sample, padded by repeats to 24
    assert len(set(shards[0]) & set(shards[1])) <= 24 - n
    one = EpochBatchSampler(n, bs, seed=3)
    one.set_epoch(1)
    full = list(one)
    one.set_epoch(1, start_batch=2)
    assert list(one) == full[2:]
    one.set_epoch(2)
    assert list(one) != full and all(e == 2 for b in one for e, _ in b)


def test_split_is_by_episode(episodes: list) -> None:
    train, val = split_episodes(episodes, 0.34, seed=0)
    assert len(train) == 2 and len(val) == 1 and {id(e) for e in train}.isdisjoint(id(e) for e in val)
    assert split_episodes(episodes, 0.34, seed=0)[1][0] is val[0]


def test_read_only_frames_resize_without_a_warning() -> None:
    """Frames from a ROS message's bytes, parquet or a memory map are read-only; torch warns on wrapping them (once per
    process), although the resize only reads them: no warning, and no copy on the node's image path. In a process of
    its own with UserWarnings as errors (pytest's per-test filters would override the module's own)."""
    import subprocess
    import sys

    code = ("import numpy as np; from vit_policy.images import resize_uint8; "
            "f = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8); f.flags.writeable = False; "
            "out = resize_uint8(f, (24, 32)); assert out.shape == (24, 32, 3) and out.dtype == np.uint8")
    res = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
