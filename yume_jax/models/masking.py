"""MVDT masking (spec/yume.md "MVDT", after MDT): MAE-style token masking with a side-interpolator.

Training only. After patch embedding, a random fraction r = 0.3 + U(0, 0.2) of the tokens (history
included) is removed; kept tokens keep their original RoPE positions. The first
(num_layers + 1) // 2 - 1 blocks see only kept tokens; then the kept tokens are scattered back, the
removed places get the learnable ``mask_token``, the side block runs on the full sequence and its
output is used only at the masked places; the remaining blocks run on the full sequence.

Compilation is bounded: the kept-token count is static (it sets shapes), so it is rounded UP to one
of ``buckets`` evenly spaced counts. For r in [0.3, 0.5] that is at most ~0.2 * buckets + 2
distinct shapes whatever the random ratios (5 with the default 16 buckets); the realised mask
ratio is the sampled one rounded down to the bucket, never above it.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_BUCKETS = 16


def sample_ratio(rng: np.random.Generator, low: float = 0.3, width: float = 0.2) -> float:
    """r = low + U(0, width), drawn on the host (it decides a static shape)."""
    return float(low + width * rng.random())


def keep_count(num_tokens: int, ratio: float, buckets: int = DEFAULT_BUCKETS) -> int:
    """Tokens kept for mask ``ratio``, rounded up to a multiple of ceil(num_tokens / buckets)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    step = math.ceil(num_tokens / buckets)
    keep = num_tokens - math.floor(ratio * num_tokens)
    return min(num_tokens, math.ceil(keep / step) * step)


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
