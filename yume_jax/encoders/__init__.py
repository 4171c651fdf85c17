"""Conditioning encoders of Wan / Yume: the umT5 text encoder and the CLIP ViT-H/14 image encoder.

``load_text_encoder(path)`` and ``load_image_encoder(path)`` read checkpoints converted with
``python -m yume_jax.convert`` (families ``t5`` and ``clip``); see :mod:`yume_jax.encoders.text` and
:mod:`yume_jax.encoders.image`. Presets: :mod:`yume_jax.presets`.
"""
from yume_jax.encoders.cache import DEFAULT_CACHE, PromptCache  # noqa: F401
from yume_jax.encoders.config import CLIPVisionConfig, UMT5Config  # noqa: F401
from yume_jax.encoders.image import ImageEncoder, load_image_encoder  # noqa: F401
from yume_jax.encoders.text import TextEncoder, load_text_encoder  # noqa: F401
