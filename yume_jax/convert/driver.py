"""``convert()``: detect a checkpoint's family, plan its conversion and execute the plan.

The families the converter knows are listed here, tried in this order when detecting a checkpoint; a
family module (``yume_jax/convert/<family>.py``) imports :mod:`yume_jax.convert.core` and nothing here,
so there is no import cycle.
"""
from __future__ import annotations

import os
from pathlib import Path

from yume_jax.convert.clip import CLIPFamily
from yume_jax.convert.core import Family, execute
from yume_jax.convert.dit import DiTFamily
from yume_jax.convert.t5 import T5Family
from yume_jax.convert.vae import VAEFamily
from yume_jax.core.checkpoint import make_meta
from yume_jax.core.tensors import FLOAT_DTYPES, JAX_META, ConversionError, TensorSource, open_source

MAX_HEADS = 4096  # --num-heads cap (Wan 14B has 40)
FAMILIES: list[Family] = [DiTFamily(), T5Family(), CLIPFamily(), VAEFamily()]


def families() -> list[Family]:
    return FAMILIES


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


def convert(src_path: str | os.PathLike, dst_path: str | os.PathLike, *, to: str = "jax", naming: str | None = None,
            family: str | None = None, dtype: str | None = None, force: bool = False, progress: bool = True,
            **options) -> Path:
    """Convert a checkpoint: PyTorch (any supported layout) -> JAX, or JAX -> PyTorch (``to="torch"``)."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ConversionError(f"unsupported --dtype {dtype}; use one of {FLOAT_DTYPES}")
    nh = options.get("num_heads")
    if nh is not None and (isinstance(nh, bool) or not isinstance(nh, int) or not 1 <= nh <= MAX_HEADS):
        raise ConversionError(f"--num-heads must be an integer in 1..{MAX_HEADS}, got {nh!r}")
    src = open_source(src_path)
    if to == "jax":
        if src.meta is not None:
            raise ConversionError("already a yume_jax checkpoint (use --to torch to export it)", file=src.path)
        fam, detected = find_family(src, family)
        naming = naming or detected
        plan = fam.plan_to_jax(src, naming, options)
        meta = make_meta(fam.name, plan.config, source_naming=naming, extras=plan.extras)
        return execute(src, plan, Path(dst_path), meta, dtype=dtype, force=force, progress=progress,
                       inputs=[src_path])
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
        return execute(src, plan, Path(dst_path), None, dtype=dtype, force=force, progress=progress,
                       inputs=[src_path])
    raise ConversionError(f"--to must be jax or torch, not {to!r}")
