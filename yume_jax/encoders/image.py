"""``load_image_encoder``: Wan 2.1 I2V's CLIP ViT-H/14 visual tower (spec/wan.md "Image encoder").

    ie = yume_jax.load_image_encoder("ckpt/clip")
    tokens = ie.encode(images_uint8_bhwc)       # (B, 257, 1280): Wan's preprocessing + first 31 blocks
    tokens = ie.encode_pixels(pixel_values)     # (B, 3, 224, 224) normalised -> the same tensor as
                                                # CLIPVisionModel(..., output_hidden_states=True).hidden_states[-2]
Both compile once per input shape.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yume_jax.core.checkpoint import fill, open_checkpoint
from yume_jax.encoders import checkpoint as ckpt
from yume_jax.encoders.clip import VisionTransformer, preprocess
from yume_jax.encoders.config import CLIPVisionConfig


class ImageEncoder:
    """A CLIP visual tower bound to its parameters and compute dtype."""

    def __init__(self, model: VisionTransformer, *, dtype="float32"):
        self.config: CLIPVisionConfig = model.cfg
        self.dtype = jnp.dtype(dtype)
        self.graphdef, self.params = nnx.split(model)
        self._from_pixels = jax.jit(self._apply)
        self._from_images = jax.jit(lambda p, x: self._apply(p, preprocess(x, self.config.image_size)))

    @classmethod
    def random(cls, cfg: CLIPVisionConfig, *, seed: int = 0, dtype="float32") -> "ImageEncoder":
        """Random weights created on the default device in ``dtype`` (tests, benchmarks)."""
        return cls(ckpt.build(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(seed), param_dtype=jnp.dtype(dtype))),
                   dtype=dtype)

    def _apply(self, params, pixels_bhwc):
        return nnx.merge(self.graphdef, params)(pixels_bhwc, self.dtype)

    def encode(self, images) -> jax.Array:
        """uint8 images (B, H, W, 3), any H and W -> (B, tokens, dim) with Wan's preprocessing."""
        if not isinstance(images, (np.ndarray, jax.Array)):
            images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (B, H, W, 3) in [0, 255]; got dtype {images.dtype}")
        if images.ndim != 4 or images.shape[-1] != 3 or 0 in images.shape:
            raise ValueError(f"images must be uint8 (B, H, W, 3) (channels last, RGB); got shape {tuple(images.shape)}")
        return self._from_images(self.params, jnp.asarray(images))

    def encode_pixels(self, pixel_values) -> jax.Array:
        """Normalised float pixels (B, 3, S, S), S = image_size -> (B, tokens, dim)."""
        if not isinstance(pixel_values, (np.ndarray, jax.Array)):
            pixel_values = np.asarray(pixel_values)
        s = self.config.image_size
        if not jnp.issubdtype(pixel_values.dtype, jnp.floating):
            raise ValueError(f"pixel_values must be floating point (normalised); got dtype {pixel_values.dtype}")
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(f"pixel_values must be (B, 3, {s}, {s}); got shape {tuple(pixel_values.shape)}")
        x = jnp.transpose(jnp.asarray(pixel_values, jnp.float32), (0, 2, 3, 1))
        return self._from_pixels(self.params, x)


def load_image_encoder(path: str | os.PathLike, *, dtype: str | None = None) -> ImageEncoder:
    """Load a converted CLIP visual tower (family ``clip``). ``dtype`` as in ``load_text_encoder``."""
    src = open_checkpoint(path, "clip")
    cfg = CLIPVisionConfig.from_dict(src.meta["config"])
    dt = ckpt.resolve_dtype(dtype, src)
    abstract = ckpt.build(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0), param_dtype=dt), abstract=True)
    return ImageEncoder(fill(abstract, src), dtype=dt)
