"""The model families the converter knows, tried in this order when detecting a checkpoint."""
from yume_jax.convert.dit import DiTFamily

FAMILIES = [DiTFamily()]
