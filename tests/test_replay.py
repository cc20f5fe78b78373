"""Offline replay evaluation on real rosbag2 files written by the synthetic generator (known ground truth).

The bags are real sqlite3 rosbag2 recordings read back with ``rosbags``; the policies are real
``VisuomotorPolicy`` modules (tiny timm ViT, random init) or, where a test needs exact outputs, a
``VisuomotorPolicy`` whose head is set to a constant, or the ``OraclePolicy`` test double below.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vit_policy.cli import main
from vit_policy.config import to_dict
from vit_policy.data.configuration import DataConfig, GripperConfig
from vit_policy.model.configuration import EncoderConfig, PolicyConfig
from vit_policy.replay import ReplayConfig
from vit_policy.runtime import RuntimeConfig
from vit_policy.data.bags import BagError, extract_episodes
from synthetic import GRIPPER_JOINTS, SyntheticBag, write_synthetic_bag
from vit_policy.geometry import pose_delta, rotvec_to_rot6d
from vit_policy.model.policy import VisuomotorPolicy, identity_stats
from vit_policy.observation import ActionChunk, Observation
from vit_policy.replay import replay_policies, run_batch, run_faithful

K, DT = 8, 0.1
IMG = 64  # bags are recorded at the encoder's resolution: batch and faithful see identical pixels


def tiny_config() -> PolicyConfig:
    return PolicyConfig(
        cameras=["front"], encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=IMG, token_mode="pooled"),
        d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, chunk_size=K, control_dt=DT,
    )


def data_config(pose: str = "pose") -> DataConfig:
    return DataConfig(cameras={"front": "/camera/front/image_raw"}, pose_topic="/ee_pose" if pose == "pose" else None,
                      gripper=GripperConfig(joints=list(GRIPPER_JOINTS)), control_rate_hz=1 / DT)


def replay_config(pose: str = "pose", latency_s: float = 0.0, **kw: object) -> ReplayConfig:
    return ReplayConfig(data=data_config(pose), runtime=RuntimeConfig(control_rate_hz=1 / DT, inference_latency_s=latency_s), **kw)


class OraclePolicy(VisuomotorPolicy):
    """Test double: a real (tiny) VisuomotorPolicy whose ``predict`` returns the generator's analytic ground truth.

    Why a double: no trained network is exact, and the zero-error test must isolate the replay pipeline
    (bag decoding, synchronisation, the runner, matching chunks to labels, scoring) from learning. The
    chunk comes from ``SyntheticBag.pose_at`` / ``gripper_at`` (not from the extracted labels), relative
    to the observed pose, so the extraction's labels are checked too.
    """

    def __init__(self, truth: SyntheticBag) -> None:
        super().__init__(tiny_config())
        self.set_stats(identity_stats(self.cfg))
        self.truth = truth

    def predict(self, obs, return_attention: bool = False):  # type: ignore[override]
        single = isinstance(obs, Observation)
        if isinstance(obs, (Observation, list)):
            items = [(o.stamp_ns, o.position, o.quaternion) for o in ([obs] if single else obs)]
        else:
            items = list(zip(obs["stamp_ns"].tolist(), obs["position"].double().numpy(), obs["quaternion"].double().numpy()))
        chunks = []
        for stamp, p, q in items:
            q = np.asarray(q, np.float64) / np.linalg.norm(q)
            t = int(stamp) + self.cfg.control_dt_ns * np.arange(1, K + 1)
            fp, fq = self.truth.pose_at(t)
            dp, dr = pose_delta(np.asarray(p, np.float64), q, fp, fq)
            chunks.append(ActionChunk(int(stamp), self.cfg.control_dt_ns, np.asarray(p, np.float64), q, dp, dr,
                                      self.truth.gripper_at(t)))
        return chunks[0] if single else chunks


def constant_policy(dp: np.ndarray, rotvec: np.ndarray, gripper_logit: float) -> VisuomotorPolicy:
    """A real VisuomotorPolicy whose head ignores its input: zero weights, the constant action as the bias."""
    cfg = tiny_config()
    policy = VisuomotorPolicy.from_config(cfg)
    policy.set_stats(identity_stats(cfg))  # raw action = network output: the bias is the action
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.copy_(torch.tensor([*dp, *rotvec_to_rot6d(np.asarray(rotvec)), gripper_logit], dtype=torch.float32))
    return policy


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Single-frame inference of a tiny model is fastest on one thread (and measured 4-8x faster than two on
    a busy 2-core machine); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticBag]:
    """Two short recordings of the scripted expert, one with the pose as PoseStamped, one on TF."""
    root = tmp_path_factory.mktemp("bags")
    return {
        # a 10 Hz camera, as the control rate: the runner infers on every frame, so faithful and batch see the same frames
        "pose": write_synthetic_bag(root / "pose", image_size=(IMG, IMG), duration_s=2.5, seed=3, camera_hz=10.0),
        "tf": write_synthetic_bag(root / "tf", image_size=(IMG, IMG), duration_s=2.5, seed=4, pose_source="tf", camera_hz=10.0),
    }


# --------------------------------------------------------------------------------------------------
# Ground truth in, zero error out; latency; faithful == batch
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pose", ["pose", "tf"])
def test_oracle_scores_zero_error_in_both_modes(bags: dict[str, SyntheticBag], tmp_path: Path, pose: str) -> None:
    gt = bags[pose]
    (res,) = replay_policies({"oracle": OraclePolicy(gt)}, [gt.path], tmp_path, replay_config(pose), report=False)
    for mode in ("faithful", "batch"):
        m = res.metrics[mode]
        assert m["frames"] >= 20, mode
        for axis in "xyz":  # labels interpolate 50 Hz poses at steps between them: a few micrometres off the analytic curve
            assert m["translation_mae_mm"][axis] < 1e-2, (mode, axis, m["translation_mae_mm"])
        assert m["rotation_error_deg"]["max"] < 1e-2
        assert m["gripper_accuracy"] == 1.0 and m["within_tolerance"] == 1.0
    ex = res.metrics["faithful"]["executed"]
    assert ex["ticks_scored"] >= 15
    assert ex["translation_error_mm"]["max"] < 2e-2 and ex["rotation_error_deg"]["max"] < 2e-2
    # the executed stream is the recording (error 0 above); its jerk also covers the last ticks, which have no label
    assert ex["jerk_rms_recorded"] > 0 and ex["jerk_rms"] == pytest.approx(ex["jerk_rms_recorded"], rel=0.1)
    lost = res.metrics["faithful"]["frames_lost"]
    assert lost["stale"] == 0 and lost["rejected_inputs"] == 0


def test_latency_delays_chunks_by_whole_ticks(bags: dict[str, SyntheticBag], tmp_path: Path) -> None:
    gt = bags["pose"]
    lost = {}
    for latency in (0.0, 0.3):
        (res,) = replay_policies({"oracle": OraclePolicy(gt)}, [gt.path], tmp_path, replay_config(latency_s=latency, modes=["faithful"]), report=False)
        lost[latency] = res.metrics["faithful"]["frames_lost"]
        assert res.metrics["faithful"]["executed"]["translation_error_mm"]["max"] < 2e-2  # late chunks still on target
    assert lost[0.3]["waiting"] == lost[0.0]["waiting"] + 3  # 300 ms = 3 control periods before the first command


@pytest.mark.parametrize("history", [0, 2])
def test_faithful_and_batch_agree_at_zero_latency(bags: dict[str, SyntheticBag], history: int) -> None:
    """Same chunks for the same frames: the runner's observations (and pose history) are the training ones."""
    torch.manual_seed(0)
    cfg = tiny_config()
    cfg.pose.history = history
    policy = VisuomotorPolicy.from_config(cfg).eval()
    policy.set_stats(identity_stats(policy.cfg))
    cfg = replay_config()
    gt = bags["pose"]
    episodes = extract_episodes(gt.path, cfg.data, K, policy.image_size)
    batch, _ = run_batch(policy, episodes, batch_size=8)
    faithful = run_faithful(policy, gt.path, episodes, cfg)
    f = faithful.predictions
    assert len(f) == len(batch) >= 20  # every extracted frame was an observation of the runner, and no other
    np.testing.assert_array_equal(f.stamps_ns, batch.stamps_ns)
    # The first `history` frames of an episode differ by design of the two owners: the dataset repeats the
    # first sample as history, the runner uses the oldest pose it has received (reported to the lead).
    s = slice(history, None)
    np.testing.assert_allclose(f.pred_dp[s], batch.pred_dp[s], atol=1e-5)
    np.testing.assert_allclose(f.pred_dr[s], batch.pred_dr[s], atol=1e-5)
    np.testing.assert_allclose(f.pred_gripper[s], batch.pred_gripper[s], atol=1e-5)


# --------------------------------------------------------------------------------------------------
# The command: checkpoints compared side by side, constant policy, report
# --------------------------------------------------------------------------------------------------

CONST_DP = np.array([0.012, -0.02, 0.03])
CONST_ROT = np.array([0.1, 0.0, 0.0])


@pytest.fixture(scope="module")
def cli_run(bags: dict[str, SyntheticBag], tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """`vit-policy replay` with two checkpoints (a constant policy and a random one) on the straight bag."""
    root = tmp_path_factory.mktemp("cli")
    const = constant_policy(CONST_DP, CONST_ROT, gripper_logit=6.0).save_pretrained(root / "constant")
    torch.manual_seed(1)
    rand = VisuomotorPolicy.from_config(tiny_config())
    rand.set_stats(identity_stats(rand.cfg))
    rand.save_pretrained(root / "random")
    data_yaml = root / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"data": to_dict(data_config())}))
    out = root / "report"
    rc = main(["replay", "--checkpoint", str(const), str(root / "random"), "--bags", str(bags["pose"].path),
               "--out", str(out), "--data-config", str(data_yaml)])  # latency: measured on this machine
    assert rc == 0
    return {"out": out, "metrics": json.loads((out / "metrics.json").read_text()), "root": root, "data_yaml": data_yaml}


def test_constant_policy_scores_the_independently_computed_error(cli_run: dict, bags: dict[str, SyntheticBag]) -> None:
    """Expected errors from the generator's analytic motion at the observation stamps, in plain numpy."""
    from scipy.spatial.transform import Rotation

    gt = bags["pose"]
    stamps = np.concatenate([e.stamps_ns for e in extract_episodes(gt.path, data_config(), K, (IMG, IMG))])
    steps = stamps[:, None] + int(DT * 1e9) * np.arange(1, K + 1)  # (N, K) step times
    valid = steps <= gt.pose_stamps_ns[-1]  # labels exist up to the last recorded pose
    p0, q0 = gt.pose_at(stamps)
    p1, q1 = gt.pose_at(steps.ravel())
    err = (CONST_DP - (p1.reshape(-1, K, 3) - p0[:, None])) * 1e3  # mm
    true_rot = Rotation.from_quat(q1) * Rotation.from_quat(np.repeat(q0, K, axis=0)).inv()
    rot_err = np.degrees((Rotation.from_rotvec(np.tile(CONST_ROT, (len(true_rot), 1))).inv() * true_rot).magnitude()).reshape(-1, K)
    for mode in ("faithful", "batch"):
        m = cli_run["metrics"]["checkpoints"]["constant"]["metrics"][mode]
        assert m["frames"] == len(stamps) and m["steps"] == valid.sum()
        for i, axis in enumerate("xyz"):
            assert m["translation_mae_mm"][axis] == pytest.approx(np.abs(err[..., i][valid]).mean(), rel=1e-4)
            assert m["translation_rmse_mm"][axis] == pytest.approx(np.sqrt((err[..., i][valid] ** 2).mean()), rel=1e-4)
        assert m["rotation_error_deg"]["mean"] == pytest.approx(rot_err[valid].mean(), rel=1e-4)
        horizon = [np.linalg.norm(err[:, k][valid[:, k]], axis=-1).mean() for k in range(K)]
        np.testing.assert_allclose(m["horizon"]["translation_mm"], horizon, rtol=1e-4)
        # gripper: the constant policy always says "open"; accuracy = share of open steps in the recording
        open_share = (gt.gripper_at(steps.ravel()).reshape(-1, K)[valid] > 0.5).mean()
        assert m["gripper_accuracy"] == pytest.approx(open_share, abs=2 / valid.sum())


def test_two_checkpoints_side_by_side(cli_run: dict) -> None:
    ckpts = cli_run["metrics"]["checkpoints"]
    assert set(ckpts) == {"constant", "random"}
    for name in ckpts:
        assert set(ckpts[name]["metrics"]) == {"faithful", "batch"}
        m = ckpts[name]["metrics"]["faithful"]
        assert m["latency_ms"]["n"] == m["frames_lost"]["inferences"] > 0
        assert m["frames_lost"]["ticks"] >= m["frames"]
        assert m["executed"]["latency_used_ms"] > 0  # no --latency-ms: the latency measured here delays the chunks
    assert ckpts["constant"]["metrics"]["batch"]["translation_mae_mm"] != ckpts["random"]["metrics"]["batch"]["translation_mae_mm"]
    page = (cli_run["out"] / "report.html").read_text()
    assert "constant (faithful)" in page and "random (batch)" in page  # one table column per checkpoint and mode


def test_report_links_non_blank_plots(cli_run: dict) -> None:
    out: Path = cli_run["out"]
    page = (out / "report.html").read_text()
    links = re.findall(r"href='([^']+\.png)'", page)
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    names = {Path(p).name.split("_")[0].split(".")[0] for p in links}
    assert {"horizon", "latency", "path3d", "trajectory", "attention"} <= names
    assert len(embedded) == len(links) >= 7
    for rel, data in zip(links, embedded):
        png = (out / rel).read_bytes()
        assert base64.b64decode(data) == png  # the embedded copy is the linked file
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float64)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 5.0, f"{rel} looks blank"


# --------------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------------


def test_bag_without_the_configured_topics_is_a_clear_error(bags: dict[str, SyntheticBag], tmp_path: Path) -> None:
    gt = bags["tf"]  # the pose is on /tf, the config asks for /ee_pose
    with pytest.raises(BagError, match=r"no topic '/ee_pose' \(data.pose_topic\).*the bag has: .*/tf \(tf2_msgs/msg/TFMessage\)"):
        replay_policies({"oracle": OraclePolicy(gt)}, [gt.path], tmp_path, replay_config("pose"), report=False)


def test_checkpoint_missing_a_file_is_a_clear_error(cli_run: dict, bags: dict[str, SyntheticBag], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.yaml", "model.safetensors"):
        (broken / name).write_bytes((cli_run["root"] / "constant" / name).read_bytes())
    rc = main(["replay", "--checkpoint", str(broken), "--bags", str(bags["pose"].path), "--out", str(tmp_path / "o"),
               "--data-config", str(cli_run["data_yaml"])])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stats.safetensors is missing" in err and str(broken) in err
    assert not (tmp_path / "o").exists()  # failed before replaying anything


def test_replay_settings_follow_the_training_data_config(tmp_path: Path) -> None:
    """A train config's data: section sets the topics and, unless overridden, the node's control grid."""
    from vit_policy.config import ConfigError
    from vit_policy.replay import load_replay_config

    train = tmp_path / "train.yaml"
    data = to_dict(data_config())
    data["control_rate_hz"] = 15.0
    train.write_text(yaml.safe_dump({"policy": {"cameras": ["front"]}, "bags": ["x"], "data": data}))
    cfg = load_replay_config(train, [])
    assert cfg.runtime.control_rate_hz == 15.0 and cfg.data.cameras == {"front": "/camera/front/image_raw"}
    cfg = load_replay_config(train, [], ["runtime.strategy=receding", "tolerance_mm=5"])
    assert cfg.runtime.strategy == "receding" and cfg.tolerance_mm == 5.0
    with pytest.raises(ConfigError, match="runtime.control_rate_hz .* must equal data.control_rate_hz"):
        load_replay_config(train, [], ["runtime.control_rate_hz=10"])
    with pytest.raises(ConfigError, match="tolerence_mm.*did you mean 'tolerance_mm'"):
        load_replay_config(train, [], ["tolerence_mm=5"])
    with pytest.raises(ConfigError, match="pass --data-config"):
        load_replay_config(None, [tmp_path])  # a checkpoint directory without a recorded data config
