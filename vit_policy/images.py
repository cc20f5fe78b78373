"""Images: RGB uint8 H x W x 3 inside the core; resize + normalise for an encoder.

ROS encodings are converted to RGB at the edge (see ``decode_ros_image`` below); the model input path
(``to_model_input``) is the one function that turns uint8 frames into a normalised float tensor, for
training, replay, the node and the simulator alike.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# resize_uint8 wraps read-only frames (a ROS message's bytes, parquet, memory maps) without copying them, and only
# reads them: torch's warning about writes through such a tensor does not apply
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning, module=__name__)


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
    m, s = _pixel_affine(tuple(map(float, mean)), tuple(map(float, std)), x.device, x.dtype)
    return (x - m) / s


@lru_cache(maxsize=16)
def _pixel_affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """mean and std in 0-255 units on the frames' device, made once: no host-to-device copy each step
    (none is allowed inside a CUDA graph)."""
    with torch.inference_mode(False):
        return tuple(torch.tensor(v, dtype=dtype).view(1, 3, 1, 1).mul(255.0).to(device) for v in (mean, std))  # type: ignore[return-value]


def resize_uint8(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize one RGB uint8 frame (H, W, 3) with the same filter as ``to_model_input``."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if image.shape[:2] == hw:
        return image
    # uint8 in, uint8 out: torch's CPU kernel for uint8 bilinear+antialias is ~5x faster than going through float
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
    x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).contiguous().numpy()


# --------------------------------------------------------------------------------------------------
# ROS image encodings <-> RGB uint8 (vectorised; used by vit_policy.messages for every message source)
# --------------------------------------------------------------------------------------------------

# encoding -> (channels, bytes per channel); every other encoding is rejected with this list.
ROS_ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1), "bgr8": (3, 1), "rgba8": (4, 1), "bgra8": (4, 1), "mono8": (1, 1), "8UC1": (1, 1),
    "mono16": (1, 2),
}
DEPTH_ENCODINGS = ("16UC1", "32FC1")


class ImageEncodingError(ValueError):
    """A ROS image cannot be decoded; the message names the field and what is expected."""


def as_uint8_buffer(data: object) -> np.ndarray:
    """A ROS ``uint8[]`` field (bytes, array.array('B'), numpy array or list) as a flat uint8 view, no copy if possible."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageEncodingError(f"data: expected uint8 bytes, got a {data.dtype} array")
        return data.reshape(-1)
    try:
        return np.frombuffer(memoryview(data).cast("B"), np.uint8)  # bytes, bytearray, array.array('B')
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)  # a plain list of ints


def check_ros_image(height: int, width: int, encoding: str, step: int, data: object) -> tuple[int, int, int, np.ndarray]:
    """Validate raw sensor_msgs/Image fields without touching pixels: (channels, bytes per channel, row bytes, buffer)."""
    if encoding in DEPTH_ENCODINGS:
        raise ImageEncodingError(
            f"encoding: {encoding!r} is a depth image; subscribe the policy to a colour topic "
            f"(supported: {sorted(ROS_ENCODINGS)})"
        )
    if encoding not in ROS_ENCODINGS:
        raise ImageEncodingError(f"encoding: {encoding!r} is not supported; publish one of {sorted(ROS_ENCODINGS)}")
    height, width, step = int(height), int(width), int(step)
    if height < 1 or width < 1:
        raise ImageEncodingError(f"height/width: an image needs at least one pixel, got {height}x{width}")
    channels, depth = ROS_ENCODINGS[encoding]
    row = width * channels * depth
    if step < row:
        raise ImageEncodingError(
            f"step: {step} bytes per row is less than width*channels*bytes = {width}*{channels}*{depth} = {row} for {encoding}"
        )
    buf = as_uint8_buffer(data)
    if buf.size != step * height:
        raise ImageEncodingError(
            f"data: {buf.size} bytes, expected step*height = {step}*{height} = {step * height} for a {width}x{height} {encoding} image"
        )
    return channels, depth, row, buf


def decode_ros_image(height: int, width: int, encoding: str, step: int, is_bigendian: int | bool, data: object) -> np.ndarray:
    """Raw sensor_msgs/Image fields -> RGB uint8 (H, W, 3), honouring row padding (``step``) and byte order.

    mono16 is scaled to 8 bits (v >> 8, as cv_bridge does); depth encodings are rejected because a
    depth map is not a colour image the encoder was trained on.
    """
    channels, depth, row, buf = check_ros_image(height, width, encoding, step, data)
    height, width, step = int(height), int(width), int(step)
    rows = buf.reshape(height, step)[:, :row]  # drop row padding (a view)
    if depth == 2:
        dt = np.dtype(">u2" if is_bigendian else "<u2")
        px = np.ascontiguousarray(rows).view(dt).reshape(height, width)
        gray = (px >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    px = rows.reshape(height, width, channels)
    if channels == 1:
        return np.repeat(px, 3, axis=2)
    if encoding.startswith("bgr"):  # three channel copies: 4x faster than a reversed-stride copy
        rgb = np.empty((height, width, 3), np.uint8)
        rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2] = px[:, :, 2], px[:, :, 1], px[:, :, 0]
        return rgb
    rgb = np.ascontiguousarray(px[:, :, :3])
    return rgb.copy() if np.may_share_memory(rgb, buf) else rgb  # an array of its own, never a view of the message


def encode_ros_image(rgb: np.ndarray, encoding: str = "rgb8") -> tuple[bytes, int]:
    """RGB uint8 (H, W, 3) -> (data bytes, step) in ``encoding`` (rgb8, bgr8, rgba8, bgra8, mono8)."""
    if encoding not in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        raise ImageEncodingError(f"encoding: cannot encode to {encoding!r}; use rgb8, bgr8, rgba8, bgra8 or mono8")
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageEncodingError(
            f"rgb: expected a uint8 (H, W, 3) array, got {getattr(rgb, 'dtype', type(rgb))} {getattr(rgb, 'shape', '')}"
        )
    if encoding == "mono8":
        px = (rgb.astype(np.uint16) @ np.array([77, 150, 29], np.uint16) >> 8).astype(np.uint8)[:, :, None]
    else:
        px = rgb[:, :, ::-1] if encoding.startswith("bgr") else rgb
        if encoding.endswith("a8"):
            px = np.concatenate([px, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return np.ascontiguousarray(px).tobytes(), rgb.shape[1] * px.shape[2]
