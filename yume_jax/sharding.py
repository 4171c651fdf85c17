"""Logical axis names and the one table that maps them onto the device mesh (MaxText-style).

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel + parameter/optimizer sharding,
ZeRO-3), ``context`` (sequence parallel: video tokens split across devices), ``tensor`` (heads and
FFN hidden units split across devices), and for inference only ``cfg`` (CFG-parallel sampling: the
conditional and unconditional halves of a guided batch on the two halves of the mesh,
yume_jax/sampling/cfg.py ``guided_split``; outermost, as it needs one reduction per evaluation). A mesh
has the ``cfg`` axis only when its shape names it (:data:`INFERENCE_AXES`), so training meshes keep the four.

At inference the ``context`` axis carries sequence parallelism: the DiT's tokens split over it, its
self-attention either reshards them to a head split by all-to-all (Ulysses) where the heads divide
context x tensor or gathers keys/values (yume_jax/models/attention.py, ``Runtime.seq_parallel``), and the
VAE splits the frame width over it (``act_width``; yume_jax/vae/stream.py ``WanVAE.with_mesh``). A sampling
mesh comes from a ``--mesh`` spec (:func:`sampling_mesh`).

Every parameter gets logical axes from :func:`param_axes` (by name, from its model family's table in
:data:`PARAM_RULES`: DiT, umT5, CLIP, VAE), activations get them at :func:`constrain` calls in the model.
:data:`RULES` is the only place that says which mesh axis a logical axis lands on. A logical axis whose mesh axes do not divide the array dimension is left
replicated (tiny test models on big meshes), never an error.
"""
from __future__ import annotations

import contextlib
import math
import re
import threading
from typing import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "context", "tensor")
CFG_AXIS = "cfg"
INFERENCE_AXES = (CFG_AXIS,) + MESH_AXES  # the axes a sampling mesh may have (cfg outermost)

# logical axis -> mesh axes (None: replicated)
RULES: dict[str, tuple[str, ...] | None] = {
    # activations
    "batch": ("data", "fsdp"),
    "seq": ("context",),
    "act_embed": None,
    "act_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "ctx_seq": None,
    "act_width": ("context",),  # the VAE's image width (channels-last video), split spatially at inference
    # parameters
    "layers": None,
    "embed": ("fsdp",),
    "heads": ("tensor",),  # q/k/v output features = heads * head_dim
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "in": None,  # small input feature dims (patch features, text/image/freq dims)
    "out": None,
    "mod": None,  # the 6 (or 2) modulation rows
}


def make_mesh(shape: dict[str, int] | Sequence[int] | None = None, devices=None) -> Mesh:
    """A mesh over ``devices`` (default all) with the four axes; ``-1`` fills the remaining devices.

    ``make_mesh({"fsdp": 2, "tensor": 4})``; axes not named have size 1. Naming ``cfg`` (a sampling mesh,
    ``make_mesh({"cfg": 2, "context": 4})``) adds it as the outermost axis.
    """
    devices = list(jax.devices() if devices is None else devices)
    if shape is None:
        shape = {"fsdp": -1}
    if not isinstance(shape, dict):
        shape = dict(zip(MESH_AXES, shape))
    axes = INFERENCE_AXES if CFG_AXIS in shape else MESH_AXES
    unknown = set(shape) - set(axes)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {INFERENCE_AXES}")
    sizes = [int(shape.get(a, 1)) for a in axes]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1: {shape}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh {shape} does not divide {len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(axes, sizes))} needs {math.prod(sizes)} devices, "
                         f"have {len(devices)}")
    arr = np.array(devices).reshape(sizes)
    return Mesh(arr, axes, axis_types=(AxisType.Auto,) * len(axes))


def parse_mesh_spec(text: str) -> dict[str, int]:
    """``"context=4,cfg=2"`` -> ``{"context": 4, "cfg": 2}`` (axes of :data:`INFERENCE_AXES`, sizes >= 1 or
    one -1: the remaining devices); ValueError with one line for anything else."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        name, eq, size = part.partition("=")
        name = name.strip()
        if not eq or name not in INFERENCE_AXES:
            raise ValueError(f"mesh spec {text!r}: expected AXIS=SIZE items with AXIS in {', '.join(INFERENCE_AXES)}"
                             f" (e.g. context=4,cfg=2), got {part!r}")
        if name in out:
            raise ValueError(f"mesh spec {text!r}: axis {name} given twice")
        try:
            n = int(size)
        except ValueError:
            raise ValueError(f"mesh spec {text!r}: size of {name} must be an integer, got {size.strip()!r}") from None
        if n < 1 and n != -1:
            raise ValueError(f"mesh spec {text!r}: size of {name} must be >= 1 (or -1: the remaining devices)")
        out[name] = n
    if not out:
        raise ValueError(f"mesh spec {text!r} names no axis (e.g. context=4,cfg=2)")
    if out.get(CFG_AXIS, 1) not in (1, 2):
        raise ValueError(f"mesh spec {text!r}: cfg must be 1 or 2 (the conditional and unconditional halves)")
    return out


def sampling_mesh(text: str, devices=None) -> Mesh:
    """The mesh of a ``--mesh`` spec (:func:`parse_mesh_spec`) over ``devices`` (default all, every process;
    in one process a spec naming fewer devices takes the first ones); ValueError with one line when the spec
    does not fit the devices."""
    shape = parse_mesh_spec(text)
    devices = list(jax.devices() if devices is None else devices)
    need = math.prod(v for v in shape.values() if v != -1)
    if -1 not in shape.values() and need < len(devices) and jax.process_count() == 1:
        devices = devices[:need]  # one process: a smaller mesh takes the first devices
    try:
        return make_mesh(shape, devices)
    except ValueError as e:
        raise ValueError(f"--mesh {text}: {e} ({jax.process_count()} process(es), {len(devices)} devices)") from None


def spec(axes: Sequence[str | None], shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> P:
    """PartitionSpec for logical ``axes``; with ``shape`` and ``mesh``, non-dividing axes are replicated."""
    out = []
    used: set[str] = set()
    for i, name in enumerate(axes):
        mesh_axes = RULES.get(name) if name is not None else None
        if name is not None and name not in RULES:
            raise KeyError(f"logical axis {name!r} has no rule in yume_jax.sharding.RULES")
        if mesh_axes and mesh is not None:
            mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1 and a not in used)
            if shape is not None and mesh_axes and shape[i] % math.prod(mesh.shape[a] for a in mesh_axes):
                mesh_axes = ()
        if not mesh_axes:
            out.append(None)
        else:
            used.update(mesh_axes)
            out.append(mesh_axes[0] if len(mesh_axes) == 1 else tuple(mesh_axes))
    return P(*out)


# ---------------------------------------------------------------------------------------------
# parameters: logical axes by name, one table per model family (the checkpoint's flat names, layer
# axis already stacked). A rule whose axes are None leaves the parameter replicated.

Rules = list[tuple[str, tuple[str | None, ...] | None]]

DIT_RULES: Rules = [
    (r"(self_attn|cross_attn)\.(q|k|v|k_img|v_img)\.kernel$", ("embed", "heads")),
    (r"(self_attn|cross_attn)\.(q|k|v|k_img|v_img)\.bias$", ("heads",)),
    (r"(self_attn|cross_attn)\.o\.kernel$", ("heads", "embed")),
    (r"(self_attn|cross_attn)\.o\.bias$", ("embed",)),
    (r"norm_(q|k|k_img)\.scale$", ("heads",)),
    (r"ffn\.fc1\.kernel$", ("embed", "mlp")),
    (r"ffn\.fc1\.bias$", ("mlp",)),
    (r"ffn\.fc2\.kernel$", ("mlp", "embed")),
    (r"ffn\.fc2\.bias$", ("embed",)),
    (r"modulation$", ("mod", "embed")),
    (r"norm3\.(scale|bias)$", ("embed",)),
    (r"patch_embedding\.kernel$", (None, None, None, "in", "embed")),
    (r"history_embedding\.\w+\.kernel$", (None, None, None, "in", None)),
    (r"history_embedding\.\w+\.bias$", (None,)),
    (r"patch_embedding\.bias$", ("embed",)),
    (r"(text_embedding|time_embedding)\.fc1\.kernel$", ("in", "embed")),
    (r"(text_embedding|time_embedding)\.fc2\.kernel$", ("embed", "embed")),
    (r"time_projection\.kernel$", ("embed", "mlp")),
    (r"time_projection\.bias$", ("mlp",)),
    (r"img_emb\.fc1\.kernel$", ("in", "in")),
    (r"img_emb\.fc2\.kernel$", ("in", "embed")),
    (r"img_emb\.norm1\.(scale|bias)$", ("in",)),
    (r"head\.proj\.kernel$", ("embed", "out")),
    (r"head\.proj\.bias$", ("out",)),
    (r"mask_token$", (None, None, "embed")),
    (r"\.bias$", ("embed",)),  # remaining biases and norm params are over the model width
    (r"\.scale$", ("embed",)),
]

# umT5 (spec/wan.md "Text encoder"): tensor parallel over heads and FFN units, FSDP over the width
T5_RULES: Rules = [
    (r"attn\.(q|k|v)\.kernel$", ("embed", "heads")),
    (r"attn\.o\.kernel$", ("heads", "embed")),
    (r"ffn\.(fc1|gate)\.kernel$", ("embed", "mlp")),
    (r"ffn\.fc2\.kernel$", ("mlp", "embed")),
    (r"pos_embedding\.embedding$", None),  # (buckets, heads) relative position bias: small
    (r"token_embedding\.embedding$", ("vocab", "embed")),
    (r"\.scale$", ("embed",)),
]

# CLIP ViT-H/14 visual tower (spec/wan.md "Image encoder")
CLIP_RULES: Rules = [
    (r"attn\.(q|k|v)\.kernel$", ("embed", "heads")),
    (r"attn\.(q|k|v)\.bias$", ("heads",)),
    (r"attn\.o\.kernel$", ("heads", "embed")),
    (r"mlp\.fc1\.kernel$", ("embed", "mlp")),
    (r"mlp\.fc1\.bias$", ("mlp",)),
    (r"mlp\.fc2\.kernel$", ("mlp", "embed")),
    (r"patch_embedding\.kernel$", (None, None, "in", "embed")),
    (r"pos_embedding$", (None, "embed")),
    (r"cls_embedding$", ("embed",)),
    (r"head\.kernel$", ("embed", "out")),
    (r"\.(bias|scale)$", ("embed",)),
]

# The VAE (spec/wan.md "VAE"): convolution weights (~0.5 GB) replicated; it runs data parallel on its batch.
VAE_RULES: Rules = [(r"", None)]

PARAM_RULES: dict[str, Rules] = {"dit": DIT_RULES, "t5": T5_RULES, "clip": CLIP_RULES, "vae": VAE_RULES}


def param_axes(name: str, ndim: int, family: str = "dit") -> tuple[str | None, ...]:
    """Logical axes of a ``family`` parameter from its flat name; stacked layers get a leading "layers" axis."""
    if family not in PARAM_RULES:
        raise KeyError(f"no sharding rules for model family {family!r}; known: {sorted(PARAM_RULES)}")
    stacked = name.startswith("blocks.")
    for pattern, axes in PARAM_RULES[family]:
        if re.search(pattern, name):
            if axes is None:
                return (None,) * ndim
            axes = (("layers",) if stacked else ()) + tuple(axes)
            if len(axes) != ndim:
                raise ValueError(f"{name}: rule {pattern} gives {len(axes)} axes for a {ndim}-d parameter")
            return axes
    raise KeyError(f"no sharding rule for {family} parameter {name!r} (add one to yume_jax.sharding.PARAM_RULES)")


def param_shardings(flat_shapes: dict[str, tuple[int, ...]], mesh: Mesh, family: str = "dit"
                    ) -> dict[str, NamedSharding]:
    return {k: NamedSharding(mesh, spec(param_axes(k, len(s), family), s, mesh)) for k, s in flat_shapes.items()}


# ---------------------------------------------------------------------------------------------
# activations

_state = threading.local()


def current_mesh() -> Mesh | None:
    return getattr(_state, "mesh", None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None) -> Iterator[Mesh | None]:
    """Make ``mesh`` the target of :func:`constrain` (and of sequence-parallel attention) while tracing."""
    prev = current_mesh()
    _state.mesh = mesh
    try:
        yield mesh
    finally:
        _state.mesh = prev


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Declare the sharding of an activation by logical axes (a no-op without a mesh)."""
    mesh = current_mesh()
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec(axes, x.shape, mesh)))


def named(axes: Sequence[str | None], shape=None, mesh: Mesh | None = None) -> NamedSharding:
    mesh = mesh or current_mesh()
    return NamedSharding(mesh, spec(axes, shape, mesh))
