"""Euler sampler on a sigma schedule (spec/yume.md "Sampling": x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v)."""
from __future__ import annotations

import jax.numpy as jnp

from yume_jax.sampling.loop import denoise, evaluate


def step(x, v, sigma, sigma_next, key=None):
    """One Euler step of dx/dsigma = v (``key`` unused: the step is deterministic)."""
    return x + (sigma_next - sigma) * v


def sample(velocity, x, sigmas, *, key=None, frozen=None, pre=None, on_step=None):
    """Integrate from sigmas[0] to sigmas[-1] with one model evaluation per step."""

    sigmas = jnp.asarray(sigmas, jnp.float32)

    def update(i, x, k):
        return step(x, evaluate(velocity, x, sigmas[i], frozen), sigmas[i], sigmas[i + 1])

    return denoise(update, x, sigmas, key=key, frozen=frozen, pre=pre, on_step=on_step)
