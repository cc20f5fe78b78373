"""End-effector pose (+ gripper, + short history) -> normalised features -> tokens.

``pose_features`` is the one definition of the state vector: the model calls it on its inputs and the
statistics are computed by calling it on the training data, so both always agree.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vit_policy.model.configuration import PoseConfig
from vit_policy.geometry import ROTATION_DIMS, quat_relative_t, rotation_features_t


def component_dims(cfg: PoseConfig) -> dict[str, int]:
    """Width of each state component, in the order they are concatenated."""
    r = ROTATION_DIMS[cfg.rotation]
    dims = {"position": 3, "rotation": r, "gripper": 1}
    dims.update({f"history{i}": 3 + r for i in range(cfg.history)})
    return dims


def pose_features(
    position: torch.Tensor, quaternion: torch.Tensor, gripper: torch.Tensor, history: torch.Tensor | None, cfg: PoseConfig
) -> torch.Tensor:
    """(B, 3), (B, 4), (B,), (B, H, 7) -> raw state vector (B, D) laid out as ``component_dims``.

    History poses enter as deltas to the current pose (dp in the base frame, rotation R_h R_now^T), so
    the features do not depend on where in the workspace the arm is.
    """
    parts = [position, rotation_features_t(quaternion, cfg.rotation), gripper.reshape(-1, 1)]
    if cfg.history:
        if history is None or history.shape[1] < cfg.history:
            got = None if history is None else tuple(history.shape)
            raise ValueError(f"history: the policy needs the last {cfg.history} poses (B, {cfg.history}, 7), got {got}")
        hist = history[:, -cfg.history :]
        dp = hist[..., :3] - position[:, None]
        q_now = quaternion[:, None].expand(-1, cfg.history, -1)
        dq = quat_relative_t(q_now / q_now.norm(dim=-1, keepdim=True), hist[..., 3:] / hist[..., 3:].norm(dim=-1, keepdim=True))
        parts.append(torch.cat([dp, rotation_features_t(dq, cfg.rotation)], dim=-1).flatten(1))
    return torch.cat(parts, dim=-1)


class PoseTokenizer(nn.Module):
    """Normalised state vector -> tokens: one per component with a type embedding, or one token."""

    def __init__(self, cfg: PoseConfig, d_model: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.dims = component_dims(cfg)
        self.state_dim = sum(self.dims.values())
        if cfg.tokens == "single":
            self.proj = nn.ModuleList([nn.Linear(self.state_dim, d_model)])
        else:
            # one projection for position, rotation, gripper; history steps share one projection
            self.proj = nn.ModuleList(nn.Linear(d, d_model) for d in list(self.dims.values())[: 3 + min(cfg.history, 1)])
        self.type_embed = nn.Parameter(torch.randn(self.num_tokens, d_model) * 0.02)

    @property
    def num_tokens(self) -> int:
        return 1 if self.cfg.tokens == "single" else len(self.dims)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised -> (B, T, d_model)."""
        if self.cfg.tokens == "single":
            return self.proj[0](state)[:, None] + self.type_embed
        chunks = torch.split(state, list(self.dims.values()), dim=-1)
        tokens = [self.proj[min(i, 3)](c) for i, c in enumerate(chunks)]
        return torch.stack(tokens, dim=1) + self.type_embed
