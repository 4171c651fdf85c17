"""Checkpoint conversion between PyTorch (original Wan/Yume, diffusers, transformers) and yume_jax.

``python -m yume_jax.convert SRC DST [--to jax|torch] [--naming ...]``; see :mod:`yume_jax.convert.driver`.
Tensor I/O and the checkpoint format live below every model in :mod:`yume_jax.core`; their names are
re-exported here for the converter's users.
"""
from yume_jax.convert.core import Family, Op, Plan  # noqa: F401
from yume_jax.convert.driver import convert  # noqa: F401
from yume_jax.core.tensors import ConversionError, load_safetensors, open_source, save_safetensors  # noqa: F401
