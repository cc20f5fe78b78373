"""Images: RGB uint8 H x W x 3 inside the core; resize + normalise for an encoder.

ROS encodings are converted to RGB at the edge (see ``decode_ros_image`` below); the model input path
(``to_model_input``) is the one function that turns uint8 frames into a normalised float tensor, for
training, replay, the node and the simulator alike.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def to_model_input(
    images: torch.Tensor | np.ndarray,
    size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 (B, H, W, 3) or (H, W, 3) RGB -> float (B, 3, size, size) normalised by mean/std.

    Resizes (bilinear, antialiased) only when the frame is not already at the encoder's resolution,
    so frames cached at that size cost one cast and one fused normalisation.
    """
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"images: expected dtype uint8 RGB, got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"images: expected shape (B, H, W, 3) RGB, got {tuple(x.shape)}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = x.permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1) * 255.0
    return (x - m) / s


def resize_uint8(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize one RGB uint8 frame (H, W, 3) with the same filter as ``to_model_input``."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if image.shape[:2] == hw:
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float()
    x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
