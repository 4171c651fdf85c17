"""yume-jax: a JAX/Flax implementation of Yume (arXiv 2507.17744) on the Wan 2.1/2.2 video DiT.

Public entry points (imported lazily so ``import yume_jax`` stays cheap):

- ``load_dit(path, dtype="float32")``: a converted DiT checkpoint as a callable model.
- ``load_vae(path)``: the Wan 2.1 / 2.2 VAE.
- ``load_text_encoder(path)`` / ``load_image_encoder(path)``: umT5 and CLIP ViT-H encoders.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_dit": "yume_jax.models.loader",
    "load_vae": "yume_jax.vae",
    "load_text_encoder": "yume_jax.encoders",
    "load_image_encoder": "yume_jax.encoders",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'yume_jax' has no attribute {name!r}")
