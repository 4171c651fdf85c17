"""Block residual caching for sampling (spec/yume.md "Distillation and caching").

On refresh steps every block runs and each cached block stores its residual (output - input); on
the other steps the cached blocks are skipped and add their stored residual. The cache is the carried
model state of the ONE denoising loop (yume_jax/sampling/loop.py: a stateful velocity), so caching works
with every registered sampler, CFG and AAM, and the whole loop is still one compiled program. The model
side is :class:`yume_jax.models.wan.BlockCache` and ``YumeDiT.__call__(..., cache=, refresh=)``; a stateful
model ``model(params, x, sigma, ctx, step, cache)`` calls it with ``refresh=refreshes(interval, step)``.

The public code has no rule for which blocks to cache (the paper caches 10 of 40: :func:`default_count`
scales that to other depths). :func:`calibrate` picks the set greedily on a calibration run at the refresh
interval it will be used with: starting from no block, it adds the block whose addition increases the
measured error of the SET least, measuring every candidate set, until the set has the wanted size; the
final set's measured error is reported.

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


def default_count(num_layers: int) -> int:
    """Number of cached blocks when none are named: the paper's 10 of 40, i.e. round(num_layers / 4)
    (halves up), at least one block."""
    return max(1, int(num_layers / 4 + 0.5)) if num_layers > 0 else 0


def relative_error(out, reference) -> float:
    """||out - reference|| / ||reference|| in float64."""
    ref = np.asarray(reference, np.float64)
    return float(np.linalg.norm(np.asarray(out, np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


def calibrate(run: Callable[[np.ndarray, int], jax.Array], num_layers: int, reference: jax.Array,
              num: int | None = None, refresh: int = 2, progress: bool = True) -> dict:
    """Greedily choose ``num`` blocks (default :func:`default_count`) to cache at refresh interval ``refresh``.

    ``run(slot_of_layer, refresh) -> latents`` samples with the given cache layout (one compiled program:
    the layout is data). ``reference``: the uncached result. Each round measures, for every block not yet
    chosen, the relative L2 error of the chosen set plus that block, and adds the block with the least;
    that is num * num_layers - num * (num - 1) / 2 runs. Returns {"blocks": the set in the order chosen,
    "error": the final set's measured error, "steps": [{"block", "error"} per round: the set's error after
    adding the block], "refresh"}.
    """
    from tqdm import tqdm

    num = default_count(num_layers) if num is None else int(num)
    if not 0 <= num <= num_layers:
        raise ValueError(f"cannot cache {num} of {num_layers} blocks")
    chosen: list[int] = []
    steps: list[dict] = []
    error = 0.0
    total = num * num_layers - num * (num - 1) // 2
    bar = tqdm(total=total, desc="calibrating block cache", unit="run", disable=not progress)
    for _ in range(num):
        best = None
        for b in range(num_layers):
            if b in chosen:
                continue
            e = relative_error(run(slots(num_layers, chosen + [b]), refresh), reference)
            bar.update(1)
            if best is None or e < best[1]:
                best = (b, e)
        chosen.append(best[0])
        error = best[1]
        steps.append(dict(block=best[0], error=error))
    bar.close()
    return dict(blocks=chosen, error=error, steps=steps, refresh=refresh)
