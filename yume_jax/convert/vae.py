"""The VAE family of the converter: original Wan (``Wan2.x_VAE.pth``) and diffusers ``AutoencoderKLWan`` <->
yume_jax. The key names and layouts are the VAE's own (:mod:`yume_jax.vae.names`)."""
from __future__ import annotations

from yume_jax.convert.core import Family, Plan
from yume_jax.core.tensors import TensorSource
from yume_jax.vae import names
from yume_jax.vae.names import Entry, entries, infer_config, to_jax, to_torch  # noqa: F401


class VAEFamily(Family):
    name = "vae"
    namings = names.NAMINGS

    def detect(self, src: TensorSource) -> str | None:
        return names.detect(src)

    def plan_to_jax(self, src: TensorSource, naming: str, options: dict) -> Plan:
        return names.plan_to_jax(src, naming)

    def plan_to_torch(self, src: TensorSource, naming: str, options: dict) -> Plan:
        return names.plan_to_torch(src, naming)
