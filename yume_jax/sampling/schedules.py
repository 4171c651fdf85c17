"""Sigma schedules of the rectified-flow samplers (spec/wan.md "Sampling defaults", spec/yume.md "Sampling").

Flow convention: x_sigma = sigma * eps + (1 - sigma) * x0, sigma = 1 is pure noise, sigma = 0 is data; the
network predicts v = eps - x0 and is fed the timestep sigma * 1000.
"""
from __future__ import annotations

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma, shift: float):
    """sigma' = s * sigma / (1 + (s - 1) * sigma): spends more steps at high noise for s > 1."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def shifted_sigmas(steps: int, shift: float) -> np.ndarray:
    """The N + 1 sigmas of an N-step sampler: shifted linspace(1, 0, N + 1)[:N], then a final 0.

    Returned as float32 numpy (host constants, so a jitted sampler bakes them in at trace time).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    u = np.linspace(1.0, 0.0, int(steps) + 1, dtype=np.float64)[: int(steps)]
    return np.append(shift_sigma(u, float(shift)), 0.0).astype(np.float32)


def model_timestep(sigma):
    """The timestep the Wan/Yume network sees for a sigma (scalar or per-token): sigma * 1000."""
    return sigma * NUM_TRAIN_TIMESTEPS
