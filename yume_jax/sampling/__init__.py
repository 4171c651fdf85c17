"""Samplers for rectified-flow video diffusion (spec/yume.md "Sampling"), as pure JAX functions of a
velocity function ``velocity(x, sigma) -> v`` and a sigma schedule; each whole loop is one ``lax.scan``.

One mechanism per module: schedules (shifted sigmas), loop (the scan), euler, sde, tts (Time Travel
Sampling), cfg (guidance, one batch or split over a mesh axis), aam (Anti-Artifact Mechanism with a real
low-pass projector), frozen (history regions of a rollout), api (config, presets, front door),
analytic (the exact velocity field of Gaussian data, for tests).
"""
from yume_jax.sampling.api import (NAMES, PRESETS, AAMConfig, Sampler, SamplerConfig, TTSConfig, preset,
                                   sample)
from yume_jax.sampling.frozen import Frozen, history_clean, history_mask, history_renoised
from yume_jax.sampling.schedules import model_timestep, shifted_sigmas

__all__ = ["NAMES", "PRESETS", "AAMConfig", "Sampler", "SamplerConfig", "TTSConfig", "preset", "sample",
           "Frozen", "history_clean", "history_mask", "history_renoised", "model_timestep", "shifted_sigmas"]
