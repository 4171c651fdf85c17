"""MVDT masking (spec/yume.md "MVDT", after MDT): MAE-style token masking with a side-interpolator.

Training only. After patch embedding, a random fraction r = 0.3 + U(0, 0.2) of the tokens (history
included) is removed; kept tokens keep their original RoPE positions. The first
(num_layers + 1) // 2 - 1 blocks see only kept tokens; then the kept tokens are scattered back, the
removed places get the learnable ``mask_token``, the side block runs on the full sequence and its
output is used only at the masked places; the remaining blocks run on the full sequence.

Compilation is bounded and the law is kept: the kept-token count is static (it sets shapes), so the
masked count r N is rounded to one of ``buckets`` evenly spaced integers between ceil(0.3 N) and
floor(0.5 N) (:func:`mask_grid`) by randomised rounding between its two neighbours (:func:`keep_count`):
the upper one with probability proportional to the distance from the lower one. The expectation of
the applied count is then exactly r N (up to clipping r N into the grid, less than one token), every
applied ratio lies in [0.3, 0.5], and at most ``buckets`` shapes are ever compiled per sequence length.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_BUCKETS = 5  # distinct masked-token counts (compiled shapes) per sequence length


def sample_ratio(rng: np.random.Generator, low: float = 0.3, width: float = 0.2) -> float:
    """r = low + U(0, width), drawn on the host (it decides a static shape)."""
    return float(low + width * rng.random())


def mask_grid(num_tokens: int, low: float = 0.3, width: float = 0.2,
              buckets: int = DEFAULT_BUCKETS) -> np.ndarray:
    """The masked-token counts that may be applied: up to ``buckets`` distinct, evenly spaced integers from
    ceil(low N) to floor((low + width) N) (sorted int array). If no integer lies in that range (tiny N),
    the two integers around it; with ``buckets`` = 1, the count nearest the law's mean."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if not (0.0 <= low and width >= 0.0 and low + width < 1.0):
        raise ValueError(f"mask ratio range [{low}, {low + width}] must lie in [0, 1)")
    a, b = round(low * num_tokens, 9), round((low + width) * num_tokens, 9)
    lo, hi = math.ceil(a), math.floor(b)
    if lo > hi:
        lo, hi = math.floor(a), math.ceil(b)
    if buckets == 1:
        return np.asarray([min(max(round((a + b) / 2), lo), hi)], np.int64)
    return np.unique(np.rint(np.linspace(lo, hi, buckets)).astype(np.int64))


def keep_count(num_tokens: int, ratio: float, u: float, low: float = 0.3, width: float = 0.2,
               buckets: int = DEFAULT_BUCKETS) -> int:
    """Tokens kept for mask ``ratio``: ratio N (clipped into :func:`mask_grid`) rounded to the upper of its
    two neighbouring grid counts when ``u`` (uniform in [0, 1)) < (ratio N - lower) / (upper - lower),
    else to the lower, so that E_u[masked] = ratio N."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    grid = mask_grid(num_tokens, low, width, buckets)
    x = min(max(ratio * num_tokens, float(grid[0])), float(grid[-1]))
    if len(grid) == 1:
        return num_tokens - int(grid[0])
    j = min(int(np.searchsorted(grid, x, side="right")) - 1, len(grid) - 2)
    g0, g1 = int(grid[j]), int(grid[j + 1])
    masked = g1 if u < (x - g0) / (g1 - g0) else g0
    return num_tokens - masked


def draw_keep(rng: np.random.Generator, num_tokens: int, low: float = 0.3, width: float = 0.2,
              buckets: int = DEFAULT_BUCKETS) -> int:
    """One draw of the kept-token count: r = low + U(0, width), then :func:`keep_count` with a second uniform."""
    ratio = sample_ratio(rng, low, width)
    return keep_count(num_tokens, ratio, float(rng.random()), low, width, buckets)


def split_layer(num_layers: int) -> int:
    """Blocks [0, split) run on kept tokens; the side block comes before block ``split``."""
    return (num_layers + 1) // 2 - 1


def sample_keep(key: jax.Array, batch: int, num_tokens: int, keep: int) -> jax.Array:
    """(B, keep) sorted indices of kept tokens, a uniform random subset per sample."""
    noise = jax.random.uniform(key, (batch, num_tokens))
    return jnp.sort(jnp.argsort(noise, axis=1)[:, :keep], axis=1)


def gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x (B, L, ...) at idx (B, K) -> (B, K, ...)."""
    return jnp.take_along_axis(x, idx.reshape(*idx.shape, *([1] * (x.ndim - 2))), axis=1)


def scatter_with_mask_token(kept: jax.Array, idx: jax.Array, num_tokens: int, mask_token: jax.Array):
    """Full sequence (B, L, D) with kept tokens in place and ``mask_token`` elsewhere, plus the
    (B, L) boolean mask that is True at masked (removed) places."""
    b, _, d = kept.shape
    full = jnp.broadcast_to(mask_token.reshape(1, 1, d).astype(kept.dtype), (b, num_tokens, d))
    rows = jnp.arange(b)[:, None]
    full = full.at[rows, idx].set(kept)
    masked = jnp.ones((b, num_tokens), bool).at[rows, idx].set(False)
    return full, masked
