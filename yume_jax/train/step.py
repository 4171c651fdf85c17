"""One jitted training step with declared shardings (FSDP / ZeRO-3 over ``fsdp``, tensor and sequence
parallel inside the model), donated state buffers, gradient accumulation as a scan over micro-batches.

Batches arrive as (A, B/A, ...) global arrays, A = grad_accum, sharded over the data-parallel axes on
the second dimension. Randomness: the step's key is fold_in(state rng, step) (then fold_in(micro-batch
index)), so a restarted run draws exactly what the uninterrupted one drew.

bf16 compute with fp32 master weights: the model casts each matmul kernel to the compute dtype where
it is used (norms, modulation, time embedding and head stay float32, spec/wan.md "Precision"), so
gradients of a kernel used in several places (plain and MVDT pass) are summed in float32. Gradients
are constrained to the parameter shardings (a reduce-scatter under FSDP).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from yume_jax import sharding
from yume_jax.models.config import Runtime
from yume_jax.train import objective


def batch_shardings(batch_spec: dict, mesh) -> dict:
    """(A, B/A, ...) arrays: replicated on the micro-batch axis, batch over (data, fsdp)."""
    out = {}
    for k, shape in batch_spec.items():
        spec = sharding.spec(("batch",), (shape[1],), mesh)[0]
        out[k] = NamedSharding(mesh, P(None, spec, *([None] * (len(shape) - 2))))
    return out


def make_train_step(graphdef, *, objective_cfg, runtime: Runtime, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh, state_sh: dict, batch_sh: dict, ema_decay: float = 0.0,
                    chunk: int, keep: int | None) -> Callable:
    """jit(state, batch) -> (state, metrics) for one static (chunk, keep)."""
    ob = objective_cfg
    param_sh = state_sh["params"]

    def micro_loss(params, mb, key):
        model = nnx.merge(graphdef, params)
        return objective.loss(model, mb, key, chunk=chunk, keep=keep, history=ob.history, t_mean=ob.t_mean,
                              t_std=ob.t_std, shift=ob.shift, i2v=ob.i2v, runtime=runtime)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state, batch):
        with sharding.use_mesh(mesh):
            params = state["params"]
            key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
            accum = jax.tree.leaves(batch)[0].shape[0]

            def one(i, mb):
                (loss, aux), g = grad_fn(params, mb, jax.random.fold_in(key, i))
                g = jax.lax.with_sharding_constraint(g, param_sh)
                return loss, aux, g

            if accum == 1:
                loss, aux, grads = one(0, jax.tree.map(lambda x: x[0], batch))
            else:
                def body(carry, xs):
                    i, mb = xs
                    acc = jax.tree.map(jnp.add, carry, one(i, mb))
                    return acc, None

                zero = jax.tree.map(jnp.zeros_like, (jnp.zeros((), jnp.float32),
                                                     {"loss_unmasked": jnp.zeros((), jnp.float32),
                                                      "loss_masked": jnp.zeros((), jnp.float32)}, params))
                (loss, aux, grads), _ = jax.lax.scan(body, zero, (jnp.arange(accum), batch))
                loss, aux, grads = jax.tree.map(lambda x: x / accum, (loss, aux, grads))
            grad_norm = optax.tree.norm(grads)
            updates, opt_state = optimizer.update(grads, state["opt_state"], params)
            new_params = optax.apply_updates(params, updates)
            new = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state, "rng": state["rng"]}
            if "ema" in state:
                new["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state["ema"], new_params)
            metrics = {"loss": loss, **aux, "grad_norm": grad_norm, "lr": schedule(state["step"])}
            return new, metrics

    rep = NamedSharding(mesh, P())
    return jax.jit(step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, rep), donate_argnums=(0,))
