"""The denoising loop shared by all samplers: one ``lax.scan`` over the steps, so a whole loop is a single
traced computation (one compile per shape, no Python dispatch per step).

Conventions (spec/yume.md "Sampling"): ``sigmas`` has N + 1 entries ending in 0; step i integrates from
sigmas[i] to sigmas[i + 1]. Step i draws its noise (if any) from ``fold_in(key, i)``, so a look-ahead that
visits step j uses the same draw as step j itself.

Velocities come in two forms. A plain velocity is ``velocity(x, sigma) -> v`` with v shaped like x. A
STATEFUL velocity is ``velocity(x, sigma, step, state) -> (v, state)``: the loop carries ``state`` (any
pytree) through the scan next to the latents and hands every evaluation the index of the step it belongs to.
Block residual caching (yume_jax/sampling/cache.py) is such a state, so caching is an option of this one
loop, not a second loop. The samplers (euler, sde, tts) are written against the stateful form;
:func:`stateless` lifts a plain velocity into it with an empty state.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from yume_jax.sampling.frozen import Frozen

Velocity = Callable[[jax.Array, jax.Array], jax.Array]
StatefulVelocity = Callable[[jax.Array, jax.Array, jax.Array, object], tuple[jax.Array, object]]


def stateless(velocity: Velocity) -> StatefulVelocity:
    """``velocity(x, sigma)`` as a stateful velocity that carries its state unchanged."""
    return lambda x, sigma, step, state: (velocity(x, sigma), state)


def evaluate(velocity: StatefulVelocity, x, sigma, step, state, frozen: Optional[Frozen] = None):
    """(v, state) of v(x, sigma) at loop step ``step``, with the frozen region set to its value at sigma
    (and per-token sigma in clean mode)."""
    if frozen is not None:
        x = frozen.apply(x, sigma)
        sigma = frozen.model_sigma(sigma)
    v, state = velocity(x, sigma, step, state)
    if v.shape != x.shape:
        raise ValueError(f"velocity returned shape {v.shape}, expected the latents' shape {x.shape}")
    return v.astype(x.dtype), state


def normal(key, like):
    """N(0, I) shaped like ``like``, drawn as a flat vector then reshaped: the same values as a direct draw
    (threefry is partitionable, the counter is the flat index) but XLA:CPU compiles some small N-d draws
    pathologically slowly (30 s for [2, 3, 4, 8, 10] inside a scan, under 1 s flat)."""
    return jax.random.normal(key, (like.size,), jnp.float32).reshape(like.shape).astype(like.dtype)


def step_key(key, i):
    return None if key is None else jax.random.fold_in(key, i)


def denoise(update, x, sigmas, *, state=(), key=None, frozen: Optional[Frozen] = None, pre=None, on_step=None):
    """Run ``(x, state) <- update(i, x, step_key(key, i), state)`` for i = 0 .. N - 1 inside one scan;
    returns the final x.

    ``pre(i, x) -> x`` runs before each step (AAM's replacement); the frozen region is re-set before and after
    every step; ``on_step(i)`` is a host callback (progress bars), called once per step.
    """
    sigmas = jnp.asarray(sigmas, jnp.float32)
    if frozen is not None:
        frozen.check(x)

    def body(carry, i):
        x, state = carry
        if pre is not None:
            x = pre(i, x)
        if frozen is not None:
            x = frozen.apply(x, sigmas[i])
        x_next, state = update(i, x, step_key(key, i), state)
        x = x_next.astype(x.dtype)
        if frozen is not None:
            x = frozen.apply(x, sigmas[i + 1])
        if on_step is not None:
            jax.debug.callback(on_step, i)
        return (x, state), None

    (x, _), _ = jax.lax.scan(body, (x, state), jnp.arange(sigmas.shape[0] - 1))
    return x
