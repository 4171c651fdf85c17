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


def explicit_sigmas(values) -> np.ndarray:
    """An explicit schedule (a distilled student's: the sigmas it was trained at, pipeline.json ``sigmas``) as
    float32 numpy, checked: N + 1 >= 2 values in [0, 1], strictly decreasing, ending in 0."""
    s = np.asarray(values, np.float64)
    if s.ndim != 1 or s.shape[0] < 2:
        raise ValueError(f"sigmas must be a list of at least 2 values, got {values!r}")
    if not (np.all(np.isfinite(s)) and s[0] <= 1.0 and s[-1] == 0.0 and np.all(np.diff(s) < 0)):
        raise ValueError(f"sigmas must decrease strictly from <= 1 to a final 0, got {list(map(float, s))}")
    return s.astype(np.float32)
