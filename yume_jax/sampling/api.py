"""Front door of the samplers: a typed ``SamplerConfig`` with named presets, ``sample`` (a pure function to
call inside your own jit) and ``Sampler`` (the whole guided loop jitted once, for rollouts). Samplers are
looked up by ``SamplerConfig.name`` in the registry (registry.py); block caching is a carried model state
of the same loop (``state=``, cache.py).

Defaults follow spec/yume.md "Sampling" (Euler, 50 steps, shift 3, CFG 5, SDE eta 0.3, TTS l = 2,
interval 2, r = 1, AAM K = 4) and spec/wan.md "Sampling defaults" for the plain Wan presets.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from yume_jax.sampling import aam, cfg, registry, sde, tts
from yume_jax.sampling.frozen import Frozen
from yume_jax.sampling.loop import stateless
from yume_jax.sampling.schedules import explicit_sigmas, shifted_sigmas


@dataclass(frozen=True)
class TTSConfig:
    travel: int = 2  # look-ahead depth l (l - 1 extra evaluations per travel step)
    interval: int = 2  # a travel step every `interval` steps
    repeat: int = 1  # fixed-point iterations r of look-ahead-and-redo (see tts.py)


@dataclass(frozen=True)
class AAMConfig:
    steps: int = 4  # K: leading pass-2 steps whose low frequencies come from the re-noised first pass
    projector: str = "fft"  # "fft" (radial low-pass) or "pool" (block mean + nearest upsample)
    cutoff: float = 0.25  # fft: kept radius as a fraction of Nyquist (our choice; the spec gives none)
    factor: int = 4  # pool: block size
    axes: tuple[int, int] = (-2, -1)  # spatial axes of the latents ([B, C, F, H, W])

    def __post_init__(self):
        object.__setattr__(self, "axes", tuple(self.axes))
        aam.projector(self.projector, cutoff=self.cutoff, factor=self.factor, axes=self.axes)
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"AAM steps K must be a non-negative integer, got {self.steps!r}")


@dataclass(frozen=True)
class SamplerConfig:
    name: str = "euler"  # a registered sampler (registry.names(): euler | sde | tts | tts-sde)
    steps: int = 50
    shift: float = 3.0
    cfg_scale: float = 5.0  # 1.0 = no guidance (no unconditional evaluation)
    eta: float = 0.3  # SDE diffusion scale (sde, tts-sde)
    sde_last: str = "spec"  # "spec": the spec's final SDE step; "ode": final step to x0_hat (see sde.py)
    tts: TTSConfig = field(default_factory=TTSConfig)
    aam: Optional[AAMConfig] = None
    explicit_sigmas: Optional[tuple[float, ...]] = None  # steps + 1 sigmas used instead of the shifted schedule

    def __post_init__(self):
        if self.explicit_sigmas is not None:
            explicit_sigmas(self.explicit_sigmas)  # validates
            object.__setattr__(self, "explicit_sigmas", tuple(float(x) for x in self.explicit_sigmas))
            if len(self.explicit_sigmas) != self.steps + 1:
                raise ValueError(f"{len(self.explicit_sigmas)} explicit sigmas for {self.steps} steps "
                                 f"(need steps + 1)")
        if isinstance(self.tts, dict):
            object.__setattr__(self, "tts", TTSConfig(**self.tts))
        if isinstance(self.aam, dict):
            object.__setattr__(self, "aam", AAMConfig(**self.aam))
        if self.name not in registry.names():
            raise ValueError(f"sampler name must be one of {registry.names()}, got {self.name!r}")
        shifted_sigmas(self.steps, self.shift)  # validates steps and shift
        if not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta!r}")
        if self.sde_last not in sde.LAST_STEP:
            raise ValueError(f"sde_last must be one of {sde.LAST_STEP}, got {self.sde_last!r}")
        tts.check(self.tts.travel, self.tts.interval, self.tts.repeat)
        if self.aam is not None and self.aam.steps > self.steps:
            raise ValueError(f"AAM steps K = {self.aam.steps} exceeds the {self.steps} sampling steps")

    @property
    def stochastic(self) -> bool:
        return registry.get(self.name).stochastic

    @property
    def sigmas(self):
        if self.explicit_sigmas is not None:
            return explicit_sigmas(self.explicit_sigmas)
        return shifted_sigmas(self.steps, self.shift)

    @property
    def evaluations(self) -> int:
        """Velocity evaluations per sample (each one batched cond + uncond call under CFG)."""
        return registry.get(self.name).count(self) * (2 if self.aam is not None else 1)

    def replace(self, **kw) -> "SamplerConfig":
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["aam"] is not None:
            d["aam"]["axes"] = list(d["aam"]["axes"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SamplerConfig":
        from yume_jax.configlib import from_dict

        return from_dict(cls, d, "sampler config")


PRESETS = {
    "yume": SamplerConfig(),
    "yume-sde": SamplerConfig(name="sde"),
    "yume-tts": SamplerConfig(name="tts"),
    "yume-tts-sde": SamplerConfig(name="tts-sde"),
    "yume-aam": SamplerConfig(aam=AAMConfig()),
    "yume-14": SamplerConfig(steps=14),  # step count of the distilled model (spec "Distillation and caching")
    "wan-t2v": SamplerConfig(steps=50, shift=5.0),
    "wan-i2v": SamplerConfig(steps=40, shift=5.0),
    "wan-i2v-480p": SamplerConfig(steps=40, shift=3.0),
}


def preset(preset_name: str, /, **overrides) -> SamplerConfig:
    """A named preset, optionally with fields replaced (e.g. ``preset("yume", name="sde", steps=14)``)."""
    if preset_name not in PRESETS:
        raise ValueError(f"unknown sampler preset {preset_name!r}; known: {sorted(PRESETS)}")
    return PRESETS[preset_name].replace(**overrides)


def sample(config: SamplerConfig, velocity, noise, *, key=None, frozen: Optional[Frozen] = None,
           on_step: Optional[Callable] = None, state=None):
    """Sample x0 from ``noise`` (the latents at sigma = 1) with ``velocity(x, sigma) -> v``.

    Pure and traceable: call it inside a jit. ``key`` drives the SDE noise (needed for sde / tts-sde);
    ``frozen`` keeps a region (the history) out of the integration (frozen.py); ``on_step(i)`` is called on
    the host once per step (twice per step index with AAM, once per pass). ``state``: the initial state of a
    STATEFUL velocity ``velocity(x, sigma, step, state) -> (v, state)`` (loop.py; block caching: cache.py),
    carried through the loop (each AAM pass starts from it); None: a plain velocity. The latents are
    integrated in float32 (at least) whatever the noise dtype, and returned in the noise dtype: a bfloat16
    state would round every step (measured on the Gaussian field, 50 Euler steps: RMS 0.027, max 0.24 off
    float32).
    """
    entry = registry.get(config.name)
    if entry.stochastic and key is None:
        raise ValueError(f"sampler {config.name!r} is stochastic and needs a PRNG key")
    if not jnp.issubdtype(noise.dtype, jnp.floating):
        raise ValueError(f"noise must be floating point, got {noise.dtype}")
    out_dtype = noise.dtype
    noise = noise.astype(jnp.promote_types(noise.dtype, jnp.float32))
    sigmas = config.sigmas
    if state is None:
        velocity, state = stateless(velocity), ()
    run = entry.build(config, velocity, sigmas, state=state, key=key, frozen=frozen, on_step=on_step)
    if config.aam is None:
        return run(noise).astype(out_dtype)
    a = config.aam
    project = aam.projector(a.projector, cutoff=a.cutoff, factor=a.factor, axes=a.axes)
    out = aam.sample(run, noise, sigmas, steps=a.steps, project=project)
    return out.astype(out_dtype)


class _Program:
    """The jitted guided loop of one (config, model, mesh, cfg_axis, on_step); ``traces`` counts its traces."""

    def __init__(self, config: SamplerConfig, model, mesh, cfg_axis: str, on_step: Optional[Callable]):
        self.config, self.model, self.mesh, self.cfg_axis, self.on_step = config, model, mesh, cfg_axis, on_step
        self.traces = 0
        self.run = jax.jit(self._trace)

    def _trace(self, params, noise, cond, uncond, key, frozen, state):
        self.traces += 1
        c = self.config
        if c.cfg_scale == 1.0:
            velocity = functools.partial(self._plain, params, cond)
        elif self.mesh is not None:
            velocity = cfg.guided_split(self.model, params, cond, uncond, c.cfg_scale, self.mesh, self.cfg_axis)
        else:
            velocity = cfg.guided(self.model, params, cond, uncond, c.cfg_scale)
        return sample(c, velocity, noise, key=key, frozen=frozen, on_step=self.on_step, state=state)

    def _plain(self, params, cond, x, sigma, *stateful):
        return self.model(params, x, cfg.batched_sigma(sigma, x.shape[0]), cond, *stateful)


_SHARED: dict[tuple, _Program] = {}  # Sampler(share=...): one program per static key, for the process
_SHARED_LOCK = threading.Lock()


def clear_shared() -> None:
    """Forget the shared programs (``Sampler(share=...)``): the next sampler of each key traces anew."""
    with _SHARED_LOCK:
        _SHARED.clear()


class Sampler:
    """One guided denoising loop, jitted once per input shape.

    ``model(params, x, sigma, ctx) -> v`` (cfg.py). Call ``sampler(params, noise, cond, uncond, key=...,
    frozen=...)``: with ``mesh`` given, cond and uncond run on the two halves of mesh axis ``cfg_axis``
    (cfg.guided_split), otherwise in one batch (cfg.guided). With ``state=`` (e.g. a block cache,
    cache.py) the model is stateful, ``model(params, x, sigma, ctx, step, state) -> (v, state)``, and the
    state's batch is 2B under one-batch CFG. ``traces`` counts the traces (compiles) this sampler's calls
    caused.

    ``share``: a hashable key that identifies ``model`` as a program (two models with the same key must
    compute the same function of their arguments, e.g. the same graph definition, mesh and run-time policy;
    the params are an argument). Samplers with equal ``(config, share, mesh, cfg_axis, on_step)`` then share
    one jitted program for the life of the process: a second pipeline of the same architecture compiles no
    sampler again. The first such sampler's ``model`` is kept, so it must not hold large arrays (params).
    None: a program of this sampler's own.
    """

    def __init__(self, config: SamplerConfig, model, *, mesh=None, cfg_axis: str = "cfg",
                 on_step: Optional[Callable] = None, share=None):
        self.config, self.model, self.mesh, self.cfg_axis, self.on_step = config, model, mesh, cfg_axis, on_step
        self.traces = 0
        if share is None:
            self._program = _Program(config, model, mesh, cfg_axis, on_step)
        else:
            key = (config, share, mesh, cfg_axis, on_step)
            with _SHARED_LOCK:
                if key not in _SHARED:
                    _SHARED[key] = _Program(config, model, mesh, cfg_axis, on_step)
                self._program = _SHARED[key]
        self._run = self._program.run

    def __call__(self, params, noise, cond, uncond=None, *, key=None, frozen: Optional[Frozen] = None, state=None):
        if self.config.cfg_scale != 1.0 and uncond is None:
            raise ValueError(f"cfg_scale {self.config.cfg_scale} needs an unconditional context (uncond)")
        if self.config.stochastic and key is None:
            raise ValueError(f"sampler {self.config.name!r} is stochastic and needs a PRNG key")
        if state is not None and self.mesh is not None and self.config.cfg_scale != 1.0:
            raise ValueError("a stateful model (block caching) with CFG split over a mesh axis is not supported")
        if frozen is not None:
            frozen.check(noise)
        before = self._program.traces
        try:
            return self._run(params, noise, cond, None if self.config.cfg_scale == 1.0 else uncond, key, frozen, state)
        finally:
            self.traces += self._program.traces - before
