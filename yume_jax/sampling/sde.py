"""The SDE step of Yume's sampler (spec/yume.md "Sampling", SDE step, eta = 0.3).

    x0_hat = x - sigma_i v,   s = -(x - (1 - sigma_i) x0_hat) / sigma_i^2   (score estimate)
    mean   = x + (sigma_{i+1} - sigma_i) v + (-0.5 eta^2 s) (sigma_{i+1} - sigma_i)
    x_{i+1} = mean + eta sqrt(sigma_i - sigma_{i+1}) N(0, I),  no noise on the final step (sigma_{i+1} = 0).

This is Euler-Maruyama for the reverse SDE with diffusion g = eta, whose marginals equal those of the flow.
``last="spec"`` keeps the score term on the final step as the spec (and the public code) do; ``last="ode"``
also drops it there (the final step becomes x0_hat), which removes the bias the unmatched drift leaves when
the noise is dropped (measured in tests/test_sampling_sde.py).
"""
from __future__ import annotations

import jax.numpy as jnp

from yume_jax.sampling import registry
from yume_jax.sampling.loop import denoise, evaluate, normal

LAST_STEP = ("spec", "ode")


def step(x, v, sigma, sigma_next, key, *, eta: float, last: str = "spec"):
    dsigma = sigma_next - sigma
    x0_hat = x - sigma * v
    score = -(x - (1.0 - sigma) * x0_hat) / (sigma * sigma)
    final = sigma_next <= 0
    eta_drift = jnp.where(final, 0.0, eta) if last == "ode" else eta
    mean = x + dsigma * v + (-0.5 * eta_drift**2 * score) * dsigma
    std = jnp.where(final, 0.0, eta * jnp.sqrt(jnp.maximum(sigma - sigma_next, 0.0)))
    return mean + std * normal(key, x)


def sample(velocity, x, sigmas, *, key, eta: float = 0.3, last: str = "spec", state=(), frozen=None, pre=None,
           on_step=None):
    """SDE sampling with a stateful ``velocity`` (loop.py); step i draws its noise from fold_in(key, i)."""
    if key is None:
        raise ValueError("the SDE sampler needs a PRNG key")
    if last not in LAST_STEP:
        raise ValueError(f"last must be one of {LAST_STEP}, got {last!r}")

    sigmas = jnp.asarray(sigmas, jnp.float32)

    def update(i, x, k, state):
        v, state = evaluate(velocity, x, sigmas[i], i, state, frozen)
        return step(x, v, sigmas[i], sigmas[i + 1], k, eta=eta, last=last), state

    return denoise(update, x, sigmas, state=state, key=key, frozen=frozen, pre=pre, on_step=on_step)


@registry.register("sde", stochastic=True)
def _build(config, velocity, sigmas, **kw):
    return lambda x, pre=None: sample(velocity, x, sigmas, eta=config.eta, last=config.sde_last, pre=pre, **kw)
