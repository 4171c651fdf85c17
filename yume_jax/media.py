"""Frame conversions between uint8 video frames (T, H, W, 3) and the VAE's (1, 3, T, H, W) in [-1, 1]."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def to_video(frames_uint8: np.ndarray) -> jax.Array:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float32 in [-1, 1]."""
    x = jnp.asarray(frames_uint8, jnp.float32) / 127.5 - 1.0
    return x.transpose(3, 0, 1, 2)[None]


def to_uint8(video: jax.Array) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    v = np.asarray(jax.device_get(video[0]), np.float32).transpose(1, 2, 3, 0)
    return np.clip(np.round((v + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of uint8 frames (T, H, W, 3) with antialiasing (jax.image)."""
    frames = np.asarray(frames)
    if frames.shape[1:3] == (height, width):
        return frames
    out = jax.image.resize(jnp.asarray(frames, jnp.float32), (frames.shape[0], height, width, 3), "bicubic")
    return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)
