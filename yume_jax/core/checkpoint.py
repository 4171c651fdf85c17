"""Our checkpoint format and the one function that fills a model from a checkpoint.

A converted (JAX) checkpoint is a directory::

    DST/yume_jax.json        {"format": 1, "family": ..., "config": {...}, "source_naming": ..., "extras": [...]}
    DST/params.safetensors   flat JAX names ("blocks.3.self_attn.q.kernel"), dtypes kept from the source

Directories are written into ``DST.partial-<pid>`` and renamed into place only when complete, so a failed
or interrupted write never leaves a DST that looks valid.

:func:`fill` is how every family (DiT, VAE, encoders, the trainer) gets its parameters: one policy for
names the model has and the checkpoint lacks (an error, unless ``create`` makes them: the Yume extras
when a run starts from Wan, spec/yume.md "History embeddings"), for names the checkpoint has and the
model lacks (an error, except the ``extras`` the metadata lists: read when the model has them, else
left alone), for stacked layers present only in
part (an error), for shapes (must match) and dtypes (cast to the model's, or ``dtype``).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from yume_jax.core import params as P
from yume_jax.core.tensors import JAX_META, JAX_PARAMS, ArraySource, CheckpointError, SafetensorsWriter, \
    TensorSource, open_source

FORMAT_VERSION = 1


def make_meta(family: str, config: dict, *, source_naming: str | None = None, extras: Sequence[str] = ()) -> dict:
    """The content of ``yume_jax.json``."""
    return {"format": FORMAT_VERSION, "family": family, "config": config, "source_naming": source_naming,
            "extras": list(extras)}


def open_checkpoint(path: str | os.PathLike, family: str) -> TensorSource:
    """One of our converted checkpoints holding a ``family`` model (its metadata in ``.meta``)."""
    src = open_source(path)
    if src.meta is None:
        raise CheckpointError(f"not a yume_jax checkpoint (no {JAX_META}); convert it first with "
                              f"python -m yume_jax.convert SRC DST", file=path)
    if src.meta.get("family") != family:
        raise CheckpointError(f"checkpoint holds a {src.meta.get('family')!r} model, not {family!r}", file=path)
    return src


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Write a directory completely or not at all: yields ``PATH.partial-<pid>`` to fill; on success any
    previous ``path`` is removed and the temporary directory renamed into place, on any exception (or
    interrupt) the temporary directory is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_checkpoint(path: str | os.PathLike, family: str, config: dict, tensors: dict[str, np.ndarray],
                     *, source_naming: str | None = None, extras: Sequence[str] = ()) -> Path:
    """Write flat JAX-named arrays as one of our checkpoints (``yume_jax.json`` + ``params.safetensors``),
    atomically (temporary directory renamed into place)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        w = SafetensorsWriter(tmp / JAX_PARAMS, [(k, np.asarray(v).dtype, np.asarray(v).shape) for k, v in tensors.items()])
        for k, v in tensors.items():
            w.write(k, np.asarray(v))
        w.close()
        meta = make_meta(family, config, source_naming=source_naming, extras=extras)
        (tmp / JAX_META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return path


def save_module(path: str | os.PathLike, family: str, config: dict, module) -> Path:
    """Save an NNX module (stacked ``blocks.`` layers written per layer) as one of our checkpoints."""
    from flax import nnx

    flat = {k: np.asarray(jax.device_get(v)) for k, v in P.flatten(nnx.state(module)).items()}
    return write_checkpoint(path, family, config, P.to_checkpoint(flat))


def place_with(shardings: Mapping[str, jax.sharding.Sharding]) -> Callable[[str, np.ndarray], jax.Array]:
    """A ``place`` for :func:`fill`: each parameter as a global array in its sharding (each process puts only
    the slices its devices hold, so this works on many hosts)."""
    def place(name: str, arr: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(arr.shape, shardings[name], lambda idx: arr[idx])

    return place


def fill(abstract, source: TensorSource | Mapping[str, np.ndarray], *, dtype=None,
         create: Callable[[str, object], object] | None = None,
         place: Callable[[str, np.ndarray], jax.Array] | None = None, file=None):
    """``abstract`` (an NNX module, an NNX state or a nested dict of arrays / ShapeDtypeStructs) with every
    parameter read from ``source`` (a :class:`TensorSource`, e.g. from :func:`open_checkpoint`, or a dict
    of arrays named like the checkpoint).

    Names are the flat parameter names; stacked ``blocks.`` parameters are read per layer
    (``blocks.0.x`` ... ``blocks.{L-1}.x``). Arrays are cast to ``dtype`` (default: the abstract leaf's)
    and put on device by ``place(name, array)`` (default ``jnp.asarray``; see :func:`place_with`).

    A parameter the source lacks is made by ``create(name, abstract_leaf)`` when that returns something
    (a NumPy array is cast and placed, a JAX array kept as is), else it is a "missing key" error. A
    parameter of which only some layers are present, a shape mismatch, and a source tensor the model
    does not use (other than the ``extras`` the source's metadata lists: tensors a converter kept that
    some configurations use, e.g. the Yume history embeddings, the CLIP text tower) are errors too.
    """
    from flax import nnx

    if isinstance(source, TensorSource):
        src = source
    else:
        src = ArraySource(source, path=file)
    where = src.path if file is None else file
    extras = set((src.meta or {}).get("extras", []))
    have = set(src.keys())
    used: set[str] = set()
    put = place or (lambda name, arr: jnp.asarray(arr))

    def get(name, leaf):
        names = P.unstacked_names(name, leaf.shape[0]) if P.is_stacked(name) else [name]
        present = [n in have for n in names]
        dt = np.dtype(jnp.dtype(dtype if dtype is not None else leaf.dtype))
        if not all(present):
            if any(present):
                raise CheckpointError("checkpoint holds only some layers of this parameter", file=where, key=name)
            made = create(name, leaf) if create is not None else None
            if made is None:
                raise CheckpointError("missing key", file=where, key=names[0])
            if isinstance(made, jax.Array):
                return made
            made = np.asarray(made)
            if tuple(made.shape) != tuple(leaf.shape):
                raise CheckpointError(f"created shape {list(made.shape)}, model expects {list(leaf.shape)}", key=name)
            return put(name, made.astype(dt, copy=False))
        used.update(names)
        for n in names:
            got = tuple(src.info(n).shape)
            want = tuple(leaf.shape[1:]) if P.is_stacked(name) else tuple(leaf.shape)
            if got != want:
                raise CheckpointError(f"shape {list(got)}, model expects {list(want)}", file=where, key=n)
        if P.is_stacked(name):
            arr = np.empty(leaf.shape, dt)
            for i, n in enumerate(names):
                arr[i] = src.read(n).astype(dt, copy=False)
        else:
            arr = src.read(name).astype(dt, copy=False)
        return put(name, arr)

    if isinstance(abstract, nnx.Module):
        graphdef, state = nnx.split(abstract)
        out = nnx.merge(graphdef, P.map_named(state, get))
    else:
        out = P.map_named(abstract, get)
    unknown = sorted(have - used - extras)
    if unknown:
        raise CheckpointError(f"unexpected key (not part of the model; {len(unknown)} in all)", file=where,
                              key=unknown[0])
    return out
