"""Checkpoint conversion between PyTorch (original Wan/Yume, diffusers, transformers) and yume_jax.

``python -m yume_jax.convert SRC DST [--to jax|torch] [--naming ...]``; see :mod:`yume_jax.convert.core`.
"""
from yume_jax.convert.core import Family, Op, Plan, convert  # noqa: F401
from yume_jax.convert.tensors import ConversionError, load_safetensors, open_source, save_safetensors  # noqa: F401
