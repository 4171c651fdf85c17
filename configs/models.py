"""Named DiT presets: the ones of :mod:`yume_jax.presets` (where every preset lives), under the names the
training config uses. ``get(name, key=value)`` overrides fields."""
from __future__ import annotations

from yume_jax.presets import DIT as PRESETS  # noqa: F401
from yume_jax.presets import YUME_TIERS  # noqa: F401
from yume_jax.presets import dit as get  # noqa: F401
