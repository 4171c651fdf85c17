"""Exact velocity field and flow map for Gaussian data: ground truth for sampler tests.

Data x0 ~ N(mu, diag(std^2)), eps ~ N(0, I), x_t = t eps + (1 - t) x0 (spec/yume.md "Training objective").
Per coordinate x_t is Gaussian with mean a mu (a = 1 - t) and variance var_t = t^2 + a^2 std^2, jointly
Gaussian with eps and x0, so with d = x_t - a mu:

    E[eps | x_t] = t d / var_t,   E[x0 | x_t] = mu + a std^2 d / var_t,
    v(x_t, t) = E[eps - x0 | x_t] = (t - a std^2) d / var_t - mu.

The probability-flow ODE dx/dt = v keeps x_t = a mu + sqrt(var_t) z with z fixed, so it maps the noise
x_1 = z to x_0 = mu + std * z exactly (``flow_map``).
"""
from __future__ import annotations

import jax.numpy as jnp


def gaussian_velocity(mu, std):
    """``velocity(x, t)`` for data N(mu, diag(std^2)); mu and std broadcast against x's trailing axes;
    t may be a scalar or per-position (broadcastable to x)."""
    mu, var0 = jnp.asarray(mu, jnp.float32), jnp.asarray(std, jnp.float32) ** 2

    def velocity(x, t):
        a = 1.0 - t
        var = t * t + a * a * var0
        return ((t - a * var0) * (x - a * mu) / var - mu).astype(x.dtype)

    return velocity


def flow_map(mu, std, noise):
    """Where the exact ODE takes ``noise`` (t = 1) at t = 0."""
    return jnp.asarray(mu) + jnp.asarray(std) * noise
