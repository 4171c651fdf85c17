"""Frame conversions between uint8 video frames (T, H, W, 3) and the VAE's (1, 3, T, H, W) in [-1, 1]; start
images read as uint8 RGB whatever their mode (:func:`load_image`)."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from yume_jax.core.cli import UserError


class NonFiniteError(UserError):
    """The model produced NaN or inf (broken weights, an extreme guidance scale): never written as a video."""


def load_image(path) -> np.ndarray:
    """An image file as uint8 RGB (H, W, 3). 16-bit and 32-bit integer images are scaled to 8 bits (not
    clipped: a 16-bit PNG is not white), float images from [0, 1], palette / CMYK / grey / alpha converted.
    Missing, unreadable, truncated or empty images: :class:`UserError` naming the file."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise UserError(f"image not found: {path}" if not p.exists() else f"not a regular file: {path}")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode.startswith("I;16") or im.mode == "I":
                a = np.asarray(im, dtype=np.int64)
                hi = 65535 if (im.mode.startswith("I;16") or a.max(initial=0) > 255) else 255
                if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
                    raise ValueError(f"integer pixel values outside 0..65535 ({im.mode})")
                g = np.round(a * (255.0 / hi)).astype(np.uint8)
                rgb = np.repeat(g[..., None], 3, axis=-1)
            elif im.mode == "F":
                a = np.asarray(im, dtype=np.float64)
                if not np.isfinite(a).all():
                    raise ValueError("non-finite pixel values")
                scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0
                g = np.clip(np.round(a * scale), 0, 255).astype(np.uint8)
                rgb = np.repeat(g[..., None], 3, axis=-1)
            else:
                if im.mode in ("P", "PA") and "transparency" in im.info:
                    im = im.convert("RGBA")
                rgb = np.asarray(im.convert("RGB"))
    except UserError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise UserError(f"cannot read image {path}: {type(e).__name__}: {' '.join(str(e).split())}") from None
    if rgb.ndim != 3 or rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise UserError(f"cannot read image {path}: empty image")
    return np.ascontiguousarray(rgb)


def to_video(frames_uint8: np.ndarray) -> jax.Array:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float32 in [-1, 1]."""
    x = jnp.asarray(frames_uint8, jnp.float32) / 127.5 - 1.0
    return x.transpose(3, 0, 1, 2)[None]


def to_uint8(video: jax.Array) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8; :class:`NonFiniteError` if any value is NaN or inf
    (instead of a black frame). The conversion and the NaN/inf count run on the device (:func:`_uint8_frames`),
    so the host fetches 1 byte per value instead of 4 and does no per-pixel work (at 704x1280 a 32-frame
    chunk is 86 M values: the float32 copy and a NumPy conversion cost more than the uint8 copy)."""
    frames, bad = jax.device_get(_uint8_frames(jnp.asarray(video)))
    if int(bad):
        raise NonFiniteError(f"the model produced {int(bad)} non-finite (NaN/inf) pixel values: check the "
                             "checkpoint's weights and the guidance scale (--cfg); nothing of this chunk was written")
    return np.asarray(frames)


@jax.jit
def _uint8_frames(video: jax.Array):
    """(1, 3, T, H, W) -> ((T, H, W, 3) uint8 rounded half to even, number of non-finite values)."""
    v = jnp.transpose(video[0].astype(jnp.float32), (1, 2, 3, 0))
    bad = v.size - jnp.count_nonzero(jnp.isfinite(v))
    return jnp.clip(jnp.round((v + 1.0) * 127.5), 0, 255).astype(jnp.uint8), bad


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of uint8 frames (T, H, W, 3) with antialiasing (jax.image)."""
    frames = np.asarray(frames)
    if frames.shape[1:3] == (height, width):
        return frames
    out = jax.image.resize(jnp.asarray(frames, jnp.float32), (frames.shape[0], height, width, 3), "bicubic")
    return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)
