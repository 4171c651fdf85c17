"""Conversion plans shared by every model family (DiT, VAE, umT5, CLIP) and their streaming execution.

A family (``yume_jax/convert/<family>.py``) knows one model's key names. It turns a source
checkpoint into a *plan*: a list of :class:`Op`, each producing one output tensor from one or more
input tensors with a NumPy function (a rename is ``fn=identity``, a Linear is a transpose, a fused
qkv is a concatenation). The driver validates the whole plan before writing anything (unknown keys,
missing keys, shapes, dtypes), then streams it: per op it reads only the op's inputs, so peak memory
is the largest op, not the checkpoint.

The output is one of our checkpoints (format: :mod:`yume_jax.core.checkpoint`) or a PyTorch export. It
is written into ``DST.partial-<pid>-<token>`` and renamed into place only when complete, so a failed or
interrupted conversion never leaves a DST that looks valid; ``--force`` replaces only a previous output of the
converter, never an input or a folder holding one (:func:`yume_jax.core.checkpoint.check_replaceable`). Which families exist and the ``convert``
entry point: :mod:`yume_jax.convert.driver`.
"""
from __future__ import annotations

import abc
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from yume_jax.core.plan import Op, Plan, check_plan, identity, transpose  # noqa: F401  (the families import them from here)
from yume_jax.core.checkpoint import atomic_dir, atomic_write_text, check_replaceable, is_checkpoint_output
from yume_jax.core.tensors import JAX_META, WRITTEN_BY, ConversionError, SafetensorsWriter, TensorSource


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


def _out_dtype(src: TensorSource, op: Op, dtype: str | None) -> np.dtype:
    if dtype:
        return np.dtype(_np_dtype(dtype))
    return src.info(op.ins[0]).dtype


def _np_dtype(name: str):
    import ml_dtypes

    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def execute(src: TensorSource, plan: Plan, dst: Path, meta: dict | None, *, dtype: str | None = None,
            force: bool = False, progress: bool = True, inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Validate, then stream ``plan`` into directory ``dst`` atomically (:func:`atomic_dir`). An existing
    ``dst`` is an error, or with ``force`` replaced if it is a previous output of the converter and not one
    of ``inputs`` (``src.path`` always counts) or a folder holding one (:func:`check_replaceable`)."""
    check_plan(src, plan)
    dst = Path(dst)
    if dst.is_symlink() or dst.exists():
        if not force:
            raise ConversionError("destination exists (pass --force to replace it)", file=dst)
        check_replaceable(dst, [src.path, *inputs], is_checkpoint_output, "converted checkpoint (yume_jax.json or "
                          "a PyTorch export of this converter)")
    with atomic_dir(dst) as tmp:
        specs = [(op.out, _out_dtype(src, op, dtype), op.shape) for op in plan.ops]
        writer = SafetensorsWriter(tmp / plan.filename, specs,
                                   metadata={"format": "pt", "written_by": WRITTEN_BY} if meta is None else None)
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
            atomic_write_text(tmp / JAX_META, json.dumps(meta, indent=1, sort_keys=True))
        if plan.hf_config is not None:
            atomic_write_text(tmp / "config.json", json.dumps(plan.hf_config, indent=1, sort_keys=True))
    return dst
