"""Euler sampler on a sigma schedule (spec/yume.md "Sampling": x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v)."""
from __future__ import annotations

import jax.numpy as jnp

from yume_jax.sampling import registry
from yume_jax.sampling.loop import denoise, evaluate


def step(x, v, sigma, sigma_next, key=None):
    """One Euler step of dx/dsigma = v (``key`` unused: the step is deterministic)."""
    return x + (sigma_next - sigma) * v


def sample(velocity, x, sigmas, *, state=(), key=None, frozen=None, pre=None, on_step=None):
    """Integrate from sigmas[0] to sigmas[-1] with one evaluation of the stateful ``velocity`` per step."""

    sigmas = jnp.asarray(sigmas, jnp.float32)

    def update(i, x, k, state):
        v, state = evaluate(velocity, x, sigmas[i], i, state, frozen)
        return step(x, v, sigmas[i], sigmas[i + 1]), state

    return denoise(update, x, sigmas, state=state, key=key, frozen=frozen, pre=pre, on_step=on_step)


@registry.register("euler")
def _build(config, velocity, sigmas, **kw):
    return lambda x, pre=None: sample(velocity, x, sigmas, pre=pre, **kw)
