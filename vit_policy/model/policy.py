"""VisuomotorPolicy: image tokens + EE pose tokens -> fusion transformer -> a chunk of K actions.

Context tokens: [instruction?, pose tokens, camera 1 tokens, camera 2 tokens, ...]. A pre-norm
transformer encoder fuses them; K learned action queries then read the fused context through a
DETR/ACT-style decoder. Why a decoder rather than appending queries to the encoder: the context
length changes with cameras and token modes while K is fixed, cross-attention costs K x S rather than
(K + S)^2, and the cross-attention weights of the queries are exactly the "where does the policy
look" maps the replay report draws.

Each step outputs [translation (3), rot6d (6), gripper logit (1)] in normalised units (statistics
saved with the checkpoint), in the frame ``action_frame`` names: relative to the observed pose
(``delta``) or in the base frame (``absolute``). Whatever the frame, actions leave the model as deltas
to the observed pose, rot6d turned into a rotation vector (ARCHITECTURE.md action semantics).

This module only builds and computes (timm's vision_transformer.py, nanoGPT's model.py): the constructor
builds modules from the config and reads no file, training noise comes with the batch (the dataset's
augmentation), and ``predict`` changes no mode. Pretrained parts (local encoder weights, a pretrained
point head) and checkpoints are read and written by :mod:`vit_policy.model.checkpoint`
(``build_policy``, ``save_checkpoint``, ``load_checkpoint``). :class:`Policy` is the inference contract
the runner, the node, the closed loop and replay rely on.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vit_policy.config import ConfigError
from vit_policy.model.configuration import ActionFrame, PolicyConfig
from vit_policy.geometry import NormStats, matrix_from_rot6d_t, matrix_to_rot6d_t, quat_to_matrix_t, rot6d_to_rotvec
from vit_policy.images import to_model_input
from vit_policy.model.encoders import ImageEncoder, InstructionEncoder, PointHead
from vit_policy.model.pose_tokens import PoseTokenizer, pose_features
from vit_policy.observation import ActionChunk, Observation, ObservationError, ObservationSpec
from vit_policy.ood import OODMonitor, capture

ACTION_DIM = 10  # dp (3) + rot6d (6) + gripper (1)
EE_POINT_SCALE_M = 0.1  # points.frame: ee offsets in units of 10 cm, about the spread of a tabletop task

Batch = dict[str, Any]


class Policy(Protocol):
    """What the runner, the node, the closed loop and replay call on a policy, whatever runs it.

    :class:`VisuomotorPolicy` (torch) and :class:`vit_policy.deploy.OnnxPolicy` (ONNX Runtime) satisfy
    it; :func:`vit_policy.deploy.load_policy` returns one, in eval mode.
    """

    @property
    def cfg(self) -> PolicyConfig:
        """The policy's config: cameras, chunk size, control period, pose history."""

    @property
    def image_size(self) -> tuple[int, int]:
        """The encoder's input (H, W): frames are resized to it (``resize_uint8``) before ``predict``."""

    @property
    def ood(self) -> OODMonitor | None:
        """The out-of-distribution monitor whose scores the chunks carry, or None."""

    @property
    def spec(self) -> ObservationSpec:
        """What the policy was trained to see (cameras, control period, frame, gripper range): settings are checked against it."""

    def eval(self) -> Any:
        """Inference mode (torch modules; a no-op elsewhere). Loaders already return policies in it."""

    def predict(self, obs: Observation | list[Observation] | Batch, return_attention: bool = False) -> ActionChunk | list[ActionChunk]:
        """One observation -> ActionChunk; a list of observations or a batch -> list of ActionChunks."""


def actions_to_frame(action: torch.Tensor, position: torch.Tensor, quaternion: torch.Tensor, frame: ActionFrame) -> torch.Tensor:
    """Raw delta actions (B, K, >= 9) [dp, rot6d of exp(dr)] -> the head's frame (B, K, 9)."""
    a = action[..., :9]
    if frame == "delta":
        return a
    r0 = quat_to_matrix_t(quaternion)[:, None]  # (B, 1, 3, 3): R_k = exp(dr_k) R_0
    return torch.cat([a[..., :3] + position[:, None], matrix_to_rot6d_t(matrix_from_rot6d_t(a[..., 3:9]) @ r0)], -1)


def actions_from_frame(action: torch.Tensor, position: torch.Tensor, quaternion: torch.Tensor, frame: ActionFrame) -> torch.Tensor:
    """Inverse of :func:`actions_to_frame`: (B, K, 9) in the head's frame -> raw deltas [dp, rot6d]."""
    if frame == "delta":
        return action
    r0t = quat_to_matrix_t(quaternion)[:, None].transpose(-1, -2)
    return torch.cat([action[..., :3] - position[:, None], matrix_to_rot6d_t(matrix_from_rot6d_t(action[..., 3:9]) @ r0t)], -1)


# --------------------------------------------------------------------------------------------------
# Transformer blocks (pre-norm, scaled_dot_product_attention)
# --------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).reshape(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        if need_weights:  # explicit softmax so the weights can be returned (visualisation only)
            w = (q @ k.transpose(-2, -1) * (d // h) ** -0.5).softmax(-1)
            out, w = w @ v, w.mean(1)
        else:
            out, w = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0), None
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), w


class MLP(nn.Sequential):
    def __init__(self, dim: int, ratio: float, dropout: float) -> None:
        hidden = int(dim * ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, dropout)
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim, ratio, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h)[0]
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads, dropout)
        self.norm2, self.cross_attn = nn.LayerNorm(dim), Attention(dim, heads, dropout)
        self.norm3, self.mlp = nn.LayerNorm(dim), MLP(dim, ratio, dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.norm1(x)
        x = x + self.self_attn(h, h)[0]
        out, w = self.cross_attn(self.norm2(x), memory, need_weights)
        x = x + out
        return x + self.mlp(self.norm3(x)), w


# --------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------


class VisuomotorPolicy(nn.Module):
    """Cameras + EE pose (+ instruction) -> an ActionChunk of K target poses and gripper targets.

    ``VisuomotorPolicy(cfg)`` builds the modules from the config (random or hub weights) and reads no file;
    ``build_policy`` (``from_config``) also loads the pretrained parts ``cfg`` names, ``load_checkpoint``
    (``from_pretrained``) a trained checkpoint.
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        cams = cfg.cameras
        if cfg.encoder.shared:
            self.encoders = nn.ModuleDict({"shared": ImageEncoder(cfg.encoder)})
        else:
            self.encoders = nn.ModuleDict({c: ImageEncoder(cfg.encoder) for c in cams})
        enc = self.encoder_for(cams[0])
        if cfg.image_tokens:
            self.image_proj = nn.Linear(enc.embed_dim, d)
            self.camera_embed = nn.Parameter(torch.randn(len(cams), 1, d) * 0.02)
            self.token_embed = nn.Parameter(torch.randn(1, enc.num_tokens, d) * 0.02)  # slot within a camera
        self.pose_tokens = PoseTokenizer(cfg.pose, d)
        points = cfg.points
        self.point_head = PointHead(len(cams) * enc.num_patches, enc.embed_dim, points.count) if points else None
        if self.point_head is not None and cfg.encoder.freeze == "all":
            self.point_head.requires_grad_(False)  # pretrained perception stays as it was, with the backbone
        if points and points.frame == "ee":  # metres = normalised * std + mean: from the pretraining file, saved with the weights
            self.register_buffer("point_mean", torch.zeros(points.count, 3))
            self.register_buffer("point_std", torch.ones(points.count, 3))
        self.point_proj = nn.Linear(3, d) if points else None
        self.point_embed = nn.Parameter(torch.randn(1, points.count, d) * 0.02) if points else None
        self.language = InstructionEncoder(cfg.language) if cfg.language.enabled else None
        self.lang_proj = nn.Linear(self.language.embed_dim, d) if self.language is not None else None
        self.blocks = nn.ModuleList(EncoderBlock(d, cfg.n_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.n_encoder_layers))
        self.memory_norm = nn.LayerNorm(d)
        self.action_queries = nn.Parameter(torch.randn(1, cfg.chunk_size, d) * 0.02)
        self.decoder = nn.ModuleList(DecoderBlock(d, cfg.n_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.n_decoder_layers))
        self.head_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, ACTION_DIM)
        self.stats: dict[str, NormStats] | None = None
        self.ood: OODMonitor | None = None  # out-of-distribution monitor (vit_policy/ood.py): from the checkpoint, or None
        self.spec = ObservationSpec.of(cfg)  # what it was trained to see: training and the checkpoint fill in frame and gripper
        for name in ("state_center", "state_scale", "action_center", "action_scale"):
            self.register_buffer(name, torch.empty(0), persistent=False)  # filled by set_stats

    @classmethod
    def from_config(cls, cfg: PolicyConfig | dict[str, Any] | str | Path) -> "VisuomotorPolicy":
        """Build from a PolicyConfig, a mapping, or a YAML path, with the pretrained parts its config names:
        :func:`vit_policy.model.checkpoint.build_policy`."""
        from vit_policy.model.checkpoint import build_policy

        return build_policy(cfg)

    def compile_step(self) -> "VisuomotorPolicy":
        """torch.compile the step's transformer parts (each encoder backbone, the fusion and decoder blocks) for
        inference; the first forward of each input shape then compiles (tens of seconds on a CPU)."""
        for enc in self.encoders.values():
            enc.compile_backbone()
        for block in [*self.blocks, *self.decoder]:
            block.compile()
        return self

    # ---- properties ----------------------------------------------------------------------------------

    def encoder_for(self, camera: str) -> ImageEncoder:
        return self.encoders["shared"] if "shared" in self.encoders else self.encoders[camera]  # type: ignore[return-value]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.encoder_for(self.cfg.cameras[0]).img_size

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(encoder parameters, head parameters), trainable only: for separate learning rates."""
        enc = {id(p) for p in self.encoders.parameters()}
        params = [p for p in self.parameters() if p.requires_grad]
        return [p for p in params if id(p) in enc], [p for p in params if id(p) not in enc]

    # ---- normalisation statistics --------------------------------------------------------------------

    def set_stats(self, stats: dict[str, NormStats]) -> None:
        """Install normalisation statistics ('state' (D,), 'action' (K, 9)); required before use."""
        want = {"state": (self.pose_tokens.state_dim,), "action": (self.cfg.chunk_size, ACTION_DIM - 1)}
        for key, shape in want.items():
            if key not in stats:
                raise KeyError(f"normalisation statistics: {key!r} is missing (have {sorted(stats)})")
            if tuple(stats[key].mean.shape) != shape:
                raise ValueError(f"normalisation statistics {key!r}: shape {stats[key].mean.shape}, the model needs {shape}")
        self.stats = dict(stats)
        for key in want:
            mode = self.cfg.pose.normalization if key == "state" else self.cfg.action_normalization
            center, scale = stats[key].center_scale(str(mode))
            setattr(self, f"{key}_center", torch.as_tensor(center, device=self.device))
            setattr(self, f"{key}_scale", torch.as_tensor(scale, device=self.device))

    def _require_stats(self) -> None:
        if self.stats is None:
            raise RuntimeError(
                "normalisation statistics are missing: load a trained checkpoint (load_checkpoint), call "
                "set_stats(compute_norm_stats(...)), or for a plumbing check set_stats(identity_stats(cfg))"
            )

    # ---- forward ---------------------------------------------------------------------------------------

    def _check_batch(self, batch: Batch) -> None:
        images = batch.get("images")
        if not isinstance(images, dict):
            raise ObservationError("batch['images']: expected a mapping {camera: uint8 (B, H, W, 3)}")
        for cam in self.cfg.cameras:
            if cam not in images:
                raise ObservationError(f"batch['images']: camera {cam!r} is missing (have {sorted(images)})")
            img = images[cam]
            if img.dtype != torch.uint8:
                raise ObservationError(f"batch['images'][{cam!r}]: expected dtype uint8 RGB, got {img.dtype}")
            if img.ndim != 4 or img.shape[-1] != 3:
                raise ObservationError(f"batch['images'][{cam!r}]: expected shape (B, H, W, 3), got {tuple(img.shape)}")
        for key, width in (("position", 3), ("quaternion", 4)):
            val = batch.get(key)
            if val is None or val.shape[-1] != width:
                raise ObservationError(f"batch[{key!r}]: expected shape (B, {width})")
            capturing = val.is_cuda and torch.cuda.is_current_stream_capturing()  # a CUDA graph checks on the host
            if not capturing and not torch.isfinite(val).all():
                raise ObservationError(f"batch[{key!r}]: contains NaN or Inf")

    def state_vector(self, batch: Batch) -> torch.Tensor:
        """Raw (unnormalised) state features of a batch: what the statistics are computed on.

        A training batch may carry ``state_position`` (the dataset's augment.pose_noise_m: the position plus
        noise): the state reads it, while the labels, the point offsets and the decoded chunks stay relative
        to ``position``, the true pose.
        """
        dev = self.device
        grip = batch.get("gripper")
        b = batch["position"].shape[0]
        grip = torch.ones(b, device=dev) if grip is None else torch.as_tensor(grip, dtype=torch.float32, device=dev)
        hist = batch.get("history")
        position = batch.get("state_position")
        position = (batch["position"] if position is None else position).to(dev, torch.float32)
        return pose_features(
            position, batch["quaternion"].to(dev, torch.float32), grip,
            None if hist is None else hist.to(dev, torch.float32), self.cfg.pose,
        )

    def _encode_images(self, images: dict[str, torch.Tensor], return_attention: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Tokens per camera; a shared encoder sees all cameras in one batched forward."""
        cams, dev = self.cfg.cameras, self.device
        if "shared" not in self.encoders:
            out = []
            for cam in cams:
                enc = self.encoder_for(cam)
                out.append(enc(to_model_input(images[cam].to(dev), enc.img_size, enc.mean, enc.std), return_attention))
            return out
        enc = self.encoder_for(cams[0])
        x = torch.cat([to_model_input(images[c].to(dev), enc.img_size, enc.mean, enc.std) for c in cams])
        feats, attn = enc(x, return_attention)
        attns = attn.chunk(len(cams)) if attn is not None else [None] * len(cams)
        return list(zip(feats.chunk(len(cams)), attns))

    def encode_points(self, images: dict[str, torch.Tensor]) -> torch.Tensor:
        """The point head's (B, T, 3) normalised points for raw uint8 frames {camera: (B, H, W, 3)}."""
        if self.point_head is None:
            raise ConfigError("encode_points: this policy has no point head (points: null)")
        return self.point_head(torch.cat([f for f, _ in self._encode_images(images, False)], dim=1))

    def forward_features(self, batch: Batch, return_attention: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        """Context tokens fused by the encoder blocks: (B, S, d) and the layout needed for attention maps."""
        self._require_stats()
        self._check_batch(batch)
        state = (self.state_vector(batch) - self.state_center) / self.state_scale
        tokens = [self.pose_tokens(state)]
        if self.language is not None:
            instr = batch.get("instruction") or [self.cfg.language.instruction] * state.shape[0]
            tokens.insert(0, self.lang_proj(self.language(list(instr)))[:, None])
        layout: dict[str, Any] = {"cameras": {}, "pool_attention": {}}
        offset = sum(t.shape[1] for t in tokens)
        patches: list[torch.Tensor] = []
        for i, (cam, (feats, pool_attn)) in enumerate(zip(self.cfg.cameras, self._encode_images(batch["images"], return_attention))):
            patches.append(feats)
            if self.cfg.image_tokens:
                tokens.append(self.image_proj(feats) + self.camera_embed[i] + self.token_embed)
                layout["cameras"][cam] = (offset, offset + feats.shape[1])
                layout["pool_attention"][cam] = pool_attn
                offset += feats.shape[1]
        if self.point_head is not None:  # the pretrained points (goal, object, EE) as tokens of their own
            points = layout["points"] = self.point_head(torch.cat(patches, dim=1))
            if self.cfg.points is not None and self.cfg.points.frame == "ee":  # offsets from the observed (not the augmented) EE position
                ee = batch["position"].to(points.device, torch.float32)[:, None]
                points = (points * self.point_std + self.point_mean - ee) / EE_POINT_SCALE_M
            tokens.append(self.point_proj(points) + self.point_embed)
        x = torch.cat(tokens, dim=1)
        for block in self.blocks:
            x = block(x)
        return self.memory_norm(x), layout

    def forward_head(self, memory: torch.Tensor, return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Action queries read the context: (B, K, 10) normalised actions and last-layer cross-attention."""
        q = self.action_queries.expand(memory.shape[0], -1, -1)
        weights = None
        for i, block in enumerate(self.decoder):
            q, weights = block(q, memory, return_attention and i == len(self.decoder) - 1)
        return self.head(self.head_norm(q)), weights

    def forward(self, batch: Batch, return_attention: bool = False) -> dict[str, Any]:
        memory, layout = self.forward_features(batch, return_attention)
        out, weights = self.forward_head(memory, return_attention)
        result: dict[str, Any] = {"action": out}
        if "points" in layout:
            result["points"] = layout["points"]  # the point head's normalised (B, T, 3), for point_loss
        if return_attention:
            result["attention"] = self._patch_attention(weights, layout)
        return result

    def _patch_attention(self, weights: torch.Tensor, layout: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cross-attention of the action queries mapped onto each camera's patch grid (B, K, gh, gw)."""
        maps: dict[str, torch.Tensor] = {}
        for cam, (a, b) in layout["cameras"].items():
            enc = self.encoder_for(cam)
            w = weights[:, :, a:b]
            pool = layout["pool_attention"][cam]
            if pool is not None:
                w = w @ pool  # through the attention pool onto the patches
            elif enc.cfg.token_mode != "patches":
                continue  # one global token: no spatial map
            maps[cam] = w.reshape(w.shape[0], w.shape[1], *enc.grid)
        return maps

    # ---- training --------------------------------------------------------------------------------------

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """Actions already in the head's frame (..., >= 9) -> normalised units."""
        return (action[..., :9] - self.action_center) / self.action_scale

    def _origin(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["position"].to(self.device, torch.float32), batch["quaternion"].to(self.device, torch.float32)

    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss (:meth:`action_loss`) of this policy's prediction for ``batch``."""
        return self.action_loss(self.forward(batch)["action"], batch)

    def action_loss(self, pred: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """L1 on normalised translation and rotation, BCE on the gripper; padded steps are masked out.

        ``pred`` is a head output (B, K, 10) in normalised units (gripper as a logit), from this policy or
        any other predictor (the trainer scores the mean-action predictor with it). ``batch['action']`` is
        raw (B, K, 10) [dp, rot6d of the delta rotation, gripper in [0, 1]] and ``batch['action_mask']``
        (B, K) marks real (not padded) steps.
        """
        target = batch["action"].to(self.device, torch.float32)
        mask = batch.get("action_mask")
        mask = torch.ones(target.shape[:2], device=self.device) if mask is None else mask.to(self.device, torch.float32)
        denom = mask.sum().clamp_min(1.0)
        tn = self.normalize_action(actions_to_frame(target, *self._origin(batch), self.cfg.action_frame))
        l1 = (pred[..., :9] - tn).abs()
        l_trans = (l1[..., :3].mean(-1) * mask).sum() / denom
        l_rot = (l1[..., 3:9].mean(-1) * mask).sum() / denom
        l_grip = (F.binary_cross_entropy_with_logits(pred[..., 9], target[..., 9], reduction="none") * mask).sum() / denom
        loss = l_trans + self.cfg.rotation_loss_weight * l_rot + self.cfg.gripper_loss_weight * l_grip
        return loss, {"loss": loss.item(), "l1_translation": l_trans.item(), "l1_rotation": l_rot.item(), "gripper_bce": l_grip.item()}

    def point_loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Smooth L1 (as in pretraining) of the point head's normalised points (B, T, 3) against ``batch['points']``
        (normalised by the pretraining file's statistics), over samples with ``batch['points_mask']``."""
        target = batch["points"].to(pred.device, torch.float32)
        mask = batch["points_mask"].to(pred.device, torch.float32)
        err = F.smooth_l1_loss(pred.float(), target, beta=0.1, reduction="none").mean((1, 2))
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    # ---- inference ---------------------------------------------------------------------------------------

    def decode_actions_t(self, out: torch.Tensor, position: torch.Tensor, quaternion: torch.Tensor) -> torch.Tensor:
        """Normalised network output (B, K, 10) at the observed poses -> raw deltas [dp, rot6d, gripper prob] (B, K, 10), in torch
        (the tail of the exported ONNX graph too)."""
        raw = actions_from_frame(out[..., :9] * self.action_scale + self.action_center, position, quaternion, self.cfg.action_frame)
        return torch.cat([raw, torch.sigmoid(out[..., 9:])], -1)

    def decode_actions(self, out: torch.Tensor, batch: Batch) -> np.ndarray:
        """Normalised network output (B, K, 10) for ``batch`` -> raw deltas [dp, rot6d, gripper prob] (B, K, 10)."""
        return self.decode_actions_t(out, *self._origin(batch)).detach().cpu().double().numpy()

    def observation_batch(self, observations: list[Observation]) -> Batch:
        """Validated observations -> a model batch (uint8 images, float poses, the instruction)."""
        batch = observation_batch(self.cfg, observations)
        if self.language is not None:
            batch["instruction"] = [o.instruction or self.cfg.language.instruction for o in observations]
        return batch

    @torch.inference_mode()
    def predict(self, obs: Observation | list[Observation] | Batch, return_attention: bool = False) -> ActionChunk | list[ActionChunk]:
        """One observation -> ActionChunk; a list of observations or a batch -> list of ActionChunks.

        Changes no mode: the caller puts the model in eval mode (``.eval()``; ``load_checkpoint`` and
        ``load_policy`` return it so), else dropout stays on.
        """
        single = isinstance(obs, Observation)
        batch = self.observation_batch([obs] if single else obs) if isinstance(obs, (Observation, list)) else obs
        monitor = self.ood
        with capture(self) if monitor is not None else contextlib.nullcontext() as cap:
            out = self.forward(batch, return_attention)
        scores = monitor.score(cap.features()) if monitor is not None else None
        n = out["action"].shape[0]
        attention = None
        if return_attention:
            attention = [{c: m[i].float().cpu().numpy() for c, m in out["attention"].items()} for i in range(n)]
        ood = [{c: float(v[i]) for c, v in scores.items()} for i in range(n)] if scores is not None else None
        chunks = chunks_from_actions(self.decode_actions(out["action"], batch), batch["position"].numpy(force=True),
                                     batch["quaternion"].numpy(force=True), batch.get("stamp_ns"), self.cfg.control_dt_ns, attention, ood)
        return chunks[0] if single else chunks

    # ---- checkpoints (vit_policy.model.checkpoint) -----------------------------------------------------

    def save_pretrained(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """:func:`vit_policy.model.checkpoint.save_checkpoint` (the name HF / timm users look for)."""
        from vit_policy.model.checkpoint import save_checkpoint

        return save_checkpoint(self, directory, metadata)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu", ood: bool = True) -> "VisuomotorPolicy":
        """:func:`vit_policy.model.checkpoint.load_checkpoint` (the name HF / timm users look for)."""
        from vit_policy.model.checkpoint import load_checkpoint

        return load_checkpoint(directory, map_location, ood)


def observation_batch(cfg: PolicyConfig, observations: list[Observation]) -> Batch:
    """Validated observations -> a model batch (uint8 images, float poses) for the policy ``cfg`` describes, on any backend."""
    obs = [o.validate(cfg.cameras) for o in observations]
    batch: Batch = {
        "images": {c: torch.from_numpy(np.stack([o.images[c] for o in obs])) for c in cfg.cameras},
        "position": torch.tensor(np.stack([o.position for o in obs]), dtype=torch.float32),
        "quaternion": torch.tensor(np.stack([o.quaternion for o in obs]), dtype=torch.float32),
        "gripper": torch.tensor([o.gripper for o in obs], dtype=torch.float32),
        "stamp_ns": torch.tensor([o.stamp_ns for o in obs], dtype=torch.int64),
    }
    if cfg.pose.history:
        if any(o.history is None for o in obs):
            raise ObservationError(f"observation.history: this policy needs the last {cfg.pose.history} poses")
        batch["history"] = torch.tensor(np.stack([o.history for o in obs]), dtype=torch.float32)
    return batch


def chunks_from_actions(actions: np.ndarray, position: np.ndarray, quaternion: np.ndarray, stamps_ns: Any, dt_ns: int,
                        attention: list[dict[str, np.ndarray]] | None = None,
                        ood: list[dict[str, float]] | None = None) -> list[ActionChunk]:
    """Decoded actions (B, K, 10) [dp, rot6d, gripper prob] at the observed poses -> one ActionChunk each.

    The one place where network output becomes ActionChunks, for every inference backend (torch, ONNX Runtime).
    ``stamps_ns`` may be None (stamp 0).
    """
    actions = np.asarray(actions, np.float64)
    pos = np.asarray(position, np.float64)
    quat = np.asarray(quaternion, np.float64)
    quat = quat / np.linalg.norm(quat, axis=-1, keepdims=True)
    rotvec = rot6d_to_rotvec(actions[..., 3:9])  # one conversion for the whole batch
    stamps = [0] * len(actions) if stamps_ns is None else [int(s) for s in stamps_ns]
    return [ActionChunk(stamp_ns=stamps[i], dt_ns=int(dt_ns), origin_position=pos[i], origin_quaternion=quat[i],
                        delta_position=actions[i, :, :3], delta_rotation=rotvec[i], gripper=actions[i, :, 9],
                        attention=None if attention is None else attention[i], ood=None if ood is None else ood[i])
            for i in range(actions.shape[0])]



# --------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------


def compute_norm_stats(
    model_or_cfg: VisuomotorPolicy | PolicyConfig,
    position: np.ndarray,
    quaternion: np.ndarray,
    gripper: np.ndarray,
    action: np.ndarray,
    action_mask: np.ndarray | None = None,
    history: np.ndarray | None = None,
) -> dict[str, NormStats]:
    """Statistics of the state features (N, D) and of the actions (N, K, 9) in the head's frame over a training split."""
    cfg = model_or_cfg.cfg if isinstance(model_or_cfg, VisuomotorPolicy) else model_or_cfg
    f64 = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    pos, quat = f64(position), f64(quaternion)
    state = pose_features(pos, quat, f64(gripper), None if history is None else f64(history), cfg.pose).numpy()
    if np.shape(action)[1] != cfg.chunk_size:
        raise ValueError(f"actions: chunk length {np.shape(action)[1]} != chunk_size {cfg.chunk_size}")
    action = actions_to_frame(f64(action), pos, quat, cfg.action_frame).numpy()
    return {"state": NormStats.from_data(state), "action": NormStats.from_data(action, action_mask)}


def identity_stats(cfg: PolicyConfig) -> dict[str, NormStats]:
    """Statistics that change nothing: for untrained plumbing checks and the pre-training demo only."""
    from vit_policy.model.pose_tokens import component_dims

    return {"state": NormStats.identity((sum(component_dims(cfg.pose).values()),)), "action": NormStats.identity((cfg.chunk_size, 9))}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
