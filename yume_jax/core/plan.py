"""Conversion plans: a checkpoint described as ops over a source checkpoint, validated before anything is read.

A plan is a list of :class:`Op`, each producing one output tensor from one or more input tensors with a
NumPy function (a rename is ``fn=identity``, a Linear is a transpose, a fused qkv is a concatenation).
:func:`check_plan` validates the whole plan against the source (unknown keys, missing keys, shapes,
dtypes); the converter (:mod:`yume_jax.convert.core`) then streams it to disk, and a loader that reads a
PyTorch checkpoint directly (the VAE's ``load_vae``) applies it in memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from yume_jax.core.tensors import FLOAT_DTYPES, JAX_PARAMS, ConversionError, TensorSource


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
