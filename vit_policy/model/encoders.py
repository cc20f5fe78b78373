"""Image encoders (timm ViT family, open_clip CLIP visual towers) -> tokens, and the CLIP text tower.

``ImageEncoder.forward_features`` returns every token the backbone produces ([prefix tokens, patch
tokens]); ``forward`` selects what the policy sees by ``token_mode``: ``cls`` (1 token), ``mean``
(global average pool of the patches, 1 token), ``patches`` (all N patch tokens) or ``pooled``
(N learned queries attending over the patches). Weights come from the hub (``pretrained``, through
timm's / open_clip's own ``create_model``), random initialisation, or a local file (``weights``) that
:func:`build_image_encoder` / :func:`load_encoder_weights` read after construction: the modules' constructors
read no file. Nothing here reaches a network unless asked to.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vit_policy.config import ConfigError
from vit_policy.model.configuration import EncoderConfig, LanguageConfig

log = logging.getLogger(__name__)


POINT_HEAD = "point_head."  # key prefix of a pretraining file's point head (beside the backbone's own keys)


def create_pretrained(create: Callable[[], Any], pretrained: bool, what: str, setting: str, off: str = "false") -> Any:
    """``create()``; with ``pretrained`` a failure (offline: no hub) is one error naming the setting and the local-file fix
    instead of the hub client's own message."""
    if not pretrained:
        return create()
    try:
        return create()
    except Exception as exc:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        weights = setting.replace("pretrained", "weights")
        raise ConfigError(f"{setting}: the pretrained weights of {what} could not be fetched from the Hugging Face hub ({cause}); "
                          f"offline, download them elsewhere and set {weights}: <local .safetensors / .bin file> with "
                          f"{setting}: {off}, or set {setting}: {off} to start from random weights") from exc


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable or does not match the model; names the path and keys."""


WEIGHTS_FIX = ("copy the file again (a copy or download was cut short), or write it again (vit-policy sim-pretrain --out, "
               "or safetensors.torch.save_file)")


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a .safetensors file, from its 8-byte header length and JSON header (None: they agree
    with the file's size)."""
    import json

    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated: {size} bytes, not even the 8-byte header length"
        n = int.from_bytes(head, "little")
        if n > 100_000_000:  # safetensors' own limit on the header
            return f"not a safetensors file: the first 8 bytes give a header of {n} bytes"
        if 8 + n > size:
            return f"truncated: header says at least {8 + n} bytes, file has {size}"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "corrupt: the header is not valid JSON"
    if not isinstance(header, dict):
        return "corrupt: the header is not a JSON object"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        return f"truncated: header says {expected} bytes, file has {size}"
    if size > expected:
        return f"corrupt: header says {expected} bytes, file has {size} (bytes appended after the tensors)"
    return None


def pickle_refused_message(path: str | Path, exc: BaseException) -> str:
    """A pickle that ``torch.load(weights_only=True)`` refused: why it was not loaded and how to convert it."""
    import json
    import re
    import shlex

    path = Path(path)
    found = re.search(r"GLOBAL (\S+?)(?: was|\s|$)", str(exc))
    needs = f" (it needs {found.group(1)})" if found else ""
    out = path.with_suffix(".safetensors")
    code = (f'import torch, safetensors.torch as st; s = torch.load({json.dumps(str(path))}, map_location="cpu", weights_only=False); '
            's = s.state_dict() if hasattr(s, "state_dict") else next((s[k] for k in ("state_dict", "model", "module") if isinstance(s.get(k), dict)), s); '
            f'st.save_file({{k: v.detach().clone().contiguous() for k, v in s.items() if isinstance(v, torch.Tensor)}}, {json.dumps(str(out))})')
    return (f"weights file {str(path)!r} was NOT loaded: it is a pickle that holds more than tensors{needs}, and unpickling "
            f"can run arbitrary code. Only if you trust where the file came from, convert it once to safetensors and use "
            f"{str(out)!r} instead: python -c {shlex.quote(code)}")


def weights_error(path: str | Path, exc: BaseException, fix: str = WEIGHTS_FIX) -> WeightsError:
    """The error for a weights file that ``exc`` says cannot be read: the path, the cause and ``fix``."""
    import pickle

    path = Path(path)
    if isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower():
        return WeightsError(pickle_refused_message(path, exc))  # not torch's advice: it suggests weights_only=False
    cause = safetensors_problem(path) if path.suffix == ".safetensors" and path.is_file() else None
    if cause is None:
        first = str(exc).strip().splitlines()[0].split(". ")[0] if str(exc).strip() else ""  # the first sentence
        cause = f"corrupt or truncated ({type(exc).__name__}: {first})" if first else f"corrupt or truncated ({type(exc).__name__})"
    return WeightsError(f"cannot read weights file {str(path)!r}: {cause}; {fix}")


def read_state_dict(path: str | Path, fix: str = WEIGHTS_FIX) -> dict[str, torch.Tensor]:
    """Read a .safetensors, .bin/.pt/.pth (tensors only, never unpickled objects) or open_clip file.

    A file that cannot be read raises WeightsError naming the path, the cause and ``fix``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated file, or a pickle refused: say which and why
        raise weights_error(path, exc, fix) from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {str(path)!r} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_matching(module: nn.Module, state: dict[str, torch.Tensor], source: str, ignore: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped key is an error listing them."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(ignore)]
    unexpected = [k for k in state if k not in own and not k.startswith(ignore)]
    shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shape:
        def few(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = [f"missing keys: {few(missing)}" if missing else "", f"unexpected keys: {few(unexpected)}" if unexpected else "", f"shape mismatches: {few(shape)}" if shape else ""]
        raise WeightsError(f"weights {source!r} do not match the model: " + "; ".join(p for p in parts if p))
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


class AttentionPool(nn.Module):
    """N learned queries attend over the patch tokens (one pre-norm cross-attention + MLP)."""

    def __init__(self, dim: int, num_queries: int, num_heads: int = 8) -> None:
        super().__init__()
        self.num_heads = num_heads if dim % num_heads == 0 else 1
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, d = x.shape
        h = self.num_heads
        q = self.q(self.queries).expand(b, -1, -1).reshape(b, -1, h, d // h).transpose(1, 2)
        k, v = self.kv(self.norm(x)).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn = None
        if return_attention:
            weights = (q @ k.transpose(-2, -1) * (d // h) ** -0.5).softmax(-1)
            out, attn = weights @ v, weights.mean(1)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.queries + self.proj(out.transpose(1, 2).reshape(b, -1, d))
        return out + self.mlp(out), attn


class PointHead(nn.Module):
    """Every camera's patch tokens -> (B, T, 3) normalised 3-D points; grid positions are in the flattening.

    Trained by ``vit_policy.pretrain`` on frames labelled with point positions; in the policy its
    points become context tokens (``PolicyConfig.points``).
    """

    def __init__(self, tokens: int, dim: int, num_points: int, hidden: int = 256) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(tokens * dim, hidden), nn.GELU(), nn.Linear(hidden, 3 * num_points))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(tokens).flatten(1)).view(tokens.shape[0], -1, 3)


class ImageEncoder(nn.Module):
    """A ViT-family backbone and its token read-out; knows its own resolution and mean/std.

    Builds from the config only; ``cfg.weights`` (a local file) is loaded by :func:`build_image_encoder`
    or :func:`load_encoder_weights`.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.family == "timm":
            self._build_timm(cfg)
        elif cfg.family == "open_clip":
            self._build_open_clip(cfg)
        else:  # pragma: no cover - the config Literal already rejects this
            raise ConfigError(f"encoder.family: {cfg.family!r} is not 'timm' or 'open_clip'")
        self.num_patches = self.grid[0] * self.grid[1]
        self.pool = AttentionPool(self.embed_dim, cfg.num_pooled_tokens) if cfg.token_mode == "pooled" else None
        self.tap = nn.Identity()  # every forward's backbone tokens pass here: the OOD monitor's hook reads them (vit_policy/ood.py)
        self._apply_freeze(cfg)

    # ---- construction ------------------------------------------------------------------------------

    def _build_timm(self, cfg: EncoderConfig) -> None:
        import timm

        if not timm.is_model(cfg.name):
            near = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:5]
            raise ConfigError(f"encoder.name: {cfg.name!r} is not a timm model (similar: {near})")
        kwargs: dict[str, Any] = {"num_classes": 0}
        if cfg.img_size is not None:
            kwargs["img_size"] = cfg.img_size
        if cfg.patch_size is not None:
            kwargs["patch_size"] = cfg.patch_size  # pretrained / local weights: timm resamples the patch embedding
        self.backbone = create_pretrained(lambda: timm.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs), cfg.pretrained,
                                 f"timm {cfg.name!r}", "encoder.pretrained")
        if not hasattr(self.backbone, "patch_embed") or not hasattr(self.backbone, "blocks"):
            raise ConfigError(f"encoder.name: {cfg.name!r} is not a ViT-family model (no patch_embed/blocks)")
        pc = self.backbone.pretrained_cfg
        self.embed_dim = self.backbone.embed_dim
        self.num_prefix_tokens = self.backbone.num_prefix_tokens
        self.grid = tuple(self.backbone.patch_embed.grid_size)
        self.img_size = tuple(self.backbone.patch_embed.img_size)
        self.mean, self.std = tuple(pc.get("mean", (0.485, 0.456, 0.406))), tuple(pc.get("std", (0.229, 0.224, 0.225)))
        self.blocks = self.backbone.blocks

    def _build_open_clip(self, cfg: EncoderConfig) -> None:
        import open_clip

        if cfg.name not in open_clip.list_models():
            raise ConfigError(f"encoder.name: {cfg.name!r} is not an open_clip model (have e.g. {open_clip.list_models()[:6]})")
        kwargs: dict[str, Any] = {}
        if cfg.img_size is not None:
            kwargs["force_image_size"] = cfg.img_size
        pretrained = "openai" if cfg.pretrained else None
        clip = create_pretrained(lambda: open_clip.create_model(cfg.name, pretrained=pretrained, **kwargs), bool(pretrained),
                        f"open_clip {cfg.name!r} (openai)", "encoder.pretrained")
        visual = clip.visual
        if not hasattr(visual, "conv1"):
            raise ConfigError(f"encoder.name: {cfg.name!r} has no ViT visual tower")
        self.backbone = visual
        self.embed_dim = visual.transformer.width
        self.num_prefix_tokens = 1
        self.grid = tuple(visual.grid_size)
        self.img_size = tuple(visual.image_size)
        self.mean, self.std = tuple(visual.image_mean), tuple(visual.image_std)
        self.blocks = visual.transformer.resblocks

    def _apply_freeze(self, cfg: EncoderConfig) -> None:
        if cfg.freeze == "none":
            return
        self.backbone.requires_grad_(False)
        if cfg.freeze == "last_n" and cfg.trainable_blocks > 0:
            for block in list(self.blocks)[-cfg.trainable_blocks :]:
                block.requires_grad_(True)
            for name in ("norm", "fc_norm", "ln_post"):
                mod = getattr(self.backbone, name, None)
                if isinstance(mod, nn.Module):
                    mod.requires_grad_(True)

    def compile_backbone(self) -> None:
        """torch.compile (inductor) the backbone's token computation, where nearly all of the step's FLOPs are; the
        read-out and the OOD tap stay eager, so hooks on ``tap`` keep working."""
        if self.cfg.family == "timm":
            self.backbone.forward_features = torch.compile(self.backbone.forward_features)
        else:
            self.backbone.transformer.compile()

    # ---- forward -----------------------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        return {"cls": 1, "mean": 1, "patches": self.num_patches, "pooled": self.cfg.num_pooled_tokens}[self.cfg.token_mode]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> all tokens (B, prefix + patches, D)."""
        if self.cfg.family == "timm":
            return self.backbone.forward_features(x)
        v = self.backbone
        return v.ln_post(v.transformer(v._embeds(x)))

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens for the policy (B, T, D) and, for ``pooled``, the pool's attention over patches."""
        feats = self.tap(self.forward_features(x))
        patches = feats[:, self.num_prefix_tokens :]
        mode = self.cfg.token_mode
        if mode == "cls":
            if self.num_prefix_tokens == 0:
                raise ConfigError(f"encoder.token_mode: {self.cfg.name!r} has no class token; use mean, patches or pooled")
            return feats[:, :1], None
        if mode == "mean":
            return patches.mean(1, keepdim=True), None
        if mode == "patches":
            return patches, None
        assert self.pool is not None
        return self.pool(patches, return_attention)


class InstructionEncoder(nn.Module):
    """The CLIP text tower: an instruction -> one embedding, cached per instruction (tower frozen).

    ``cfg.weights`` (a local open_clip checkpoint) is read by :func:`load_instruction_weights`, not here.
    """

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__()
        import open_clip

        clip = create_pretrained(lambda: open_clip.create_model(cfg.model, pretrained=cfg.pretrained), bool(cfg.pretrained),
                        f"open_clip {cfg.model!r} ({cfg.pretrained})", "language.pretrained", "null")
        clip.visual = nn.Identity()  # only the text tower is kept
        self.clip = clip.requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(cfg.model)
        self.embed_dim = int(clip.text_projection.shape[1]) if clip.text_projection is not None else clip.transformer.width
        self._cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> "InstructionEncoder":
        return super().train(False)  # frozen: dropout never on, cached embeddings stay valid

    @torch.no_grad()
    def forward(self, instructions: list[str]) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        todo = sorted({s for s in instructions if s not in self._cache})
        if todo:
            emb = self.clip.encode_text(self.tokenizer(todo).to(device), normalize=True)
            self._cache.update({s: e for s, e in zip(todo, emb)})
        return torch.stack([self._cache[s].to(device) for s in instructions])

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache.clear()  # new weights: cached embeddings are stale
        super()._load_from_state_dict(*args, **kwargs)


# --------------------------------------------------------------------------------------------------
# Local weight files (read after construction: the modules above only build and compute)
# --------------------------------------------------------------------------------------------------


def load_encoder_weights(encoder: ImageEncoder, path: str | Path) -> None:
    """A local weights file into ``encoder``'s backbone; any missing or mis-shaped key is a WeightsError.

    timm: position embedding and patch embedding resampled to this model (``checkpoint_filter_fn``), the
    classifier head and a pretraining file's point head ignored. open_clip: the visual tower of a whole
    checkpoint, its position embedding resampled to this grid.
    """
    state = read_state_dict(path)
    if encoder.cfg.family == "timm":
        from timm.models.vision_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, encoder.backbone)  # resamples pos_embed
        load_matching(encoder.backbone, state, str(path), ignore=("head.", POINT_HEAD))  # classifier head unused
        return
    visual = encoder.backbone
    if any(k.startswith("visual.") for k in state):  # a whole open_clip checkpoint
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    pos = state.get("positional_embedding")
    if pos is not None and pos.shape != visual.positional_embedding.shape:
        from timm.layers import resample_abs_pos_embed

        state["positional_embedding"] = resample_abs_pos_embed(pos[None], list(visual.grid_size), num_prefix_tokens=1)[0]
    load_matching(visual, state, str(path))


def build_image_encoder(cfg: EncoderConfig) -> ImageEncoder:
    """``ImageEncoder(cfg)`` with the local weights file ``cfg.weights`` loaded, when it names one."""
    encoder = ImageEncoder(cfg)
    if cfg.weights:
        load_encoder_weights(encoder, cfg.weights)
    return encoder


def load_instruction_weights(encoder: InstructionEncoder, path: str | Path) -> None:
    """A local open_clip checkpoint into the text tower (its visual tower's keys are ignored)."""
    load_matching(encoder.clip, read_state_dict(path), str(path), ignore=("visual.",))
