"""Block residual caching for sampling (spec/yume.md "Distillation and caching").

On refresh steps every block runs and each cached block stores its residual (output - input); on
the other steps the cached blocks are skipped and add their stored residual. The cache is the carried
model state of the ONE denoising loop (yume_jax/sampling/loop.py: a stateful velocity), so caching works
with every registered sampler, CFG and AAM, and the whole loop is still one compiled program. The model
side is :class:`yume_jax.models.wan.BlockCache` and ``YumeDiT.__call__(..., cache=, refresh=)``; a stateful
model ``model(params, x, sigma, ctx, step, cache)`` calls it with ``refresh=refreshes(interval, step)``.

The public code has no rule for which blocks to cache; :func:`calibrate` ranks blocks by the error that
caching each one alone causes on a calibration run (refresh every other step), and the lowest-error blocks
are the ones to cache (the paper caches 10 of 40).

With refresh every step nothing is ever skipped, and the result equals uncached sampling exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from yume_jax.models.wan import BlockCache


@dataclass(frozen=True)
class CacheConfig:
    refresh: int = 2  # run every block every `refresh` steps
    blocks: tuple[int, ...] = ()  # cached layers (0-based)
    dtype: str = "bfloat16"  # storage dtype of the residuals

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if self.refresh < 1:
            raise ValueError(f"cache refresh interval must be >= 1, got {self.refresh}")
        if len(set(self.blocks)) != len(self.blocks):
            raise ValueError(f"cached blocks repeat: {self.blocks}")


def slots(num_layers: int, blocks: Sequence[int]) -> np.ndarray:
    """(num_layers,) int32: slot index of each cached layer, -1 elsewhere."""
    out = np.full((num_layers,), -1, np.int32)
    for i, b in enumerate(blocks):
        if not 0 <= b < num_layers:
            raise ValueError(f"cached block {b} out of range 0..{num_layers - 1}")
        out[b] = i
    return out


def init(config: CacheConfig, num_layers: int, batch: int, tokens: int, dim: int) -> BlockCache:
    """An empty cache for a model of ``num_layers`` x ``dim`` run on ``batch`` x ``tokens`` (batch: 2B
    under one-batch CFG). Step 0 always refreshes, so the zeros are never read."""
    return BlockCache(jnp.zeros((max(len(config.blocks), 1), batch, tokens, dim), jnp.dtype(config.dtype)),
                      jnp.asarray(slots(num_layers, config.blocks)))


def refreshes(refresh: int, step) -> jax.Array:
    """Whether loop step ``step`` runs every block (a traced bool): every ``refresh`` steps from step 0."""
    return (jnp.asarray(step) % refresh) == 0


def calibrate(run: Callable[[np.ndarray, int], jax.Array], num_layers: int, reference: jax.Array,
              progress: bool = True) -> list[dict]:
    """Rank blocks by the relative L2 error of the final latents when only that block is cached.

    ``run(slot_of_layer, refresh) -> latents`` samples with the given cache layout (one compiled program:
    the layout is data). ``reference``: the uncached result. Returns [{block, error}] sorted ascending.
    """
    from tqdm import tqdm

    ref = np.asarray(reference, np.float64)
    norm = max(np.linalg.norm(ref), 1e-30)
    rows = []
    it = range(num_layers)
    for b in (tqdm(it, desc="calibrating block cache", unit="block") if progress else it):
        out = np.asarray(run(slots(num_layers, [b]), 2), np.float64)
        rows.append(dict(block=b, error=float(np.linalg.norm(out - ref) / norm)))
    return sorted(rows, key=lambda r: r["error"])
