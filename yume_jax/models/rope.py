"""3-axis rotary position embedding of the Wan DiT (spec/wan.md "Forward math" 4).

For head_dim d the d/2 complex frequencies are three tables with theta 10000: the frame axis gets
d - 4*(d//6) channels, height and width 2*(d//6) each; each table's frequencies are
theta^(-2i/axis_channels). Rotation pairs are ADJACENT channels (interleaved).

Positions are static (they follow from shapes), so the angle tables are computed in float64 NumPy at
trace time, as the reference does, and enter the compiled program as float32 constants.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def axis_channels(head_dim: int) -> tuple[int, int, int]:
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def grid_positions(f: int, h: int, w: int, f0: int = 0) -> np.ndarray:
    """(f*h*w, 3) integer (frame, row, col) positions in token order (frame-major)."""
    ff, hh, ww = np.meshgrid(np.arange(f) + f0, np.arange(h), np.arange(w), indexing="ij")
    return np.stack([ff.ravel(), hh.ravel(), ww.ravel()], axis=-1)


def rope_angles(positions: np.ndarray, head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """(L, head_dim/2) float64 rotation angles for integer positions (L, 3)."""
    positions = np.asarray(positions, dtype=np.float64)
    tables = []
    for axis, ch in enumerate(axis_channels(head_dim)):
        inv = 1.0 / theta ** (np.arange(0, ch, 2, dtype=np.float64)[: ch // 2] / ch)
        tables.append(np.outer(positions[:, axis], inv))
    return np.concatenate(tables, axis=1)


def rope_tables(positions: np.ndarray, head_dim: int, theta: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), each (L, head_dim/2) float32."""
    a = rope_angles(positions, head_dim, theta)
    return jnp.asarray(np.cos(a), jnp.float32), jnp.asarray(np.sin(a), jnp.float32)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate adjacent channel pairs of x (B, L, N, d) in float32; returns x's dtype.

    cos/sin are (L, d/2) or (B, L, d/2).
    """
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
    x1, x2 = xf[..., 0], xf[..., 1]
    if cos.ndim == 2:
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    else:
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
