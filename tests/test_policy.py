"""VisuomotorPolicy: forward/backward, loss, overfitting, save/load, attention maps, bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch

from vit_policy.config import ConfigError, from_dict, save_config
from vit_policy.model.configuration import (EncoderConfig, LanguageConfig, PointTokenConfig, PolicyConfig, PoseConfig,
                                            load_policy_config)
from vit_policy.geometry import apply_delta, geodesic_deg, rot6d_to_quat, rot6d_to_rotvec, rotvec_to_rot6d
from vit_policy.model.encoders import WeightsError
from vit_policy.model.policy import VisuomotorPolicy, actions_from_frame, actions_to_frame, compute_norm_stats, identity_stats
from vit_policy.observation import Observation, ObservationError

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "policy"


def tiny_cfg(**kw) -> PolicyConfig:
    base = dict(
        cameras=["front", "wrist"],
        encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=32, token_mode="pooled", num_pooled_tokens=4),
        d_model=64, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, chunk_size=6, dropout=0.0,
    )
    base.update(kw)
    return PolicyConfig(**base)


def make_batch(cfg: PolicyConfig, b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(b, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    dr = rng.normal(0, 0.1, (b, cfg.chunk_size, 3))
    action = np.concatenate([rng.normal(0, 0.05, (b, cfg.chunk_size, 3)), rotvec_to_rot6d(dr), rng.integers(0, 2, (b, cfg.chunk_size, 1))], -1)
    batch = {
        "images": {c: torch.randint(0, 256, (b, 40, 48, 3), dtype=torch.uint8, generator=g) for c in cfg.cameras},
        "position": torch.tensor(rng.normal(0, 0.3, (b, 3)), dtype=torch.float32),
        "quaternion": torch.tensor(quats, dtype=torch.float32),
        "gripper": torch.tensor(rng.uniform(size=b), dtype=torch.float32),
        "action": torch.tensor(action, dtype=torch.float32),
        "action_mask": torch.ones(b, cfg.chunk_size, dtype=torch.bool),
    }
    if cfg.pose.history:
        hist = np.concatenate([rng.normal(0, 0.3, (b, cfg.pose.history, 3)), np.tile(quats[:, None], (1, cfg.pose.history, 1))], -1)
        batch["history"] = torch.tensor(hist, dtype=torch.float32)
    return batch


def with_stats(cfg: PolicyConfig, batch: dict) -> VisuomotorPolicy:
    torch.manual_seed(0)
    model = VisuomotorPolicy.from_config(cfg)
    model.set_stats(compute_norm_stats(cfg, batch["position"].numpy(), batch["quaternion"].numpy(), batch["gripper"].numpy(),
                                       batch["action"].numpy(), batch["action_mask"].numpy(), batch.get("history")))
    return model


def test_shipped_configs_load_and_validate():
    for name in ("vit_small", "vit_tiny", "clip_b32", "dinov2_small"):
        cfg = load_policy_config(CONFIGS / f"{name}.yaml")
        assert cfg.chunk_size == 20
    assert load_policy_config(CONFIGS / "vit_small.yaml").encoder.name == "vit_small_patch16_224"
    assert load_policy_config(CONFIGS / "clip_b32.yaml").encoder.family == "open_clip"


def test_unknown_config_key_names_nearest(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras: [front]\nencoder:\n  nmae: vit_tiny_patch16_224\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'encoder\.nmae'; did you mean 'name'"):
        load_policy_config(bad)
    bad.write_text("chunk_sise: 10\n")
    with pytest.raises(ConfigError, match="did you mean 'chunk_size'"):
        load_policy_config(bad)
    bad.write_text("d_model: 100\nn_heads: 8\n")
    with pytest.raises(ConfigError, match="divisible"):
        load_policy_config(bad)
    bad.write_text("encoder:\n  token_mode: pixels\n")
    with pytest.raises(ConfigError, match=r"token_mode: 'pixels' is not one of"):
        load_policy_config(bad)
    with pytest.raises(ConfigError, match="expected an integer"):
        load_policy_config(CONFIGS / "vit_tiny.yaml", ["chunk_size=ten"])
    with pytest.raises(ConfigError, match=r"action_frame: 'world' is not one of"):
        load_policy_config(CONFIGS / "vit_tiny.yaml", ["action_frame=world"])


def test_point_tokens_are_one_optional_sub_config_and_older_flat_keys_still_load(tmp_path):
    """points: null or {count, frame, image_tokens}; overrides create it on a null; checkpoints saved with the
    older flat keys (points: N, image_tokens, points_frame) load into the same config."""
    sim = CONFIGS.parent / "sim" / "policy.yaml"
    assert load_policy_config(sim).points is None and load_policy_config(sim).image_tokens
    cfg = load_policy_config(sim, ["points.count=3", "points.image_tokens=false", "points.frame=ee"])
    assert cfg.points == PointTokenConfig(count=3, frame="ee", image_tokens=False) and not cfg.image_tokens
    old = {"encoder": {"token_mode": "patches"}, "points": 3, "image_tokens": False, "points_frame": "ee"}
    assert from_dict(PolicyConfig, old) == from_dict(PolicyConfig, {"encoder": {"token_mode": "patches"},
                                                                    "points": {"count": 3, "frame": "ee", "image_tokens": False}})
    assert from_dict(PolicyConfig, {"points": 0, "image_tokens": True, "points_frame": "base"}).points is None
    save_config(cfg, tmp_path / "policy.yaml")
    assert load_policy_config(tmp_path / "policy.yaml") == cfg
    with pytest.raises(ConfigError, match="now points.image_tokens and points.frame"):
        from_dict(PolicyConfig, {"points": {"count": 2}, "points_frame": "ee"})


def test_actions_have_their_own_normalisation_which_defaults_to_the_pose_one():
    assert PolicyConfig().action_normalization == "mean_std"
    assert PolicyConfig(pose=PoseConfig(normalization="min_max")).action_normalization == "min_max"  # as before the field
    assert from_dict(PolicyConfig, {"pose": {"normalization": "min_max"}}).action_normalization == "min_max"  # older checkpoints
    cfg = tiny_cfg(action_normalization="min_max")
    model = with_stats(cfg, make_batch(cfg))
    assert model.stats is not None
    for key, mode in (("state", "mean_std"), ("action", "min_max")):
        center, scale = model.stats[key].center_scale(mode)
        assert torch.allclose(getattr(model, f"{key}_center"), torch.as_tensor(center, dtype=getattr(model, f"{key}_center").dtype))
        assert torch.allclose(getattr(model, f"{key}_scale"), torch.as_tensor(scale, dtype=getattr(model, f"{key}_scale").dtype))
    with pytest.raises(ConfigError, match="action_normalization: 'z' is not one of"):
        from_dict(PolicyConfig, {"action_normalization": "z"})


@pytest.mark.parametrize("variant", ["base", "single_token_history", "quat_minmax", "per_camera", "patches", "language", "absolute"])
def test_forward_backward_variants(variant):
    kw = {}
    if variant == "single_token_history":
        kw["pose"] = PoseConfig(tokens="single", history=3)
    if variant == "quat_minmax":
        kw["pose"] = PoseConfig(rotation="quat", normalization="min_max", history=2)
    if variant == "per_camera":
        kw["encoder"] = EncoderConfig(name="vit_tiny_patch16_224", img_size=32, token_mode="cls", shared=False)
    if variant == "patches":
        kw["encoder"] = EncoderConfig(name="vit_tiny_patch16_224", img_size=32, token_mode="patches")
    if variant == "language":
        kw["language"] = LanguageConfig(enabled=True, model="ViT-B-32", instruction="reach the goal")
    if variant == "absolute":
        kw["action_frame"] = "absolute"
    cfg = tiny_cfg(**kw)
    batch = make_batch(cfg)
    model = with_stats(cfg, batch)
    if variant == "per_camera":
        assert set(model.encoders) == {"front", "wrist"}
    loss, parts = model.compute_loss(batch)
    assert torch.isfinite(loss) and set(parts) == {"loss", "l1_translation", "l1_rotation", "gripper_bce"}
    loss.backward()
    enc_params, head_params = model.param_groups()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc_params)
    assert all(p.grad is not None for p in head_params if p.requires_grad)
    chunks = model.predict(batch)
    assert len(chunks) == 4 and chunks[0].delta_position.shape == (cfg.chunk_size, 3)
    assert all(c.is_finite() for c in chunks)


def test_padding_mask_is_honoured():
    cfg = tiny_cfg()
    batch = make_batch(cfg)
    model = with_stats(cfg, batch)
    model.eval()
    mask = batch["action_mask"].clone()
    mask[:, 3:] = False
    batch["action_mask"] = mask
    loss_a, _ = model.compute_loss(batch)
    batch["action"] = batch["action"].clone()
    batch["action"][:, 3:, :3] += 100.0  # garbage where the mask says padding
    loss_b, _ = model.compute_loss(batch)
    torch.testing.assert_close(loss_a, loss_b)


def test_overfits_a_small_batch_below_mean_predictor():
    cfg = tiny_cfg(cameras=["front"])
    batch = make_batch(cfg, b=8, seed=3)
    model = with_stats(cfg, batch)
    with torch.no_grad():  # a mean predictor: normalised L1 of the labels around their mean
        tn = model.normalize_action(batch["action"])
        mean_l1 = (tn - tn.mean(0)).abs().mean().item()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(150):
        loss, parts = model.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    l1 = (parts["l1_translation"] + parts["l1_rotation"]) / 2
    assert mean_l1 > 0.5
    assert l1 < 0.25 * mean_l1, (l1, mean_l1)


def test_predict_turns_rot6d_into_target_poses():
    cfg = tiny_cfg(cameras=["front"])
    batch = make_batch(cfg, b=2)
    model = with_stats(cfg, batch)
    obs = Observation(123, {"front": batch["images"]["front"][0].numpy()}, batch["position"][0].double().numpy(),
                      batch["quaternion"][0].double().numpy(), 0.5)
    chunk = model.predict(obs)
    assert chunk.stamp_ns == 123 and chunk.dt_ns == int(cfg.control_dt * 1e9)
    np.testing.assert_array_equal(chunk.step_times_ns, 123 + chunk.dt_ns * np.arange(1, cfg.chunk_size + 1))
    p, q = apply_delta(chunk.origin_position, chunk.origin_quaternion, chunk.delta_position, chunk.delta_rotation)
    np.testing.assert_allclose(chunk.target_positions, p)
    np.testing.assert_allclose(np.linalg.norm(chunk.target_quaternions, axis=1), 1.0, atol=1e-9)
    assert np.all((chunk.gripper >= 0) & (chunk.gripper <= 1))


def test_action_frames_agree_with_the_delta_convention():
    cfg = tiny_cfg()
    batch = make_batch(cfg, b=3, seed=5)
    pos, quat, action = batch["position"].double(), batch["quaternion"].double(), batch["action"].double()
    torch.testing.assert_close(actions_to_frame(action, pos, quat, "delta"), action[..., :9])
    absolute = actions_to_frame(action, pos, quat, "absolute")
    for i in range(3):  # the absolute frame holds the target poses of geometry.apply_delta
        dr = rot6d_to_rotvec(action[i, :, 3:9].numpy())
        p, q = apply_delta(pos[i].numpy(), quat[i].numpy(), action[i, :, :3].numpy(), dr)
        np.testing.assert_allclose(absolute[i, :, :3].numpy(), p, atol=1e-9)
        np.testing.assert_allclose(geodesic_deg(rot6d_to_quat(absolute[i, :, 3:9].numpy()), q), 0.0, atol=1e-5)
    torch.testing.assert_close(actions_from_frame(absolute, pos, quat, "absolute"), action[..., :9])


@pytest.mark.parametrize("frame", ["delta", "absolute"])
def test_a_constant_head_is_one_target_in_the_absolute_frame_and_one_offset_in_the_delta_frame(frame):
    """Why the frame matters in a hold: a head stuck at one output keeps the arm at one pose only in the absolute frame."""
    cfg = tiny_cfg(cameras=["front"], action_frame=frame)
    batch = make_batch(cfg, b=3, seed=7)
    model = with_stats(cfg, batch).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()  # normalised output 0: the statistics' centre, whatever the observation
    chunks = model.predict(batch)
    targets = np.stack([c.target_positions for c in chunks])
    offsets = np.stack([c.delta_position for c in chunks])
    center = model.stats["action"].mean[:, :3]
    if frame == "absolute":  # the statistics are of target positions (position + dp)
        want = (batch["position"].double()[:, None] + batch["action"].double()[..., :3]).mean(0).numpy()
        np.testing.assert_allclose(center, want, atol=1e-6)
        np.testing.assert_allclose(targets, np.broadcast_to(center, targets.shape), atol=1e-5)
        quats = np.stack([c.target_quaternions for c in chunks])
        np.testing.assert_allclose(geodesic_deg(quats, np.broadcast_to(quats[:1], quats.shape)), 0.0, atol=1e-3)
    else:
        np.testing.assert_allclose(offsets, np.broadcast_to(center, offsets.shape), atol=1e-5)
        assert np.abs(targets - targets[:1]).max() > 0.1  # the same offset from three different poses


def test_state_position_moves_what_the_model_reads_not_the_labels():
    """augment.pose_noise_m (the dataset's ``state_position``): the noisy position feeds the pose tokens; the
    loss labels stay on the true pose."""
    cfg = tiny_cfg(cameras=["front"], action_frame="absolute")
    batch = make_batch(cfg, b=3, seed=11)
    model = with_stats(cfg, batch).eval()
    noisy = dict(batch, state_position=batch["position"] + 0.05)
    moved = dict(batch, position=batch["position"] + 0.05)
    with torch.no_grad():
        torch.testing.assert_close(model.state_vector(noisy), model.state_vector(moved))
        torch.testing.assert_close(model(noisy)["action"], model(moved)["action"])
        assert not torch.allclose(model(noisy)["action"], model(batch)["action"])
        # same network output, different label: the noisy batch keeps the true targets
        assert model.compute_loss(noisy)[0].item() != pytest.approx(model.compute_loss(moved)[0].item(), rel=1e-3)


def test_the_constructor_reads_no_file_and_the_builder_loads_the_pretrained_parts(tmp_path):
    """VisuomotorPolicy(cfg) only builds modules; build_policy (from_config) reads ``encoder.weights``."""
    from safetensors.torch import save_file

    from vit_policy.model.checkpoint import build_policy

    missing = tiny_cfg(cameras=["front"], encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=32, weights=str(tmp_path / "nope.safetensors")))
    VisuomotorPolicy(missing)  # a file that does not exist: never opened
    with pytest.raises(WeightsError, match="nope.safetensors' does not exist"):
        build_policy(missing)
    torch.manual_seed(0)
    src = VisuomotorPolicy(tiny_cfg(cameras=["front"]))
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.encoder_for("front").backbone.state_dict().items()}, str(path))
    cfg = tiny_cfg(cameras=["front"], encoder=EncoderConfig(name="vit_tiny_patch16_224", img_size=32, token_mode="pooled",
                                                            num_pooled_tokens=4, weights=str(path)))
    torch.manual_seed(1)  # another random init: equal weights can only come from the file
    built = build_policy(cfg)
    for k, v in src.encoder_for("front").backbone.state_dict().items():
        assert torch.equal(built.encoder_for("front").backbone.state_dict()[k], v), k
    torch.manual_seed(1)
    assert not torch.equal(VisuomotorPolicy(cfg).encoder_for("front").backbone.pos_embed, src.encoder_for("front").backbone.pos_embed)


def test_predict_changes_no_mode():
    """predict computes only: a model in training mode stays in it (the caller chooses eval mode)."""
    cfg = tiny_cfg(cameras=["front"])
    batch = make_batch(cfg, b=2)
    model = with_stats(cfg, batch)
    for training in (True, False):
        model.train(training)
        model.predict(batch)
        assert all(m.training == training for m in model.modules() if m is not model.language)


def test_save_load_bit_identical(tmp_path):
    cfg = tiny_cfg(pose=PoseConfig(history=2))
    batch = make_batch(cfg)
    model = with_stats(cfg, batch).eval()
    before = model.predict(batch)
    model.save_pretrained(tmp_path / "ckpt", metadata={"note": "test"})
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"config.yaml", "model.safetensors", "stats.safetensors", "metadata.json"}
    loaded = VisuomotorPolicy.from_pretrained(tmp_path / "ckpt")
    after = loaded.predict(batch)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.delta_position, b.delta_position)
        np.testing.assert_array_equal(a.delta_rotation, b.delta_rotation)
        np.testing.assert_array_equal(a.gripper, b.gripper)
    np.testing.assert_array_equal(loaded.stats["action"].std, model.stats["action"].std)


def test_checkpoint_errors(tmp_path):
    cfg = tiny_cfg(cameras=["front"])
    batch = make_batch(cfg, b=2)
    ckpt = with_stats(cfg, batch).save_pretrained(tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"cannot read weights file .*model\.safetensors"):
        VisuomotorPolicy.from_pretrained(ckpt)
    (ckpt / "stats.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="stats.safetensors is missing"):
        VisuomotorPolicy.from_pretrained(ckpt)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VisuomotorPolicy.from_pretrained(tmp_path / "nowhere")


def test_missing_statistics_is_an_error():
    cfg = tiny_cfg(cameras=["front"])
    model = VisuomotorPolicy.from_config(cfg)
    with pytest.raises(RuntimeError, match="normalisation statistics are missing"):
        model.predict(make_batch(cfg, b=1))
    with pytest.raises(KeyError, match="'action' is missing"):
        model.set_stats({"state": identity_stats(cfg)["state"]})


def test_bad_inputs_name_the_problem():
    cfg = tiny_cfg(cameras=["front"])
    model = VisuomotorPolicy.from_config(cfg)
    model.set_stats(identity_stats(cfg))
    img = np.zeros((32, 32, 3), np.uint8)
    good = dict(stamp_ns=0, images={"front": img}, position=np.zeros(3), quaternion=np.array([0, 0, 0, 1.0]))
    cases = [
        (dict(position=np.array([0, np.nan, 0])), r"observation\.position: contains NaN"),
        (dict(quaternion=np.array([0, 0, 0, 2.0])), r"observation\.orientation: quaternion norm"),
        (dict(images={"front": img.astype(np.float32)}), r"images\['front'\]: expected dtype uint8"),
        (dict(images={"front": img[:, :, :2]}), r"images\['front'\]: expected shape \(H, W, 3\)"),
        (dict(images={"wrist": img}), r"camera 'front' is missing"),
    ]
    for change, pattern in cases:
        with pytest.raises(ObservationError, match=pattern):
            model.predict(Observation(**{**good, **change}))
    batch = make_batch(cfg, b=1)
    batch["quaternion"][0, 0] = float("inf")
    with pytest.raises(ObservationError, match=r"batch\['quaternion'\]: contains NaN or Inf"):
        model.predict(batch)


def test_attention_maps_over_patches():
    cfg = tiny_cfg()
    batch = make_batch(cfg, b=2)
    model = with_stats(cfg, batch)
    chunk = model.predict(batch, return_attention=True)[0]
    for cam in cfg.cameras:
        att = chunk.attention[cam]
        assert att.shape == (cfg.chunk_size, 2, 2)  # K queries over a 2x2 patch grid (32 px / 16)
        assert np.all(att >= 0)
    # attention over all context tokens sums to 1 per query; the cameras' share is at most that
    total = sum(chunk.attention[c].sum((1, 2)) for c in cfg.cameras)
    assert np.all(total <= 1.0 + 1e-5) and np.all(total > 0)
    plain = model.predict(batch)[0]  # the SDPA path and the explicit-weights path agree
    np.testing.assert_allclose(plain.delta_position, chunk.delta_position, atol=1e-5)
