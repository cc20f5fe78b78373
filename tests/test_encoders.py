"""Image encoders: token shapes per mode and family, local weights, freezing, preprocessing."""

import pytest
import torch
from safetensors.torch import save_file

from vit_policy.config import ConfigError
from vit_policy.images import to_model_input
from vit_policy.model.configuration import EncoderConfig, LanguageConfig
from vit_policy.model.encoders import ImageEncoder, InstructionEncoder, WeightsError, build_image_encoder



@pytest.fixture(autouse=True)
def _no_grad():
    """Forward passes only here; scoped per test so autograd stays on for the rest of the session."""
    with torch.no_grad():
        yield

# (family, name, img_size, expected patch grid): small resolutions keep the forward cheap on CPU
FAMILIES = [
    ("timm", "vit_tiny_patch16_224", 64, (4, 4)),
    ("timm", "vit_small_patch16_224", 48, (3, 3)),
    ("timm", "vit_base_patch16_224", 32, (2, 2)),
    ("timm", "vit_small_patch14_dinov2", 56, (4, 4)),
    ("timm", "vit_base_patch16_siglip_224", 32, (2, 2)),
    ("open_clip", "ViT-B-32", 64, (2, 2)),
    ("open_clip", "ViT-B-16", 32, (2, 2)),
]


@pytest.mark.parametrize("family,name,size,grid", FAMILIES, ids=[f[1] for f in FAMILIES])
def test_token_shapes_every_mode(family, name, size, grid):
    enc = ImageEncoder(EncoderConfig(family=family, name=name, img_size=size, token_mode="patches")).eval()
    assert enc.grid == grid and enc.img_size == (size, size)
    x = torch.randn(2, 3, size, size)
    feats = enc.forward_features(x)
    n = grid[0] * grid[1]
    assert feats.shape == (2, enc.num_prefix_tokens + n, enc.embed_dim)
    patches = feats[:, enc.num_prefix_tokens :]
    for mode, count in (("cls", 1), ("mean", 1), ("patches", n), ("pooled", 5)):
        if mode == "cls" and enc.num_prefix_tokens == 0:  # SigLIP has no class token: a clear error
            enc.cfg.token_mode = mode
            with pytest.raises(ConfigError, match="no class token"):
                enc(x)
            continue
        enc.cfg.token_mode = mode
        enc.pool = None
        if mode == "pooled":
            from vit_policy.model.encoders import AttentionPool

            enc.cfg.num_pooled_tokens = 5
            enc.pool = AttentionPool(enc.embed_dim, 5)
        tokens, attn = enc(x, return_attention=True)
        assert tokens.shape == (2, count, enc.embed_dim), mode
        assert enc.num_tokens == count
        if mode == "mean":
            torch.testing.assert_close(tokens[:, 0], patches.mean(1))
        if mode == "pooled":
            assert attn.shape == (2, 5, n)
            torch.testing.assert_close(attn.sum(-1), torch.ones(2, 5))


def test_preprocessing_uses_each_encoders_own_statistics():
    timm_enc = ImageEncoder(EncoderConfig(name="vit_small_patch14_dinov2", img_size=28))
    clip_enc = ImageEncoder(EncoderConfig(family="open_clip", name="ViT-B-32", img_size=32))
    assert timm_enc.mean == pytest.approx((0.485, 0.456, 0.406))
    assert clip_enc.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert clip_enc.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    # the normalisation constants are made once per (statistics, device): each encoder gets its own
    frame = torch.tensor([[[0, 128, 255]]], dtype=torch.uint8)  # one pixel (1, 1, 3)
    for enc in (timm_enc, clip_enc, timm_enc):
        with torch.inference_mode():
            x = to_model_input(frame, 1, enc.mean, enc.std)
        want = (torch.tensor([0.0, 128.0, 255.0]) / 255 - torch.tensor(enc.mean)) / torch.tensor(enc.std)
        torch.testing.assert_close(x.flatten(), want)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_timm_weights_from_local_file_reproduce_outputs(tmp_path, suffix):
    torch.manual_seed(0)
    src = ImageEncoder(EncoderConfig(name="vit_tiny_patch16_224", img_size=64, token_mode="cls")).eval()
    path = tmp_path / f"vit{suffix}"
    state = {k: v.contiguous() for k, v in src.backbone.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    torch.manual_seed(1)  # a different random init: equal outputs can only come from the file
    dst = build_image_encoder(EncoderConfig(name="vit_tiny_patch16_224", img_size=64, token_mode="cls", weights=str(path))).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(dst(x)[0], src(x)[0], rtol=0, atol=0)


def test_timm_weights_interpolate_position_embeddings(tmp_path):
    src = ImageEncoder(EncoderConfig(name="vit_tiny_patch16_224", img_size=64))
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.backbone.state_dict().items()}, str(path))
    dst = build_image_encoder(EncoderConfig(name="vit_tiny_patch16_224", img_size=96, token_mode="patches", weights=str(path)))
    assert dst.backbone.pos_embed.shape == (1, 1 + 36, 192)
    assert dst(torch.randn(1, 3, 96, 96))[0].shape == (1, 36, 192)


def test_patch_size_gives_a_finer_grid_and_resamples_local_weights(tmp_path):
    src = ImageEncoder(EncoderConfig(name="vit_tiny_patch16_224", img_size=64))
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in src.backbone.state_dict().items()}, str(path))
    dst = build_image_encoder(EncoderConfig(name="vit_tiny_patch16_224", img_size=64, patch_size=8, token_mode="patches", weights=str(path)))
    assert dst.grid == (8, 8) and dst.backbone.patch_embed.proj.weight.shape == (192, 3, 8, 8)
    assert dst(torch.randn(1, 3, 64, 64))[0].shape == (1, 64, 192)
    torch.testing.assert_close(dst.backbone.blocks[3].attn.qkv.weight, src.backbone.blocks[3].attn.qkv.weight)  # the rest: as saved
    with pytest.raises(ConfigError, match="encoder.patch_size: 12 must be >= 2 and divide encoder.img_size"):
        EncoderConfig(name="test_vit", img_size=64, patch_size=12)
    with pytest.raises(ConfigError, match="encoder.patch_size: only timm"):
        EncoderConfig(family="open_clip", name="ViT-B-32", patch_size=8)


def test_open_clip_checkpoint_reproduces_outputs(tmp_path):
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", force_image_size=64)
    path = tmp_path / "open_clip_model.bin"
    torch.save(clip.state_dict(), path)  # a whole open_clip checkpoint (visual.* + text tower)
    torch.manual_seed(1)
    enc = build_image_encoder(EncoderConfig(family="open_clip", name="ViT-B-32", img_size=64, token_mode="cls", weights=str(path))).eval()
    clip.visual.output_tokens = True
    x = torch.randn(1, 3, 64, 64)
    v = clip.visual.eval()
    expected = v.ln_post(v.transformer(v._embeds(x)))[:, :1]
    torch.testing.assert_close(enc(x)[0], expected, rtol=0, atol=0)


def test_weights_errors_name_the_file_and_keys(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_image_encoder(EncoderConfig(name="vit_tiny_patch16_224", img_size=32, weights=str(tmp_path / "nope.safetensors")))
    small = ImageEncoder(EncoderConfig(name="vit_small_patch16_224", img_size=32))
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in small.backbone.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match=r"small\.safetensors.*shape mismatches: .*blocks\.0"):
        build_image_encoder(EncoderConfig(name="vit_tiny_patch16_224", img_size=32, weights=str(path)))
    partial = {k: v.contiguous() for k, v in small.backbone.state_dict().items() if not k.startswith("blocks.11")}
    partial["extra.weight"] = torch.zeros(1)
    save_file(partial, str(path))
    with pytest.raises(WeightsError, match=r"missing keys: blocks\.11.*unexpected keys: extra\.weight"):
        build_image_encoder(EncoderConfig(name="vit_small_patch16_224", img_size=32, weights=str(path)))
    path.write_bytes(path.read_bytes()[:1000])  # truncated file
    with pytest.raises(WeightsError, match=r"cannot read weights file .*small\.safetensors"):
        build_image_encoder(EncoderConfig(name="vit_small_patch16_224", img_size=32, weights=str(path)))


def test_unknown_model_names_are_config_errors():
    with pytest.raises(ConfigError, match="not a timm model"):
        ImageEncoder(EncoderConfig(name="vit_tinyy_patch16_224"))
    with pytest.raises(ConfigError, match="not an open_clip model"):
        ImageEncoder(EncoderConfig(family="open_clip", name="ViT-X-99"))
    with pytest.raises(ConfigError, match="not a ViT-family"):
        ImageEncoder(EncoderConfig(name="resnet18"))


@pytest.mark.parametrize("family,name", [("timm", "vit_tiny_patch16_224"), ("open_clip", "ViT-B-32")])
def test_freezing(family, name):
    full = ImageEncoder(EncoderConfig(family=family, name=name, img_size=32, freeze="none"))
    assert all(p.requires_grad for p in full.backbone.parameters())
    frozen = ImageEncoder(EncoderConfig(family=family, name=name, img_size=32, freeze="all", token_mode="pooled"))
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in frozen.pool.parameters())  # the read-out still learns
    last = ImageEncoder(EncoderConfig(family=family, name=name, img_size=32, freeze="last_n", trainable_blocks=2))
    blocks = list(last.blocks)
    assert all(p.requires_grad for b in blocks[-2:] for p in b.parameters())
    assert not any(p.requires_grad for b in blocks[:-2] for p in b.parameters())
    trainable = {n for n, p in last.backbone.named_parameters() if p.requires_grad}
    assert not any("patch_embed" in n or "conv1" in n for n in trainable)


def test_instruction_encoder_caches_per_instruction():
    torch.manual_seed(0)
    enc = InstructionEncoder(LanguageConfig(enabled=True, model="ViT-B-32"))
    a = enc(["pick the red cube", "push the block"])
    assert a.shape == (2, enc.embed_dim)
    assert len(enc._cache) == 2
    assert not torch.allclose(a[0], a[1])  # different instructions, different tokens
    b = enc(["push the block"])
    torch.testing.assert_close(b[0], a[1])
    assert len(enc._cache) == 2


def test_pretrained_without_the_hub_names_the_setting_and_the_local_file_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub here (the hub client in offline mode, so the test does not wait for its retries): one ConfigError naming
    encoder.pretrained and encoder.weights, not the hub client's own message alone."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"encoder.pretrained: the pretrained weights of timm 'vit_tiny_patch16_224' could not be "
                                          r"fetched .*set encoder.weights: <local .safetensors / .bin file>"):
        ImageEncoder(EncoderConfig(name="vit_tiny_patch16_224", img_size=32, pretrained=True))
