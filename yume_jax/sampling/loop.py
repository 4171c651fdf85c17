"""The denoising loop shared by all samplers: one ``lax.scan`` over the steps, so a whole loop is a single
traced computation (one compile per shape, no Python dispatch per step).

Conventions (spec/yume.md "Sampling"): ``sigmas`` has N + 1 entries ending in 0; step i integrates from
sigmas[i] to sigmas[i + 1]; ``velocity(x, sigma) -> v`` with v shaped like x. Step i draws its noise (if
any) from ``fold_in(key, i)``, so a look-ahead that visits step j uses the same draw as step j itself.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from yume_jax.sampling.frozen import Frozen

Velocity = Callable[[jax.Array, jax.Array], jax.Array]


def evaluate(velocity: Velocity, x, sigma, frozen: Optional[Frozen] = None):
    """v(x, sigma) with the frozen region set to its value at sigma (and per-token sigma in clean mode)."""
    if frozen is not None:
        x = frozen.apply(x, sigma)
        sigma = frozen.model_sigma(sigma)
    v = velocity(x, sigma)
    if v.shape != x.shape:
        raise ValueError(f"velocity returned shape {v.shape}, expected the latents' shape {x.shape}")
    return v.astype(x.dtype)


def normal(key, like):
    """N(0, I) shaped like ``like``, drawn as a flat vector then reshaped: the same values as a direct draw
    (threefry is partitionable, the counter is the flat index) but XLA:CPU compiles some small N-d draws
    pathologically slowly (30 s for [2, 3, 4, 8, 10] inside a scan, under 1 s flat)."""
    return jax.random.normal(key, (like.size,), jnp.float32).reshape(like.shape).astype(like.dtype)


def step_key(key, i):
    return None if key is None else jax.random.fold_in(key, i)


def denoise(update, x, sigmas, *, key=None, frozen: Optional[Frozen] = None, pre=None, on_step=None):
    """Run ``x <- update(i, x, step_key(key, i))`` for i = 0 .. N - 1 inside one scan.

    ``pre(i, x) -> x`` runs before each step (AAM's replacement); the frozen region is re-set before and after
    every step; ``on_step(i)`` is a host callback (progress bars), called once per step.
    """
    sigmas = jnp.asarray(sigmas, jnp.float32)
    if frozen is not None:
        frozen.check(x)

    def body(x, i):
        if pre is not None:
            x = pre(i, x)
        if frozen is not None:
            x = frozen.apply(x, sigmas[i])
        x = update(i, x, step_key(key, i)).astype(x.dtype)
        if frozen is not None:
            x = frozen.apply(x, sigmas[i + 1])
        if on_step is not None:
            jax.debug.callback(on_step, i)
        return x, None

    x, _ = jax.lax.scan(body, x, jnp.arange(sigmas.shape[0] - 1))
    return x
