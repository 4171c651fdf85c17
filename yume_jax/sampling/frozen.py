"""Frozen regions: the history latents of a Yume rollout (spec/yume.md "Sampling", "History memory").

A sampler integrates all of ``x`` but keeps the positions selected by ``mask`` out of the ODE/SDE: before
every velocity evaluation and after every update they are overwritten with

- mode "renoise" (Yume 1.0): ``sigma * noise + (1 - sigma) * latents`` with a FIXED ``noise`` draw, i.e. the
  clean history re-noised to the current sigma; the model sees one scalar sigma;
- mode "clean" (Yume 1.5): ``latents`` unchanged, and the model sees a per-position sigma that is 0 on the
  frozen positions (``where(mask, 0, sigma)``, shaped like ``mask``), which the model maps to per-token t.

The velocity function must still return an array shaped like ``x``; its values at frozen positions are
ignored (a model that only unpatchifies the current chunk can pad them with zeros).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

MODES = ("renoise", "clean")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Frozen:
    mask: jax.Array  # bool, same ndim as x and broadcastable to it; True = frozen (history)
    latents: jax.Array  # shaped like x: the clean values of the frozen positions (others ignored)
    noise: Optional[jax.Array]  # shaped like x in "renoise" mode (the fixed draw), None in "clean" mode
    mode: str = dataclasses.field(metadata=dict(static=True), default="renoise")

    def apply(self, x, sigma):
        """x with the frozen positions set to their value at ``sigma``."""
        if self.mode == "renoise":
            value = sigma * self.noise + (1.0 - sigma) * self.latents
        else:
            value = self.latents
        return jnp.where(self.mask, value.astype(x.dtype), x)

    def model_sigma(self, sigma):
        """The sigma handed to the velocity function: scalar (renoise) or per-position, 0 where frozen (clean)."""
        if self.mode == "clean":
            return jnp.where(self.mask, jnp.zeros((), jnp.float32), jnp.asarray(sigma, jnp.float32))
        return sigma

    def check(self, x) -> None:
        """Raise ValueError if this region does not fit latents ``x``."""
        if self.mode not in MODES:
            raise ValueError(f"frozen mode must be one of {MODES}, got {self.mode!r}")
        if self.mask.dtype != jnp.bool_:
            raise ValueError(f"frozen mask must be boolean, got {self.mask.dtype}")
        if self.mask.ndim != x.ndim or any(m not in (1, d) for m, d in zip(self.mask.shape, x.shape)):
            raise ValueError(f"frozen mask shape {self.mask.shape} does not broadcast to latents {x.shape}")
        if self.latents.shape != x.shape:
            raise ValueError(f"frozen latents shape {self.latents.shape} != latents shape {x.shape}")
        if self.mode == "renoise" and (self.noise is None or self.noise.shape != x.shape):
            got = None if self.noise is None else self.noise.shape
            raise ValueError(f"renoise mode needs a fixed noise draw shaped {x.shape}, got {got}")


def history_renoised(mask, latents, noise) -> Frozen:
    """Yume 1.0 history: re-noised to every sigma with the fixed ``noise`` draw."""
    return Frozen(jnp.asarray(mask, jnp.bool_), jnp.asarray(latents), jnp.asarray(noise), "renoise")


def history_clean(mask, latents) -> Frozen:
    """Yume 1.5 history: kept clean, sigma = 0 on its positions."""
    return Frozen(jnp.asarray(mask, jnp.bool_), jnp.asarray(latents), None, "clean")


def history_mask(shape, history: int, axis: int = 2):
    """Boolean mask of ``len(shape)`` dims, True on the first ``history`` entries of ``axis`` (the frame axis
    of [history | chunk] latents; axis 2 of the DiT's [B, C, F, H, W]), size 1 on every other axis."""
    axis = axis % len(shape)
    if not 0 <= history <= shape[axis]:
        raise ValueError(f"history {history} out of range for axis {axis} of size {shape[axis]}")
    sel = jnp.arange(shape[axis]) < history
    return sel.reshape([shape[axis] if a == axis else 1 for a in range(len(shape))])
