"""Checkpoint conversion driver shared by every model family (DiT, VAE, umT5, CLIP).

A family (``yume_jax/convert/<family>.py``) knows one model's key names. It turns a source
checkpoint into a *plan*: a list of :class:`Op`, each producing one output tensor from one or more
input tensors with a NumPy function (a rename is ``fn=identity``, a Linear is a transpose, a fused
qkv is a concatenation). The driver validates the whole plan before writing anything (unknown keys,
missing keys, shapes, dtypes), then streams it: per op it reads only the op's inputs, so peak memory
is the largest op, not the checkpoint.

Our converted (JAX) checkpoint is a directory::

    DST/yume_jax.json        {"format": 1, "family": ..., "config": {...}, "source_naming": ..., "extras": [...]}
    DST/params.safetensors   flat JAX names ("blocks.3.self_attn.q.kernel"), dtypes kept from the source

It is written into ``DST.partial-<pid>`` and renamed into place only when complete, so a failed or
interrupted conversion never leaves a DST that looks valid.
"""
from __future__ import annotations

import abc
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from yume_jax.convert.tensors import (FLOAT_DTYPES, JAX_META, JAX_PARAMS, ConversionError, SafetensorsWriter,
                                      TensorSource, open_source)

FORMAT_VERSION = 1


def identity(xs: Sequence[np.ndarray]) -> np.ndarray:
    return xs[0]


def transpose(xs: Sequence[np.ndarray]) -> np.ndarray:
    """PyTorch Linear [out, in] <-> Flax kernel [in, out] (and back: it is its own inverse)."""
    return np.ascontiguousarray(xs[0].T)


@dataclass
class Op:
    """One output tensor: ``out = fn([read(k) for k in ins])`` with the declared shape."""

    out: str
    ins: tuple[str, ...]
    shape: tuple[int, ...]
    fn: Callable[[Sequence[np.ndarray]], np.ndarray] = identity
    expect: tuple[tuple[int, ...], ...] | None = None  # expected input shapes, checked before writing


@dataclass
class Plan:
    ops: list[Op]
    config: dict  # the family's config as a JSON-able dict
    hf_config: dict | None = None  # written as config.json next to a torch export
    filename: str = JAX_PARAMS
    extras: list[str] = field(default_factory=list)  # kept tensors the model does not use (yet)
    ignore: set[str] = field(default_factory=set)  # source keys deliberately dropped (reference ignores them too)


class Family(abc.ABC):
    """Key-name knowledge of one model family."""

    name: str  # "dit", "vae", "t5", "clip"
    namings: tuple[str, ...]  # torch-side namings this family reads and writes

    @abc.abstractmethod
    def detect(self, src: TensorSource) -> str | None:
        """The naming of ``src`` if it is a checkpoint of this family, else None."""

    @abc.abstractmethod
    def plan_to_jax(self, src: TensorSource, naming: str, options: dict) -> Plan:
        """Ops turning ``src`` into JAX names; must raise ConversionError on any unknown key."""

    @abc.abstractmethod
    def plan_to_torch(self, src: TensorSource, naming: str, options: dict) -> Plan:
        """Ops turning one of our checkpoints (``src.meta`` holds its config) into ``naming``."""


def families() -> list[Family]:
    from yume_jax.convert import registry

    return registry.FAMILIES


def find_family(src: TensorSource, family: str | None = None) -> tuple[Family, str]:
    fams = families()
    if family is not None:
        fams = [f for f in fams if f.name == family]
        if not fams:
            raise ConversionError(f"unknown family {family!r}; known: {[f.name for f in families()]}")
    for fam in fams:
        naming = fam.detect(src)
        if naming is not None:
            return fam, naming
    keys = src.keys()
    raise ConversionError(f"cannot tell what model this is ({len(keys)} keys, e.g. {keys[:3]})", file=src.path)


def check_plan(src: TensorSource, plan: Plan) -> None:
    """Every source key used exactly as planned, every input present with the expected shape and dtype."""
    have = set(src.keys())
    used: set[str] = set()
    for op in plan.ops:
        for i, k in enumerate(op.ins):
            if k not in have:
                raise ConversionError(f"missing key (needed for {op.out})", file=src.path, key=k)
            info = src.info(k)
            if info.dtype.name not in FLOAT_DTYPES:
                raise ConversionError(f"unsupported dtype {info.dtype.name} (float32, bfloat16, float16 only)",
                                      file=info.file, key=k)
            if op.expect is not None and tuple(info.shape) != tuple(op.expect[i]):
                raise ConversionError(f"shape mismatch: {list(info.shape)}, expected {list(op.expect[i])}",
                                      file=info.file, key=k)
            used.add(k)
    unknown = sorted(have - used - plan.ignore)
    if unknown:
        raise ConversionError(f"unknown key ({len(unknown)} unknown in all)", file=src.info(unknown[0]).file,
                              key=unknown[0])
    outs = [op.out for op in plan.ops]
    if len(set(outs)) != len(outs):
        raise ConversionError("internal: duplicate output key in plan")


def _out_dtype(src: TensorSource, op: Op, dtype: str | None) -> np.dtype:
    if dtype:
        return np.dtype(_np_dtype(dtype))
    return src.info(op.ins[0]).dtype


def _np_dtype(name: str):
    import ml_dtypes

    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def execute(src: TensorSource, plan: Plan, dst: Path, meta: dict | None, *, dtype: str | None = None,
            force: bool = False, progress: bool = True) -> Path:
    """Validate, then stream ``plan`` into directory ``dst`` atomically."""
    check_plan(src, plan)
    dst = Path(dst)
    if dst.exists() and not force:
        raise ConversionError("destination exists (pass --force to replace it)", file=dst)
    tmp = dst.with_name(dst.name + f".partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        specs = [(op.out, _out_dtype(src, op, dtype), op.shape) for op in plan.ops]
        writer = SafetensorsWriter(tmp / plan.filename, specs, metadata={"format": "pt"} if meta is None else None)
        try:
            it = plan.ops
            if progress:
                from tqdm import tqdm

                it = tqdm(plan.ops, desc=f"convert -> {dst.name}", unit="tensor", leave=False)
            for op, (_, dt, _) in zip(it, specs):
                arrays = [src.read(k) for k in op.ins]
                out = op.fn(arrays)
                if tuple(out.shape) != tuple(op.shape):
                    raise ConversionError(f"internal: produced {out.shape}, planned {op.shape}", key=op.out)
                writer.write(op.out, out.astype(dt, copy=False))
                del arrays, out
            writer.close()
        except BaseException:
            writer.abort()
            raise
        if meta is not None:
            (tmp / JAX_META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if plan.hf_config is not None:
            (tmp / "config.json").write_text(json.dumps(plan.hf_config, indent=1, sort_keys=True))
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def convert(src_path: str | os.PathLike, dst_path: str | os.PathLike, *, to: str = "jax", naming: str | None = None,
            family: str | None = None, dtype: str | None = None, force: bool = False, progress: bool = True,
            **options) -> Path:
    """Convert a checkpoint: PyTorch (any supported layout) -> JAX, or JAX -> PyTorch (``to="torch"``)."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ConversionError(f"unsupported --dtype {dtype}; use one of {FLOAT_DTYPES}")
    src = open_source(src_path)
    if to == "jax":
        if src.meta is not None:
            raise ConversionError("already a yume_jax checkpoint (use --to torch to export it)", file=src.path)
        fam, detected = find_family(src, family)
        naming = naming or detected
        plan = fam.plan_to_jax(src, naming, options)
        meta = {"format": FORMAT_VERSION, "family": fam.name, "config": plan.config, "source_naming": naming,
                "extras": plan.extras}
        return execute(src, plan, Path(dst_path), meta, dtype=dtype, force=force, progress=progress)
    if to == "torch":
        if src.meta is None:
            raise ConversionError(f"not a yume_jax checkpoint (no {JAX_META})", file=src.path)
        fam_name = src.meta.get("family")
        fams = [f for f in families() if f.name == fam_name]
        if not fams:
            raise ConversionError(f"unknown family {fam_name!r} in {JAX_META}", file=src.path)
        fam = fams[0]
        naming = naming or src.meta.get("source_naming") or fam.namings[0]
        if naming not in fam.namings:
            raise ConversionError(f"--naming {naming!r} not known for {fam.name}; use one of {fam.namings}")
        plan = fam.plan_to_torch(src, naming, options)
        return execute(src, plan, Path(dst_path), None, dtype=dtype, force=force, progress=progress)
    raise ConversionError(f"--to must be jax or torch, not {to!r}")


def write_checkpoint(path: str | os.PathLike, family: str, config: dict, tensors: dict[str, np.ndarray],
                     *, source_naming: str | None = None, extras: Sequence[str] = ()) -> Path:
    """Write flat JAX-named arrays as one of our checkpoints (``yume_jax.json`` + ``params.safetensors``),
    atomically (temporary directory renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        w = SafetensorsWriter(tmp / JAX_PARAMS, [(k, np.asarray(v).dtype, np.asarray(v).shape) for k, v in tensors.items()])
        for k, v in tensors.items():
            w.write(k, np.asarray(v))
        w.close()
        meta = {"format": FORMAT_VERSION, "family": family, "config": config, "source_naming": source_naming,
                "extras": list(extras)}
        (tmp / JAX_META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save_module(path: str | os.PathLike, family: str, config: dict, module) -> Path:
    """Save an NNX module (stacked ``blocks.`` layers written per layer) as one of our checkpoints."""
    import jax
    from flax import nnx

    from yume_jax.models import params as P

    flat = {k: np.asarray(jax.device_get(v)) for k, v in P.flatten(nnx.state(module)).items()}
    return write_checkpoint(path, family, config, P.to_checkpoint(flat))
