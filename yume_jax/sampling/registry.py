"""The sampler registry: samplers are found by name here, not through if/elif chains or name lists.

A sampler module registers a builder under its name (``@register("euler")``). A builder is

    build(config, velocity, sigmas, *, state, key, frozen, on_step) -> run(x, pre=None) -> x0

where ``config`` is the :class:`yume_jax.sampling.api.SamplerConfig` (the builder reads the fields it
needs), ``velocity`` a stateful velocity (yume_jax/sampling/loop.py) and ``run`` one whole denoising loop
from the noise ``x`` (``pre`` is AAM's per-step replacement, yume_jax/sampling/aam.py). ``stochastic``
samplers need a PRNG key; ``evaluations(config)`` counts velocity evaluations of one loop (default: steps).
:func:`names` is what a CLI offers (infer/explore.py). The built-in samplers register themselves when
``yume_jax.sampling`` is imported (its ``__init__`` imports them; this module imports none of them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable
    stochastic: bool = False
    evaluations: Optional[Callable] = None  # config -> int; None: config.steps

    def count(self, config) -> int:
        return config.steps if self.evaluations is None else int(self.evaluations(config))


_SAMPLERS: dict[str, Entry] = {}
BUILTIN = ("euler", "sde", "tts", "tts-sde")  # listed first, in this order, whatever the import order


def register(name: str, *, stochastic: bool = False, evaluations: Optional[Callable] = None):
    """Decorator: register ``build`` as the sampler ``name`` (a name is registered once)."""

    def deco(build):
        if name in _SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        _SAMPLERS[name] = Entry(name, build, stochastic, evaluations)
        return build

    return deco


def get(name: str) -> Entry:
    if name not in _SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; registered: {names()}")
    return _SAMPLERS[name]


def names() -> tuple[str, ...]:
    """Registered sampler names: the built-in ones (euler, sde, tts, tts-sde), then any added, in order."""
    return tuple(n for n in BUILTIN if n in _SAMPLERS) + tuple(n for n in _SAMPLERS if n not in BUILTIN)
