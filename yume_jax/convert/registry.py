"""The model families the converter knows, tried in this order when detecting a checkpoint."""
from yume_jax.convert.dit import DiTFamily

FAMILIES = [DiTFamily()]
from yume_jax.convert.vae import VAEFamily; FAMILIES.append(VAEFamily())  # noqa: E402,E702
