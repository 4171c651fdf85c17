"""Samplers for rectified-flow video diffusion (spec/yume.md "Sampling"), as pure JAX functions of a
velocity function ``velocity(x, sigma) -> v`` and a sigma schedule; each whole loop is one ``lax.scan``.

One mechanism per module: schedules (shifted sigmas), loop (the scan, with an optional carried model state),
registry (samplers by name), euler, sde, tts (Time Travel Sampling), cfg (guidance, one batch or split over a
mesh axis), aam (Anti-Artifact Mechanism with a real low-pass projector), cache (block residual caching: a
state of the one loop), frozen (history regions of a rollout), api (config, presets, front door), analytic
(the exact velocity field of Gaussian data, for tests).
"""
from yume_jax.sampling import euler, sde, tts  # noqa: F401  (the built-in samplers register themselves)
from yume_jax.sampling.api import PRESETS, AAMConfig, Sampler, SamplerConfig, TTSConfig, preset, sample
from yume_jax.sampling.frozen import Frozen, history_clean, history_mask, history_renoised
from yume_jax.sampling.registry import names, register
from yume_jax.sampling.schedules import model_timestep, shifted_sigmas

__all__ = ["names", "register", "PRESETS", "AAMConfig", "Sampler", "SamplerConfig", "TTSConfig", "preset", "sample",
           "Frozen", "history_clean", "history_mask", "history_renoised", "model_timestep", "shifted_sigmas"]
