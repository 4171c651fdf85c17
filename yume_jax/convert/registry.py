"""The model families the converter knows, tried in this order when detecting a checkpoint."""
from yume_jax.convert.dit import DiTFamily

FAMILIES = [DiTFamily()]
from yume_jax.convert.t5 import T5Family; FAMILIES.append(T5Family())  # noqa: E402,E702
from yume_jax.convert.clip import CLIPFamily; FAMILIES.append(CLIPFamily())  # noqa: E402,E702
from yume_jax.convert.vae import VAEFamily; FAMILIES.append(VAEFamily())  # noqa: E402,E702
