"""Classifier-free guidance (spec/yume.md "Sampling": CFG 5.0 with Wan's negative prompt):
v = v_uncond + scale * (v_cond - v_uncond).

Models here are ``model(params, x, sigma, ctx) -> v``: ``params`` is shared, ``ctx`` is a pytree of
conditioning arrays with a leading batch axis (text embeddings, CLIP tokens, ...), ``x`` is [B, ...] and
``sigma`` is a scalar or per-position with a leading axis of size 1 or B. Both helpers return a
``velocity(x, sigma)`` for the samplers.

A stateful model (block caching, yume_jax/sampling/cache.py) is ``model(params, x, sigma, ctx, step, state)
-> (v, state)``; :func:`guided` then returns the stateful velocity ``velocity(x, sigma, step, state) -> (v,
state)`` (loop.py), the state seeing the batch of 2B.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _check_ctx(cond, uncond):
    if jax.tree.structure(cond) != jax.tree.structure(uncond):
        raise ValueError("cond and uncond contexts must have the same structure")
    for c, u in zip(jax.tree.leaves(cond), jax.tree.leaves(uncond)):
        if c.shape != u.shape:
            raise ValueError(f"cond and uncond context shapes differ: {c.shape} vs {u.shape} "
                             "(pad the negative prompt to the same length)")


def batched_sigma(sigma, b):
    """A scalar sigma as is; a per-position sigma broadcast to batch size ``b`` on its leading axis."""
    sigma = jnp.asarray(sigma)
    return sigma if sigma.ndim == 0 else jnp.broadcast_to(sigma, (b,) + sigma.shape[1:])


def guided(model, params, cond, uncond, scale: float):
    """CFG with cond and uncond in ONE batch of 2B: one model call per evaluation. Extra arguments of the
    velocity (``step, state`` of a stateful model) go to the model, whose state comes back with v."""
    _check_ctx(cond, uncond)

    def velocity(x, sigma, *stateful):
        b = x.shape[0]
        s = batched_sigma(sigma, b)
        s2 = s if s.ndim == 0 else jnp.concatenate([s, s])
        ctx = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
        out = model(params, jnp.concatenate([x, x]), s2, ctx, *stateful)
        out, state = out if stateful else (out, None)
        v_c, v_u = out[:b], out[b:]
        v = v_u + scale * (v_c - v_u)
        return (v, state) if stateful else v

    return velocity


def guided_split(model, params, cond, uncond, scale: float, mesh, axis: str = "cfg"):
    """CFG with cond on one half and uncond on the other half of mesh axis ``axis`` (size 2).

    Each device group runs the model on B samples only; the guided velocity is one psum of the halves
    weighted (scale, 1 - scale), replicated over ``axis``. Other mesh axes stay automatic, so the model may
    shard itself over them. ``params`` must be replicated over ``axis``.
    """
    _check_ctx(cond, uncond)
    if axis not in mesh.shape or mesh.shape[axis] != 2:
        raise ValueError(f"mesh axis {axis!r} must exist and have size 2, mesh is {dict(mesh.shape)}")

    def half(params, x2, s2, ctx2, w2):
        v = model(params, x2[0], s2 if s2.ndim == 0 else s2[0], jax.tree.map(lambda c: c[0], ctx2))
        return jax.lax.psum(w2[0] * v, axis)

    def velocity(x, sigma):
        s = batched_sigma(sigma, x.shape[0]).astype(jnp.float32)
        s2, s_spec = (s, P()) if s.ndim == 0 else (jnp.stack([s, s]), P(axis))
        ctx2 = jax.tree.map(lambda c, u: jnp.stack([c, u]), cond, uncond)
        w2 = jnp.array([scale, 1.0 - scale], x.dtype)
        fn = jax.shard_map(half, mesh=mesh, axis_names={axis}, out_specs=P(),
                           in_specs=(P(), P(axis), s_spec, P(axis), P(axis)))
        return fn(params, jnp.stack([x, x]), s2, ctx2, w2)

    return velocity
