"""Block residual caching for sampling (spec/yume.md "Distillation and caching").

On refresh steps every block runs and each cached block stores its residual (output - input); on
the other steps the cached blocks are skipped and add their stored residual. The cache is carried
through the denoising ``lax.scan`` next to the latents, so the whole loop is still one compiled
program. The public code has no rule for which blocks to cache; :func:`calibrate` ranks blocks by the
error that caching each one alone causes on a calibration run (refresh every other step), and the
lowest-error blocks are the ones to cache (the paper caches 10 of 40).

With refresh every step nothing is ever skipped, and the result equals uncached sampling exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from yume_jax.sampling.frozen import Frozen


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


def sample_euler(model: Callable, params, noise, cond, uncond, *, sigmas, cfg_scale: float, refresh: int,
                 slot_of_layer, residuals, frozen: Optional[Frozen] = None, on_step=None):
    """Euler sampling (with CFG in one batch) whose model carries a block-residual cache.

    ``model(params, x, sigma, ctx, residuals, slots, refresh) -> (v, residuals)``; ``residuals`` is the
    initial cache, (num_slots, batch (x2 under CFG), tokens, dim). Same arithmetic as
    :func:`yume_jax.sampling.euler.sample` with :func:`yume_jax.sampling.cfg.guided`.
    """
    sigmas = jnp.asarray(sigmas, jnp.float32)
    slot_of_layer = jnp.asarray(slot_of_layer, jnp.int32)
    guided = cfg_scale != 1.0
    ctx = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond) if guided else cond

    def velocity(x, sigma, res, do_refresh):
        if not guided:
            return model(params, x, sigma, ctx, res, slot_of_layer, do_refresh)
        b = x.shape[0]
        s = jnp.asarray(sigma)
        s = s if s.ndim == 0 else jnp.broadcast_to(s, (b,) + s.shape[1:])
        s2 = s if s.ndim == 0 else jnp.concatenate([s, s])
        out, res = model(params, jnp.concatenate([x, x]), s2, ctx, res, slot_of_layer, do_refresh)
        v_c, v_u = out[:b], out[b:]
        return v_u + cfg_scale * (v_c - v_u), res

    def body(carry, i):
        x, res = carry
        if frozen is not None:
            x = frozen.apply(x, sigmas[i])
        xe, s = x, sigmas[i]
        if frozen is not None:
            xe, s = frozen.apply(x, sigmas[i]), frozen.model_sigma(sigmas[i])
        v, res = velocity(xe, s, res, (i % refresh) == 0)
        x = (x + (sigmas[i + 1] - sigmas[i]) * v.astype(x.dtype)).astype(x.dtype)
        if frozen is not None:
            x = frozen.apply(x, sigmas[i + 1])
        if on_step is not None:
            jax.debug.callback(on_step, i)
        return (x, res), None

    (x, _), _ = jax.lax.scan(body, (noise, residuals), jnp.arange(sigmas.shape[0] - 1))
    return x


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
