"""What the encoders need around :func:`yume_jax.core.checkpoint.fill`: building a module on device, the
compute dtype a checkpoint implies, and a fingerprint of a loaded checkpoint (keys the prompt cache).

Parameters are read by :func:`~yume_jax.core.checkpoint.fill` (blocks stored per layer, stacked in the
model; tensors the family kept as ``extras``, the CLIP text tower of Wan's file, are not loaded).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from yume_jax.core.tensors import JAX_PARAMS, TensorSource


def build(make, *, abstract: bool = False) -> nnx.Module:
    """``make()`` with its parameters created directly on the default device (jit: no host copies)."""
    shapes = nnx.eval_shape(make)
    if abstract:
        return shapes
    return nnx.merge(nnx.graphdef(shapes), jax.jit(lambda: nnx.state(make()))())


def identity(src: TensorSource, **extra) -> str:
    """A short fingerprint of a checkpoint as loaded: its metadata, its params file (path, size, mtime)
    and the run-time choices in ``extra`` (dtype, tokenizer, ...). Keys the prompt cache."""
    p = Path(src.path) / JAX_PARAMS
    st = p.stat()
    blob = json.dumps({"meta": src.meta, "params": [str(p.resolve()), st.st_size, st.st_mtime_ns], **extra},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def resolve_dtype(dtype: str | None, src: TensorSource):
    """Compute dtype: as asked, else bfloat16 for a bfloat16 checkpoint (Wan's umT5 file) and float32 otherwise
    (float16 widens exactly to float32)."""
    if dtype is None:
        kinds = {src.info(k).dtype.name for k in src.keys()[:8]}
        dtype = "bfloat16" if kinds == {"bfloat16"} else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, not {dtype!r}")
    return jnp.dtype(dtype)
