"""Encoder pretraining on labelled frames: it learns to place a point, and its file is what encoder.weights reads."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from vit_policy.model.configuration import EncoderConfig
from vit_policy.model.encoders import ImageEncoder, build_image_encoder
from vit_policy.pretrain import pretrain_encoder, random_shift

SIZE = 32
ENC = EncoderConfig(family="timm", name="test_vit", img_size=SIZE, patch_size=8, token_mode="patches")


def two_views(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A 3-D point in [0, 1]^3 drawn as a bright square: camera 'top' shows (x, y), camera 'side' (x, z)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.0, 1.0, (n, 3))
    views = {c: np.zeros((n, SIZE, SIZE, 3), np.uint8) for c in ("top", "side")}
    for i, (x, y, z) in enumerate(p):
        for cam, (u, v) in (("top", (x, y)), ("side", (x, z))):
            r, c = int(v * (SIZE - 6)), int(u * (SIZE - 6))
            views[cam][i, r:r + 6, c:c + 6] = 255
    return views, p[:, None, :]


def test_pretraining_places_the_point_better_than_the_mean(tmp_path):
    views, points = two_views(600)
    res = pretrain_encoder(ENC, views, points, ["dot"], tmp_path / "enc.safetensors", steps=300, batch_size=32, lr=2e-3)
    val = points[-60:, 0]
    mean_error = float(np.median(np.linalg.norm(val - points[:-60, 0].mean(0), axis=-1)))  # what ignoring the pixels gives
    assert res.val_error_m["dot"] < 0.5 * mean_error, (res.val_error_m, mean_error)
    assert res.steps == 300 and res.target_names == ["dot"]
    assert "dot" in res.table()


def test_saved_backbone_loads_as_encoder_weights(tmp_path):
    views, points = two_views(40)
    res = pretrain_encoder(ENC, views, points, ["dot"], tmp_path / "enc.safetensors", steps=3, batch_size=8)
    with safe_open(str(res.path), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
        assert f.metadata()["encoder"] == "test_vit"
    fresh = ImageEncoder(ENC)
    loaded = build_image_encoder(EncoderConfig(**{**ENC.__dict__, "weights": str(res.path)}))
    state = loaded.backbone.state_dict()
    assert {k for k in saved if not k.startswith("point_head.")} == set(state)  # the backbone, plus the point head beside it
    assert any(k.startswith("point_head.") for k in saved)
    assert all(torch.equal(saved[k], state[k]) for k in state)
    assert not all(torch.equal(fresh.backbone.state_dict()[k], state[k]) for k in state)  # not the random init


def test_random_shift_moves_each_image_by_at_most_the_pad_and_keeps_its_content():
    """One bright pixel per image: it lands within pad pixels of where it was, the picture is otherwise kept,
    and images of one batch are shifted independently (a shared shift would still let a scene be memorised)."""
    torch.manual_seed(0)
    x = torch.zeros(64, 3, 16, 16)
    x[:, :, 8, 7] = 1.0
    y = random_shift(x, 2)
    assert y.shape == x.shape and torch.allclose(y.sum((1, 2, 3)), x.sum((1, 2, 3)))
    where = [divmod(int(torch.argmax(img[0])), 16) for img in y]
    assert all(abs(r - 8) <= 2 and abs(c - 7) <= 2 for r, c in where)
    assert len(set(where)) > 5
    assert torch.equal(random_shift(x, 0), x)


@pytest.mark.parametrize("bad,match", [
    ("shift", "shift_px: -1 must be >= 0"), ("nan", "NaN"), ("shape", r"expected shape \(N, 1, 3\)"), ("dtype", r"images\['top'\]: expected uint8"), ("few", "at least 20"),
])
def test_bad_inputs_are_named(tmp_path, bad, match):
    views, points = two_views(40)
    if bad == "nan":
        points[3, 0, 1] = np.nan
    elif bad == "shape":
        points = points[:, 0]
    elif bad == "dtype":
        views["top"] = views["top"].astype(np.float32)
    elif bad == "few":
        views, points = two_views(10)
    with pytest.raises(ValueError, match=match):
        pretrain_encoder(ENC, views, points, ["dot"], tmp_path / "enc.safetensors", steps=1, shift_px=-1 if bad == "shift" else 0)


def _points_policy(path, cameras=("top", "side"), points=1, freeze="all", image_tokens=True, points_frame="base"):
    import dataclasses

    from vit_policy.model.checkpoint import build_policy
    from vit_policy.model.configuration import PointTokenConfig, PolicyConfig
    from vit_policy.model.policy import identity_stats

    tokens = PointTokenConfig(count=points, frame=points_frame, image_tokens=image_tokens) if points else None
    cfg = PolicyConfig(cameras=list(cameras), encoder=dataclasses.replace(ENC, weights=str(path), freeze=freeze), points=tokens,
                       d_model=32, n_heads=4, n_encoder_layers=1, n_decoder_layers=1, chunk_size=3)
    policy = build_policy(cfg)
    policy.set_stats(identity_stats(cfg))
    return policy


def _batch(views, n=2):
    return {"images": {c: torch.from_numpy(v[:n]) for c, v in views.items()}, "position": torch.rand(n, 3),
            "quaternion": torch.tensor([[0.0, 0.0, 0.0, 1.0]] * n), "gripper": torch.ones(n)}


def test_policy_reads_the_pretrained_points_as_tokens_and_keeps_them_through_a_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from vit_policy.model.policy import VisuomotorPolicy

    views, points = two_views(40)
    res = pretrain_encoder(ENC, views, points, ["dot"], tmp_path / "enc.safetensors", steps=3, batch_size=8)
    policy = _points_policy(res.path).eval()
    saved = load_file(str(res.path))
    head = policy.point_head.state_dict()
    assert all(torch.equal(saved["point_head." + k], v) for k, v in head.items())
    assert not any(p.requires_grad for p in policy.point_head.parameters())  # frozen with the backbone
    batch = _batch(views)
    with torch.no_grad():
        memory, _ = policy.forward_features(batch)
        no_points = _points_policy(res.path, points=0).eval()
        assert memory.shape[1] == no_points.forward_features(batch)[0].shape[1] + 1  # one token per point
        out = policy(batch)["action"]
        policy.save_pretrained(tmp_path / "ckpt")
        again = VisuomotorPolicy.from_pretrained(tmp_path / "ckpt")
        assert torch.allclose(again(batch)["action"], out, atol=1e-6)
    trainable = _points_policy(res.path, freeze="none")
    assert all(p.requires_grad for p in trainable.point_head.parameters())


def test_points_only_context_acts_on_the_points_not_the_pixels(tmp_path):
    """points.image_tokens: false: the context is the pose tokens and the points; the action still follows the
    images (through the points) and survives a checkpoint; without points (older flat keys) the config is refused."""
    from vit_policy.config import ConfigError, from_dict
    from vit_policy.model.configuration import PolicyConfig
    from vit_policy.model.policy import VisuomotorPolicy

    views, points = two_views(40)
    res = pretrain_encoder(ENC, views, points, ["dot"], tmp_path / "enc.safetensors", steps=3, batch_size=8)
    full, only = _points_policy(res.path).eval(), _points_policy(res.path, image_tokens=False).eval()
    assert not hasattr(only, "image_proj")  # no unused parameters for the optimiser or DDP
    batch = _batch(views)
    with torch.no_grad():
        memory = only.forward_features(batch)[0]
        assert memory.shape[1] == full.forward_features(batch)[0].shape[1] - 2 * full.encoder_for("top").num_tokens
        moved = {**batch, "images": {c: torch.from_numpy(v[2:4]) for c, v in views.items()}}  # other dots
        assert not torch.allclose(only(batch)["action"], only(moved)["action"])
        assert only.encode_points(batch["images"]).shape == (2, 1, 3)
        only.save_pretrained(tmp_path / "ckpt")
        again = VisuomotorPolicy.from_pretrained(tmp_path / "ckpt")
        assert torch.allclose(again(batch)["action"], only(batch)["action"], atol=1e-6)
    with pytest.raises(ConfigError, match=r"image_tokens: false.*set points: \{count: N"):
        from_dict(PolicyConfig, {"image_tokens": False})


def test_ee_frame_points_are_offsets_from_the_observed_ee_in_metres(tmp_path):
    """points.frame: ee: the point tokens are (point in metres - EE position) / 0.1 from the pretraining
    file's statistics, so moving the EE by d moves them by -d / 0.1; the statistics survive a checkpoint
    without the pretraining file, and a file without them is refused."""
    from safetensors.torch import save_file

    from vit_policy.config import ConfigError, from_dict
    from vit_policy.model.configuration import PolicyConfig
    from vit_policy.model.encoders import WeightsError
    from vit_policy.model.policy import EE_POINT_SCALE_M, VisuomotorPolicy

    views, points = two_views(40)
    res = pretrain_encoder(ENC, views, points, ["dot"], tmp_path / "enc.safetensors", steps=3, batch_size=8)
    policy = _points_policy(res.path, image_tokens=False, points_frame="ee").eval()
    with safe_open(str(res.path), "pt") as f:
        meta = f.metadata()
    mean, std = (torch.tensor(json.loads(meta[k]), dtype=torch.float32) for k in ("point_mean_m", "point_std_m"))
    seen = []
    policy.point_proj.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    batch = _batch(views)
    moved = {**batch, "position": batch["position"] + torch.tensor([0.05, -0.02, 0.01])}
    with torch.no_grad():
        policy(batch), policy(moved)
        metres = policy.encode_points(batch["images"]) * std + mean
    assert torch.allclose(seen[0], (metres - batch["position"][:, None]) / EE_POINT_SCALE_M, atol=1e-5)
    assert torch.allclose(seen[1] - seen[0], torch.tensor([-0.5, 0.2, -0.1]).expand_as(seen[0]), atol=1e-5)
    with torch.no_grad():
        out = policy(batch)["action"]
        policy.save_pretrained(tmp_path / "ckpt")
        again = VisuomotorPolicy.from_pretrained(tmp_path / "ckpt")  # reads no pretraining file
        assert torch.allclose(again.point_mean, mean) and torch.allclose(again(batch)["action"], out, atol=1e-6)
    no_stats = tmp_path / "no_stats.safetensors"
    with safe_open(str(res.path), "pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys()}, str(no_stats), metadata={"cameras": meta["cameras"]})
    with pytest.raises(WeightsError, match="point_mean_m.*pretrain it again or set points.frame: base"):
        _points_policy(no_stats, points_frame="ee")
    with pytest.raises(ConfigError, match="points_frame: ee.*points is 0"):
        from_dict(PolicyConfig, {"points_frame": "ee"})


def test_point_head_errors_name_the_file_and_the_fix(tmp_path):
    from safetensors.torch import save_file

    from vit_policy.config import ConfigError
    from vit_policy.model.configuration import PointTokenConfig, PolicyConfig
    from vit_policy.model.encoders import WeightsError

    views, points = two_views(40)
    res = pretrain_encoder(ENC, views, points, ["dot"], tmp_path / "enc.safetensors", steps=1, batch_size=8)
    with pytest.raises(ConfigError, match=r"pretrained on \['top', 'side'\] in that order"):
        _points_policy(res.path, cameras=("side", "top"))
    backbone_only = tmp_path / "backbone.safetensors"
    save_file({k: v for k, v in ImageEncoder(ENC).backbone.state_dict().items()}, str(backbone_only))
    with pytest.raises(WeightsError, match="has no point head.*set points: null"):
        _points_policy(backbone_only)
    with pytest.raises(ConfigError, match="points: the point head reads patch tokens"):
        PolicyConfig(encoder=EncoderConfig(token_mode="pooled"), points=PointTokenConfig(count=2))
    with pytest.raises(ConfigError, match=r"points.count: 0 must be >= 1"):
        PointTokenConfig()


def test_hindsight_points_label_each_frame_from_its_own_demonstration():
    """ee: the observed EE; end: where that demonstration ended; grasp: where its gripper first closed; object: the grasp
    point until then, the EE after; contact: the push start until the EE gets there, then the EE while it stays down;
    pushed: contact moved toward end by the final push gap. An episode that never closes is left out only when grasp is
    asked for; unknown names fail naming the choices."""
    from vit_policy.data.bags import Episode
    from vit_policy.pretrain import hindsight_points

    def episode(n: int, start: float, close_at: int | None) -> Episode:
        pos = np.stack([np.linspace(start, start + 1.0, n), np.zeros(n), np.full(n, start)], axis=1)
        grip = np.ones(n)
        grip[0] = 0.0  # grippers often start closed: only a closing after an opening is a grasp
        if close_at is not None:
            grip[close_at:] = 0.4  # an object between the fingers keeps them from closing fully
        img = np.full((n, 8, 8, 3), int(start * 10), np.uint8)
        return Episode("bag", np.arange(n, dtype=np.int64), {"front": img}, pos, np.tile([0, 0, 0, 1.0], (n, 1)), grip,
                       np.zeros((n, 1, 10)), np.ones((n, 1), bool))

    a, b = episode(4, 1.0, close_at=2), episode(3, 5.0, close_at=None)
    images, targets = hindsight_points([a, b], ["ee", "end"])
    assert images["front"].shape == (7, 8, 8, 3) and targets.shape == (7, 2, 3)
    np.testing.assert_allclose(targets[:, 0], np.concatenate([a.position, b.position]))
    np.testing.assert_allclose(targets[:4, 1], np.tile(a.position[-1], (4, 1)))
    np.testing.assert_allclose(targets[4:, 1], np.tile(b.position[-1], (3, 1)))
    images, targets = hindsight_points([a, b], ["grasp", "end"])  # b never closes: left out
    assert targets.shape == (4, 2, 3) and np.all(images["front"] == 10)
    np.testing.assert_allclose(targets[:, 0], np.tile(a.position[2], (4, 1)))
    c = episode(6, 1.0, close_at=None)
    c.position[:, 2] = [0.42, 0.5, 0.425, 0.42, 0.419, 0.45]  # starts low, rises, comes down: within 1 cm of 0.419 first at 2
    np.testing.assert_allclose(hindsight_points([c], ["low"])[1][:, 0], np.tile(c.position[2], (6, 1)))
    c.position[:, 2] = [0.5, 0.49, 0.3, 0.305, 0.35, 0.4]  # never rises: the first step within 1 cm of the lowest
    np.testing.assert_allclose(hindsight_points([c], ["low"])[1][:, 0], np.tile(c.position[2], (6, 1)))
    d = episode(8, 1.0, close_at=None)  # a hold that jitters (DART noise, a hand): end is the hold's mean, not its last sample
    d.position[:4] = [[0.2, 0, 0], [0.4, 0, 0], [0.6, 0, 0], [0.8, 0, 0]]
    d.position[4:] = [[1.01, 0, 0], [0.99, 0.02, 0], [1.0, -0.02, 0], [1.0, 0, 0.02]]
    np.testing.assert_allclose(hindsight_points([d], ["end"])[1][0, 0], [1.0, 0.0, 0.005], atol=1e-9)
    np.testing.assert_allclose(hindsight_points([a], ["object"])[1][:, 0], [a.position[2], a.position[2], a.position[2], a.position[3]])
    e = episode(8, 1.0, close_at=None)  # a push: rise, come down behind the object (step 2), push, lift off to re-approach, come down
    e.position[:, 2] = [0.42, 0.52, 0.42, 0.425, 0.43, 0.52, 0.53, 0.43]
    contact = hindsight_points([e], ["contact"])[1][:, 0]
    np.testing.assert_allclose(contact, e.position[[2, 2, 2, 3, 4, 4, 4, 7]])  # held where it last pushed while lifted
    f = episode(9, 1.0, close_at=None)  # a push along x that ends lifted over the object: the object rode 6 cm ahead of the EE
    f.position[:] = [[0, 0, 0.42], [0, 0, 0.52], [0.1, 0, 0.42], [0.14, 0, 0.42], [0.2, 0, 0.42], [0.2, 0, 0.52],
                     [0.26, 0, 0.52], [0.26, 0, 0.52], [0.26, 0, 0.52]]
    pushed = hindsight_points([f], ["pushed"])[1][:, 0]
    np.testing.assert_allclose(pushed[:, 0], [0.16, 0.16, 0.16, 0.2, 0.26, 0.26, 0.26, 0.26, 0.26], atol=1e-9)
    np.testing.assert_allclose(pushed[:, 1:], np.tile([0, 0.42], (9, 1)), atol=1e-9)  # on the table, on the push line
    with pytest.raises(ValueError, match=r"\['goal'\] are not hindsight points; choose from \['ee', 'end', 'grasp', 'object', 'low', 'contact', 'pushed'\]"):
        hindsight_points([a], ["ee", "goal"])
    with pytest.raises(ValueError, match="grasp needs the gripper to close"):
        hindsight_points([b], ["grasp"])
