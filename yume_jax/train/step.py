"""Building blocks of a jitted training step, shared by every task: gradient accumulation over
micro-batches, optimizer apply (with clipping inside the Optax chain) and EMA on one model's state
entry, the step's random key, and the jit with declared shardings and donated state.

Batches arrive as (A, B/A, ...) global arrays, A = grad_accum, sharded over the data-parallel axes on
the second dimension. Randomness: the step's key is fold_in(state rng, step) (then fold_in(micro-batch
index)), so a restarted run draws exactly what the uninterrupted one drew.

Gradients are constrained to the parameter shardings (a reduce-scatter under FSDP) and averaged over
the micro-batches in float32.

Non-finite guard (:func:`guard_nonfinite`, inside every jitted step): when the step's ``loss`` or
``grad_norm`` is NaN/inf, every model entry of the state (parameters, optimizer state, EMA) keeps its
value from before the step (a select on one scalar predicate, fused with the update; no host sync) and
the metrics carry ``nonfinite`` = 1. The trainer then stops (``nonfinite=stop``) or counts the skipped
step (``nonfinite=skip``).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from yume_jax import sharding


def batch_shardings(batch_spec: dict, mesh) -> dict:
    """(A, B/A, ...) arrays: replicated on the micro-batch axis, batch over (data, fsdp)."""
    out = {}
    for k, shape in batch_spec.items():
        spec = sharding.spec(("batch",), (shape[1],), mesh)[0]
        out[k] = NamedSharding(mesh, P(None, spec, *([None] * (len(shape) - 2))))
    return out


def step_key(state: dict) -> jax.Array:
    """This step's key: fold_in(state rng, state step)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])


def accumulate(loss_fn: Callable, params, batch: dict, key: jax.Array, grad_shardings=None):
    """Mean (loss, aux, grads) of ``loss_fn(params, micro_batch, key) -> (loss, aux)`` over the leading
    micro-batch axis of ``batch`` (a scan; micro-batch i gets fold_in(key, i))."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one(i, mb):
        (loss, aux), g = grad_fn(params, mb, jax.random.fold_in(key, i))
        if grad_shardings is not None:
            g = jax.lax.with_sharding_constraint(g, grad_shardings)
        return loss, aux, g

    accum = jax.tree.leaves(batch)[0].shape[0]
    if accum == 1:
        return one(0, jax.tree.map(lambda x: x[0], batch))

    def body(carry, xs):
        return jax.tree.map(jnp.add, carry, one(*xs)), None

    shapes = jax.eval_shape(one, 0, jax.tree.map(lambda x: x[0], batch))
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zero, (jnp.arange(accum), batch))
    return jax.tree.map(lambda x: x / accum, total)


def apply_gradients(entry: dict, grads, optimizer: optax.GradientTransformation, ema_decay: float = 0.0) -> dict:
    """One model's state entry ({"params", "opt_state", "ema"?}) after an optimizer update."""
    updates, opt_state = optimizer.update(grads, entry["opt_state"], entry["params"])
    params = optax.apply_updates(entry["params"], updates)
    new = {**entry, "params": params, "opt_state": opt_state}
    if "ema" in entry:
        new["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, entry["ema"], params)
    return new


GUARDED = ("loss", "grad_norm")  # the metrics whose finiteness decides whether a step is applied
KEEP = ("step", "rng")  # state entries that advance even on a skipped step (data position, schedule, noise)


def finite_metrics(metrics: dict) -> jax.Array:
    """True when the guarded metrics (``loss``, ``grad_norm``; every float metric if neither is there) are
    finite."""
    keys = [k for k in GUARDED if k in metrics] or [k for k, v in metrics.items()
                                                    if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating)]
    ok = jnp.bool_(True)
    for k in keys:
        ok = ok & jnp.all(jnp.isfinite(metrics[k]))
    return ok


def guard_nonfinite(old, new, metrics: dict) -> tuple[Any, dict]:
    """(state, metrics) of a step with the non-finite guard: the model entries of ``new`` where the
    metrics are finite, else those of ``old`` (``step``/``rng`` advance either way); ``nonfinite`` added."""
    ok = finite_metrics(metrics)

    def pick(a, b):
        return jax.tree.map(lambda x, y: jnp.where(ok, y, x), a, b)

    if isinstance(new, dict) and isinstance(old, dict):
        out = {k: (v if k in KEEP or k not in old else pick(old[k], v)) for k, v in new.items()}
    else:
        out = pick(old, new)
    return out, {**metrics, "nonfinite": jnp.where(ok, 0.0, 1.0).astype(jnp.float32)}


def jit_step(step: Callable[[Any, dict], tuple[Any, dict]], mesh, state_sh, batch_sh) -> Callable:
    """jit(state, batch) -> (state, metrics): state donated and kept in its shardings, metrics
    replicated, ``mesh`` active while tracing (for the model's activation constraints), the non-finite
    guard applied (:func:`guard_nonfinite`)."""
    def traced(state, batch):
        with sharding.use_mesh(mesh):
            new, metrics = step(state, batch)
            return guard_nonfinite(state, new, metrics)

    rep = NamedSharding(mesh, P())
    return jax.jit(traced, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep), donate_argnums=(0,))
