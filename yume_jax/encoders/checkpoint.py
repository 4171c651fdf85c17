"""Reading converted encoder checkpoints (``python -m yume_jax.convert`` output) into NNX modules.

Checkpoints store blocks per layer (``blocks.3.attn.q.kernel``); the models hold them stacked on a
leading layer axis (:mod:`yume_jax.models.params`). Tensors the family kept as ``extras`` (the CLIP
text tower of Wan's file) are not loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yume_jax.convert.tensors import JAX_META, JAX_PARAMS, ConversionError, TensorSource, open_source
from yume_jax.models import params as P


def open_checkpoint(path: str | os.PathLike, family: str) -> TensorSource:
    src = open_source(path)
    if src.meta is None:
        raise ConversionError(f"not a yume_jax checkpoint (no {JAX_META}); convert it first with "
                              f"python -m yume_jax.convert SRC DST", file=path)
    if src.meta.get("family") != family:
        raise ConversionError(f"checkpoint holds a {src.meta.get('family')!r} model, not {family!r}", file=path)
    return src


def build(make, *, abstract: bool = False) -> nnx.Module:
    """``make()`` with its parameters created directly on the default device (jit: no host copies)."""
    shapes = nnx.eval_shape(make)
    if abstract:
        return shapes
    return nnx.merge(nnx.graphdef(shapes), jax.jit(lambda: nnx.state(make()))())


def load_params(src: TensorSource, abstract: nnx.Module, num_layers: int, dtype) -> nnx.Module:
    """Fill ``abstract`` (from :func:`build`) with the checkpoint's tensors cast to ``dtype``."""
    graphdef, state = nnx.split(abstract)
    extras = set(src.meta.get("extras", []))
    have = set(src.keys()) - extras
    used: set[str] = set()

    def get(name, leaf):
        names = P.unstacked_names(name, num_layers) if P.is_stacked(name) else [name]
        for n in names:
            if n not in have:
                raise ConversionError("missing key", file=src.path, key=n)
        used.update(names)
        if P.is_stacked(name):
            arr = np.empty(leaf.shape, dtype)
            for i, n in enumerate(names):
                arr[i] = src.read(n).astype(dtype, copy=False)
        else:
            arr = src.read(name).astype(dtype, copy=False)
        if tuple(arr.shape) != tuple(leaf.shape):
            raise ConversionError(f"shape {list(arr.shape)}, model expects {list(leaf.shape)}", file=src.path,
                                  key=names[0])
        return jnp.asarray(arr)

    state = P.fill(state, get)
    unknown = sorted(have - used)
    if unknown:
        raise ConversionError("unexpected key (not part of the model)", file=src.path, key=unknown[0])
    return nnx.merge(graphdef, state)


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
