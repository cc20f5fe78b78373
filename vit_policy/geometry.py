"""Poses, quaternions (x, y, z, w), rot6d, pose deltas and normalisation statistics.

Conventions (ARCHITECTURE.md): poses in the robot base frame, quaternions in ROS / scipy order
(x, y, z, w), canonicalised to w >= 0 before a network sees them. An action step is a delta to the
pose at observation time: dp in the base frame, and a rotation applied on the left,
R_k = exp(dr_k) R_0. NumPy functions use scipy; the few torch functions are what the model needs on
its own tensors (same maths, checked against the NumPy ones in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

QUAT_NORM_TOL = 1e-2  # relative tolerance on |q| before a quaternion is rejected
STD_EPS = 1e-6  # a dimension whose spread is below this is treated as constant


class PoseError(ValueError):
    """A pose value is invalid; the message names the field."""


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def check_finite(value: np.ndarray, field: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise PoseError(f"{field}: contains NaN or Inf ({arr.tolist()})")
    return arr


def check_quaternion(q: np.ndarray, field: str = "orientation", tol: float = QUAT_NORM_TOL) -> np.ndarray:
    """Validate a quaternion (..., 4) in (x, y, z, w) order and return it normalised."""
    q = check_finite(q, field)
    if q.shape[-1] != 4:
        raise PoseError(f"{field}: expected 4 values (x, y, z, w), got shape {q.shape}")
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(np.abs(norm - 1.0) > tol):
        raise PoseError(
            f"{field}: quaternion norm {norm.squeeze().tolist()} is not 1 (tolerance {tol}); "
            "send a unit quaternion in (x, y, z, w) order"
        )
    return q / norm


def canonical_quat(q: np.ndarray) -> np.ndarray:
    """The sign-canonical quaternion (w >= 0); q and -q are the same rotation."""
    q = np.asarray(q, dtype=np.float64)
    return np.where(q[..., 3:4] < 0, -q, q)


# --------------------------------------------------------------------------------------------------
# Rotation representations (NumPy / scipy)
# --------------------------------------------------------------------------------------------------


def rot6d_from_matrix(m: np.ndarray) -> np.ndarray:
    """The first two columns of R, concatenated: (..., 3, 3) -> (..., 6) (Zhou et al. 2019)."""
    m = np.asarray(m, dtype=np.float64)
    return np.concatenate([m[..., :, 0], m[..., :, 1]], axis=-1)


def matrix_from_rot6d(d6: np.ndarray) -> np.ndarray:
    """Gram-Schmidt of the two columns: (..., 6) -> a proper rotation matrix (..., 3, 3)."""
    d6 = np.asarray(d6, dtype=np.float64)
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
    a2 = a2 - np.sum(b1 * a2, axis=-1, keepdims=True) * b1
    b2 = a2 / np.linalg.norm(a2, axis=-1, keepdims=True)
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-1)


def quat_to_rot6d(q: np.ndarray) -> np.ndarray:
    return rot6d_from_matrix(Rotation.from_quat(np.asarray(q).reshape(-1, 4)).as_matrix()).reshape(
        *np.shape(q)[:-1], 6
    )


def rot6d_to_quat(d6: np.ndarray) -> np.ndarray:
    m = matrix_from_rot6d(np.asarray(d6).reshape(-1, 6))
    return canonical_quat(Rotation.from_matrix(m).as_quat()).reshape(*np.shape(d6)[:-1], 4)


RotationFeature = Literal["rot6d", "quat", "rotvec"]
ROTATION_DIMS: dict[str, int] = {"rot6d": 6, "quat": 4, "rotvec": 3}


def rotation_features(q: np.ndarray, kind: RotationFeature = "rot6d") -> np.ndarray:
    """Rotation features of quaternions (..., 4) for a network input."""
    q = np.asarray(q, dtype=np.float64)
    flat = q.reshape(-1, 4)
    if kind == "rot6d":
        out = quat_to_rot6d(flat)
    elif kind == "quat":
        out = canonical_quat(flat / np.linalg.norm(flat, axis=-1, keepdims=True))
    elif kind == "rotvec":
        out = Rotation.from_quat(flat).as_rotvec()
    else:
        raise ValueError(f"rotation feature {kind!r} is not one of {list(ROTATION_DIMS)}")
    return out.reshape(*q.shape[:-1], ROTATION_DIMS[kind])


# --------------------------------------------------------------------------------------------------
# Pose deltas (the action convention)
# --------------------------------------------------------------------------------------------------


def pose_delta(p0: np.ndarray, q0: np.ndarray, p1: np.ndarray, q1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Delta from pose 0 to pose(s) 1: dp = p1 - p0 (base frame), dr = log(R1 R0^T) (rotvec)."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    r0 = Rotation.from_quat(np.asarray(q0, np.float64))
    q1 = np.asarray(q1, np.float64)
    r1 = Rotation.from_quat(q1.reshape(-1, 4))
    dr = (r1 * r0.inv()).as_rotvec().reshape(*q1.shape[:-1], 3)
    return p1 - p0, dr


def apply_delta(p0: np.ndarray, q0: np.ndarray, dp: np.ndarray, dr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pose_delta`: p = p0 + dp, R = exp(dr) R0. Returns canonical quaternions."""
    dp, dr = np.asarray(dp, np.float64), np.asarray(dr, np.float64)
    r = Rotation.from_rotvec(dr.reshape(-1, 3)) * Rotation.from_quat(np.asarray(q0, np.float64))
    q = canonical_quat(r.as_quat()).reshape(*dr.shape[:-1], 4)
    return np.asarray(p0, np.float64) + dp, q


def rotvec_to_rot6d(dr: np.ndarray) -> np.ndarray:
    dr = np.asarray(dr, np.float64)
    return rot6d_from_matrix(Rotation.from_rotvec(dr.reshape(-1, 3)).as_matrix()).reshape(*dr.shape[:-1], 6)


def rot6d_to_rotvec(d6: np.ndarray) -> np.ndarray:
    d6 = np.asarray(d6, np.float64)
    return Rotation.from_matrix(matrix_from_rot6d(d6.reshape(-1, 6))).as_rotvec().reshape(*d6.shape[:-1], 3)


def geodesic_deg(q_a: np.ndarray, q_b: np.ndarray) -> np.ndarray:
    """Angle in degrees between rotations given as quaternions (..., 4)."""
    a = Rotation.from_quat(np.asarray(q_a, np.float64).reshape(-1, 4))
    b = Rotation.from_quat(np.asarray(q_b, np.float64).reshape(-1, 4))
    return np.degrees((a.inv() * b).magnitude()).reshape(np.shape(q_a)[:-1])


# --------------------------------------------------------------------------------------------------
# Interpolation (the live timing rule and the training labels use the same maths)
# --------------------------------------------------------------------------------------------------


def lerp_pose(a: np.ndarray, b: np.ndarray, f: np.ndarray | float) -> np.ndarray:
    """Pose(s) [x y z qx qy qz qw] the fraction ``f`` of the way from ``a`` to ``b``: linear position, slerp
    orientation (the rotation a -> b scaled by f); f outside [0, 1] extrapolates. ``a``, ``b`` (..., 7), ``f`` (...)."""
    a, b, f = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(f, np.float64)[..., None]
    ra = Rotation.from_quat(a[..., 3:])
    step = (Rotation.from_quat(b[..., 3:]) * ra.inv()).as_rotvec()
    q = (Rotation.from_rotvec(step * f) * ra).as_quat()
    return np.concatenate([a[..., :3] + f * (b[..., :3] - a[..., :3]), q], axis=-1)


def interpolate_poses(t: np.ndarray, v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Poses (N, 7) at times ``s`` (N,) on a track of increasing stamps ``t`` (n,) and poses ``v`` (n, 7):
    :func:`lerp_pose` between the stamps around each time, exact at a stamp, held at the first / last pose
    outside the track (no gap limit: the live rule, ``inputs.interpolate_pose``, adds its limits around it)."""
    t = np.asarray(t, np.int64)
    s = np.clip(np.asarray(s, np.int64), t[0], t[-1])
    i = np.clip(np.searchsorted(t, s, side="right") - 1, 0, len(t) - 1)
    j = np.minimum(i + 1, len(t) - 1)
    span = (t[j] - t[i]).astype(np.float64)
    f = np.where(span > 0, (s - t[i]) / np.where(span > 0, span, 1.0), 0.0)
    return lerp_pose(v[i], v[j], f)


# --------------------------------------------------------------------------------------------------
# Torch versions used inside the model (batched, differentiable)
# --------------------------------------------------------------------------------------------------


def quat_to_matrix_t(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) (x, y, z, w) -> (..., 3, 3); normalises q first."""
    q = q / q.norm(dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)


def matrix_to_rot6d_t(m: torch.Tensor) -> torch.Tensor:
    return torch.cat([m[..., :, 0], m[..., :, 1]], dim=-1)


def matrix_from_rot6d_t(d6: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`matrix_from_rot6d` (Gram-Schmidt): (..., 6) -> (..., 3, 3)."""
    b1 = F.normalize(d6[..., :3], dim=-1)
    a2 = d6[..., 3:] - (b1 * d6[..., 3:]).sum(-1, keepdim=True) * b1
    b2 = F.normalize(a2, dim=-1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=-1)], dim=-1)


def rotation_features_t(q: torch.Tensor, kind: RotationFeature) -> torch.Tensor:
    """Torch twin of :func:`rotation_features` for the model's input path."""
    if kind == "rot6d":
        return matrix_to_rot6d_t(quat_to_matrix_t(q))
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., 3:4] < 0, -q, q)
    if kind == "quat":
        return q
    if kind == "rotvec":
        angle = 2 * torch.atan2(q[..., :3].norm(dim=-1, keepdim=True), q[..., 3:4])
        s = torch.sin(angle / 2)
        scale = torch.where(s.abs() < 1e-8, 2.0 / q[..., 3:4].clamp_min(1e-8), angle / s.clamp_min(1e-12))
        return q[..., :3] * scale
    raise ValueError(f"rotation feature {kind!r} is not one of {list(ROTATION_DIMS)}")


def quat_relative_t(q_from: torch.Tensor, q_to: torch.Tensor) -> torch.Tensor:
    """Quaternion of R_to R_from^T (x, y, z, w), batched: the left-applied delta rotation."""
    x1, y1, z1, w1 = q_to.unbind(-1)
    x2, y2, z2, w2 = (q_from * q_from.new_tensor([-1.0, -1.0, -1.0, 1.0])).unbind(-1)
    return torch.stack(
        [
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        ],
        dim=-1,
    )


# --------------------------------------------------------------------------------------------------
# Normalisation statistics
# --------------------------------------------------------------------------------------------------


@dataclass
class NormStats:
    """Per-dimension statistics of one quantity; saved with the checkpoint.

    A dimension whose spread is below STD_EPS is constant: it is centred but not scaled, so it never
    divides by zero.
    """

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def from_data(cls, x: np.ndarray, mask: np.ndarray | None = None) -> "NormStats":
        """Statistics over all leading axes but the last ``feature`` axes kept by ``mask`` (bool)."""
        x = np.asarray(x, np.float64)
        if mask is not None:
            mask = np.asarray(mask, bool)
            w = np.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x.shape)
            count = w.sum(axis=0)
            if np.any(count == 0):
                raise ValueError("normalisation statistics: some positions have no valid sample")
            mean = np.where(w, x, 0).sum(0) / count
            std = np.sqrt(np.where(w, (x - mean) ** 2, 0).sum(0) / count)
            lo = np.where(w, x, np.inf).min(0)
            hi = np.where(w, x, -np.inf).max(0)
        else:
            if x.shape[0] == 0:
                raise ValueError("normalisation statistics: no samples")
            mean, std, lo, hi = x.mean(0), x.std(0), x.min(0), x.max(0)
        check_finite(mean, "normalisation statistics")
        return cls(mean.astype(np.float32), std.astype(np.float32), lo.astype(np.float32), hi.astype(np.float32))

    @classmethod
    def identity(cls, shape: tuple[int, ...]) -> "NormStats":
        """Statistics that leave values unchanged: for untrained plumbing checks only."""
        z, o = np.zeros(shape, np.float32), np.ones(shape, np.float32)
        return cls(z, o.copy(), -o, o.copy())  # distinct arrays: safetensors rejects shared memory

    def center_scale(self, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(center, scale) such that normalised = (x - center) / scale; scale is never zero."""
        if mode == "mean_std":
            center, spread = self.mean, self.std
        elif mode == "min_max":
            center, spread = (self.max + self.min) / 2, (self.max - self.min) / 2
        else:
            raise ValueError(f"normalisation mode {mode!r} is not 'mean_std' or 'min_max'")
        scale = np.where(spread < STD_EPS, 1.0, spread).astype(np.float32)
        return center.astype(np.float32), scale

    def normalize(self, x: np.ndarray, mode: str = "mean_std") -> np.ndarray:
        c, s = self.center_scale(mode)
        return (np.asarray(x) - c) / s

    def unnormalize(self, x: np.ndarray, mode: str = "mean_std") -> np.ndarray:
        c, s = self.center_scale(mode)
        return np.asarray(x) * s + c

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in ("mean", "std", "min", "max")}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str, source: str = "statistics") -> "NormStats":
        missing = [f"{prefix}.{k}" for k in ("mean", "std", "min", "max") if f"{prefix}.{k}" not in tensors]
        if missing:
            raise KeyError(f"{source}: missing normalisation statistics {missing}")
        return cls(*(tensors[f"{prefix}.{k}"].numpy() for k in ("mean", "std", "min", "max")))
