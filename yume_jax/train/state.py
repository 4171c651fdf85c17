"""Training state: float32 master parameters, Optax AdamW with warmup + schedule + global-norm clipping,
optional EMA, and the shardings of all of it (FSDP / ZeRO-3: parameters, gradients and optimizer
moments are sharded alike by the logical table of :mod:`yume_jax.sharding`).

A task's state is a plain dict pytree (what Orbax saves) over its named models (:class:`Model`):
``{"step": int32[], "rng": uint32[2], <name>: {"params": <nested dict of float32>, "opt_state":
<optax state> (trainable models), "ema": <like params> (ema_decay > 0)}}``. Parameters are the NNX
state of the model as a pure nested dict (``nnx.merge(graphdef, params)`` rebuilds the model).

Reference optimiser (spec/yume.md "Training objective"): Adam, lr 1e-5, weight decay 1e-3, clip 1.0,
constant LR; weight decay is decoupled (AdamW) and applies to every parameter, as in the reference.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from yume_jax import sharding
from yume_jax.core import params as Pm
from yume_jax.models.config import DiTConfig
from yume_jax.models.loader import build


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to lr over warmup_steps, then constant / cosine / linear decay to
    end_lr_ratio * lr over decay_steps (default: the rest of the run)."""
    decay = (cfg.decay_steps or total_steps) - cfg.warmup_steps
    decay = max(decay, 1)
    end = cfg.lr * cfg.end_lr_ratio
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, decay, alpha=cfg.end_lr_ratio)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, end, decay)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if cfg.warmup_steps <= 0:
        return after
    warm = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warm, after], [cfg.warmup_steps])


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = make_schedule(cfg, total_steps)
    parts = []
    if cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
    return optax.chain(*parts), schedule


# ------------------------------------------------------------------------------------------------
# abstract model and shardings

def graphdef_and_abstract(dit: DiTConfig):
    """The model's graphdef and its parameters as a nested dict of float32 ShapeDtypeStructs."""
    model = build(dit, param_dtype="float32", abstract=True)
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    return graphdef, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), pure)


def param_shardings(abstract_params, mesh) -> dict:
    """Nested dict of NamedShardings, one per parameter, from the logical table."""
    flat = {k: tuple(v.shape) for k, v in Pm.flatten(abstract_params).items()}
    sh = sharding.param_shardings(flat, mesh)
    return Pm.map_named(abstract_params, lambda name, leaf: sh[name])


def tree_shardings_like_params(tree, param_sh: dict, mesh):
    """Shardings for a pytree whose leaves mirror parameters (optimizer moments, EMA): a leaf whose
    path ends with a parameter's name and has its shape gets that parameter's sharding; scalars and
    anything else are replicated."""
    flat_p = Pm.flatten(param_sh)
    names = sorted(flat_p, key=len, reverse=True)
    replicated = NamedSharding(mesh, P())

    def pick(path, leaf):
        full = Pm.path_name(path, attrs=True)
        for n in names:
            if full == n or full.endswith("." + n):
                s = flat_p[n]
                return s
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


@dataclasses.dataclass(frozen=True)
class Model:
    """One named model of a task: graphdef, abstract float32 parameters, its optimizer (None: frozen,
    no optimizer state) and EMA decay (0: no EMA copy). ``shardings(abstract_params, mesh)`` gives the
    parameter shardings (default: the logical table of :mod:`yume_jax.sharding`)."""

    graphdef: Any
    params: Any  # nested dict of ShapeDtypeStruct
    optimizer: optax.GradientTransformation | None = None
    ema_decay: float = 0.0
    shardings: Callable[[Any, Any], Any] | None = None

    @property
    def trainable(self) -> bool:
        return self.optimizer is not None


RESERVED = ("step", "rng")


def abstract_state(models: dict[str, Model]) -> dict:
    """``{"step", "rng", <name>: {"params", "opt_state" (trainable), "ema" (EMA)}}`` as ShapeDtypeStructs."""
    bad = [n for n in models if n in RESERVED]
    if bad:
        raise ValueError(f"model names {bad} are reserved state keys")
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
    for name, m in models.items():
        entry = {"params": m.params}
        if m.trainable:
            entry["opt_state"] = jax.eval_shape(m.optimizer.init, m.params)
        if m.ema_decay > 0:
            entry["ema"] = m.params
        state[name] = entry
    return state


def state_shardings(models: dict[str, Model], abstract: dict, mesh) -> dict:
    """Shardings of :func:`abstract_state`: optimizer moments and EMA follow their parameters."""
    rep = NamedSharding(mesh, P())
    out = {"step": rep, "rng": rep}
    for name, m in models.items():
        psh = m.shardings(m.params, mesh) if m.shardings is not None else param_shardings(m.params, mesh)
        entry = {"params": psh}
        if "opt_state" in abstract[name]:
            entry["opt_state"] = tree_shardings_like_params(abstract[name]["opt_state"], psh, mesh)
        if "ema" in abstract[name]:
            entry["ema"] = psh
        out[name] = entry
    return out


def with_shardings(abstract, shardings):
    """ShapeDtypeStructs carrying shardings (the restore target of Orbax)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


# ------------------------------------------------------------------------------------------------
# initial parameters

def random_params(dit: DiTConfig, seed: int, shardings):
    """Random float32 parameters (the model's own initialisers) created directly in their shards, nothing
    materialised on one device. The random bits come from XLA's RngBitGenerator ("unsafe_rbg" keys):
    4x faster to compile than threefry on CPU; values are reproducible for a seed and mesh."""
    from yume_jax.models.yume import YumeDiT

    def make():
        model = YumeDiT(dit, rngs=nnx.Rngs(jax.random.key(seed, impl="unsafe_rbg")), param_dtype=jnp.float32)
        return nnx.to_pure_dict(nnx.state(model))

    return jax.jit(make, out_shardings=shardings)()


def checkpoint_params(path: str, dit: DiTConfig, seed: int, shardings) -> tuple[dict, list[str]]:
    """Parameters from a converted Wan or Yume checkpoint (``python -m yume_jax.convert``), placed in
    their shards. Parameters the checkpoint lacks but ``dit`` has (the Yume extras when starting from
    Wan): history embeddings from the base patch embedding by trilinear interpolation (spec/yume.md),
    side block and mask token as in a fresh init (seed). Returns (params, names initialised here)."""
    from yume_jax.core.checkpoint import fill, open_checkpoint, place_with
    from yume_jax.models import memory

    src = open_checkpoint(path, "dit")
    ck = DiTConfig.from_dict(src.meta["config"])
    base_fields = ("dim", "ffn_dim", "num_heads", "num_layers", "in_channels", "out_channels", "text_dim",
                   "freq_dim", "patch_size", "image_dim", "cross_attn_norm", "qk_norm")
    diff = [f"{f}: checkpoint {getattr(ck, f)} vs config {getattr(dit, f)}" for f in base_fields
            if getattr(ck, f) != getattr(dit, f)]
    if diff:
        raise ValueError(f"checkpoint {path} does not fit the model config: " + "; ".join(diff))
    fresh = random_params(dit, seed, shardings)
    created: list[str] = []
    base: dict[str, np.ndarray] = {}

    def create(name, leaf):
        created.append(name)
        m = re.fullmatch(r"history_embedding\.x(\w+)\.(kernel|bias)", name)
        if not m:
            return leaf  # side block, mask token: the fresh init, already in its shards
        if not base:
            base["kernel"] = np.asarray(src.read("patch_embedding.kernel"), np.float32)
            base["bias"] = np.asarray(src.read("patch_embedding.bias"), np.float32)
        k, b = memory.init_history_from_base(base["kernel"], base["bias"], m.group(1))
        return k if m.group(2) == "kernel" else b

    params = fill(fresh, src, dtype=np.float32, create=create, place=place_with(Pm.flatten(shardings)))
    return params, created


def init_state(models: dict[str, Model], params: dict, seed: int, shardings) -> dict:
    """The state of :func:`abstract_state` from each model's parameters (buffers donated): optimizer
    states initialised in their shards, EMA copies, step 0 and the RNG of ``seed``."""
    def make(ps):
        st = {"step": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(seed))}
        for name, m in models.items():
            entry = {"params": ps[name]}
            if m.trainable:
                entry["opt_state"] = m.optimizer.init(ps[name])
            if m.ema_decay > 0:
                entry["ema"] = jax.tree.map(jnp.copy, ps[name])
            st[name] = entry
        return st

    return jax.jit(make, out_shardings=shardings, donate_argnums=0)(params)
