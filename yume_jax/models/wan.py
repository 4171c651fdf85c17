"""The Wan 2.1 / 2.2 video DiT in Flax NNX (spec/wan.md "Forward math").

One class, :class:`WanDiT`, covers Wan2.1 T2V, Wan2.1 I2V (CLIP image tokens through ``img_emb`` and
a second cross-attention over them) and Wan2.2 TI2V (per-token timesteps). The blocks' parameters
are stacked on a leading layer axis and run with ``lax.scan`` (compile time does not grow with
depth), optionally rematerialised.

Precision rule (documented choice): matmuls and attention run in ``Runtime.dtype``; the time
embedding, modulation, all norms, RoPE, the head and the residual stream are float32, as in the
original Wan code (diffusers instead casts the residual back to the activation dtype after each
add). In float32 both are the same function.

Token layout: (B, L, dim) with L = F' * H' * W' in frame-major order; the output features of the
head are ordered (pt, ph, pw, c) with c fastest.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yume_jax import sharding
from yume_jax.models import rope as rope_lib
from yume_jax.models.attention import attention
from yume_jax.models.config import DiTConfig, Runtime
from yume_jax.models.layers import F32, LayerNorm, Linear, RMSNorm, gelu_exact, gelu_tanh, layer_norm, matmul


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """[cos, sin] of t * 10000^(-i/(dim/2)), float32 (diffusers' Timesteps with flip_sin_to_cos)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=F32) / half)
    args = t.astype(F32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class PatchEmbed(nnx.Module):
    """Conv3d with kernel = stride, as a matmul over patches. kernel: (kt, kh, kw, C_in, C_out)."""

    def __init__(self, c_in: int, c_out: int, patch: tuple[int, int, int], *, rngs: nnx.Rngs, param_dtype=F32):
        fan_in = c_in * math.prod(patch)
        bound = fan_in ** -0.5
        self.patch = tuple(patch)
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (*patch, c_in, c_out), param_dtype, -bound, bound))
        self.bias = nnx.Param(jax.random.uniform(rngs.params(), (c_out,), param_dtype, -bound, bound))

    def __call__(self, x: jax.Array, dtype) -> tuple[jax.Array, tuple[int, int, int]]:
        """x: (B, C, F, H, W) with F, H, W multiples of the patch -> ((B, F'*H'*W', C_out), (F', H', W'))."""
        b, c, f, h, w = x.shape
        pt, ph, pw = self.patch
        g = (f // pt, h // ph, w // pw)
        x = x.reshape(b, c, g[0], pt, g[1], ph, g[2], pw).transpose(0, 2, 4, 6, 3, 5, 7, 1)
        x = x.reshape(b, g[0] * g[1] * g[2], pt * ph * pw * c)
        k = self.kernel[...].reshape(-1, self.kernel.shape[-1])
        y = matmul(x, k, dtype) + self.bias[...].astype(F32)
        return y, g


class MLP(nnx.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, act, *, rngs: nnx.Rngs, param_dtype=F32):
        self.fc1 = Linear(d_in, d_hidden, rngs=rngs, param_dtype=param_dtype)
        self.fc2 = Linear(d_hidden, d_out, rngs=rngs, param_dtype=param_dtype)
        self.act = act

    def __call__(self, x, dtype):
        return self.fc2(self.act(self.fc1(x, dtype)), dtype)


class _Attention(nnx.Module):
    """q, k, v, o projections and the q/k RMS norms over all heads, shared by both attentions."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        d = cfg.dim
        self.num_heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (Linear(d, d, rngs=rngs, param_dtype=param_dtype) for _ in range(4))
        self.norm_q = RMSNorm(d, cfg.eps, param_dtype=param_dtype) if cfg.qk_norm else None
        self.norm_k = RMSNorm(d, cfg.eps, param_dtype=param_dtype) if cfg.qk_norm else None


class SelfAttention(_Attention):

    def __call__(self, x, cos, sin, rt: Runtime):
        b, l, d = x.shape
        n = self.num_heads
        q, k, v = self.q(x, rt.dtype), self.k(x, rt.dtype), self.v(x, rt.dtype)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        q, k, v = (t.reshape(b, l, n, d // n) for t in (q, k, v))
        q, k = rope_lib.apply_rope(q, cos, sin), rope_lib.apply_rope(k, cos, sin)
        q, k, v = (sharding.constrain(t, ("batch", "seq", "act_heads", None)) for t in (q, k, v))
        y = attention(q, k, v, rt.attention, rt.seq_parallel).reshape(b, l, d)
        return self.o(y, rt.dtype)


class CrossAttention(_Attention):
    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        super().__init__(cfg, rngs=rngs, param_dtype=param_dtype)
        d = cfg.dim
        if cfg.image_dim is not None:
            self.k_img = Linear(d, d, rngs=rngs, param_dtype=param_dtype)
            self.v_img = Linear(d, d, rngs=rngs, param_dtype=param_dtype)
            self.norm_k_img = RMSNorm(d, cfg.eps, param_dtype=param_dtype) if cfg.qk_norm else None
        else:
            self.k_img = self.v_img = self.norm_k_img = None

    def _kv(self, ctx, k_proj, v_proj, norm, rt):
        b, lc, d = ctx.shape
        n = self.num_heads
        k, v = k_proj(ctx, rt.dtype), v_proj(ctx, rt.dtype)
        if norm is not None:
            k = norm(k)
        return k.reshape(b, lc, n, d // n), v.reshape(b, lc, n, d // n)

    def __call__(self, x, ctx, ctx_img, rt: Runtime):
        b, l, d = x.shape
        n = self.num_heads
        q = self.q(x, rt.dtype)
        if self.norm_q is not None:
            q = self.norm_q(q)
        q = sharding.constrain(q.reshape(b, l, n, d // n), ("batch", "seq", "act_heads", None))
        k, v = self._kv(ctx, self.k, self.v, self.norm_k, rt)
        # K/V of the (replicated) text/image tokens: the query shard stays, no collective (attention.py)
        y = attention(q, k, v, rt.attention, "gather")
        if self.k_img is not None:
            if ctx_img is None:
                raise ValueError("this model has image cross-attention: image_context is required")
            ki, vi = self._kv(ctx_img, self.k_img, self.v_img, self.norm_k_img, rt)
            y = y + attention(q, ki, vi, rt.attention, "gather")
        return self.o(y.reshape(b, l, d), rt.dtype)


def _split_modulation(mod: jax.Array, count: int) -> list[jax.Array]:
    """(B, count, D) or (B, L, count, D) -> ``count`` tensors broadcastable against (B, L, D)."""
    if mod.ndim == 3:
        return [mod[:, None, i] for i in range(count)]
    return [mod[:, :, i] for i in range(count)]


class Block(nnx.Module):
    """One DiT block: modulated self-attention, cross-attention, modulated FFN (spec/wan.md 2-6)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        self.eps = cfg.eps
        self.modulation = nnx.Param(jax.random.normal(rngs.params(), (6, cfg.dim), param_dtype) / cfg.dim ** 0.5)
        self.self_attn = SelfAttention(cfg, rngs=rngs, param_dtype=param_dtype)
        self.cross_attn = CrossAttention(cfg, rngs=rngs, param_dtype=param_dtype)
        self.norm3 = LayerNorm(cfg.dim, cfg.eps, param_dtype=param_dtype) if cfg.cross_attn_norm else None
        self.ffn = MLP(cfg.dim, cfg.ffn_dim, cfg.dim, gelu_tanh, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, e0, ctx, ctx_img, cos, sin, rt: Runtime):
        """x: (B, L, D) float32 residual stream; e0: (B, 6, D) or (B, L, 6, D) float32."""
        mod = self.modulation[...].astype(F32) + e0
        shift, scale, gate, c_shift, c_scale, c_gate = _split_modulation(mod, 6)
        h = (layer_norm(x, self.eps) * (1 + scale) + shift).astype(rt.dtype)
        x = x + self.self_attn(h, cos, sin, rt).astype(F32) * gate
        h = self.norm3(x) if self.norm3 is not None else x
        x = x + self.cross_attn(h.astype(rt.dtype), ctx, ctx_img, rt).astype(F32)
        h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(rt.dtype)
        x = x + self.ffn(h, rt.dtype).astype(F32) * c_gate
        return sharding.constrain(x, ("batch", "seq", "act_embed"))


class ImageEmbedding(nnx.Module):
    """img_emb: LayerNorm, Linear, exact GELU, Linear, LayerNorm (CLIP features -> model width)."""

    def __init__(self, image_dim: int, dim: int, *, rngs: nnx.Rngs, param_dtype=F32):
        self.norm1 = LayerNorm(image_dim, 1e-5, param_dtype=param_dtype)
        self.fc1 = Linear(image_dim, image_dim, rngs=rngs, param_dtype=param_dtype)
        self.fc2 = Linear(image_dim, dim, rngs=rngs, param_dtype=param_dtype)
        self.norm2 = LayerNorm(dim, 1e-5, param_dtype=param_dtype)

    def __call__(self, x, dtype):
        h = self.norm1(x).astype(dtype)
        h = self.fc2(gelu_exact(self.fc1(h, dtype)), dtype)
        return self.norm2(h).astype(dtype)


class Head(nnx.Module):
    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        self.eps = cfg.eps
        self.modulation = nnx.Param(jax.random.normal(rngs.params(), (2, cfg.dim), param_dtype) / cfg.dim ** 0.5)
        self.proj = Linear(cfg.dim, cfg.out_channels * cfg.patch_features, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, e):
        """Uses e (not e0): (B, D) or per-token (B, L, D). Runs in float32."""
        e = e[:, None, None] if e.ndim == 2 else e[:, :, None]  # (B, 1 or L, 1, D)
        mod = self.modulation[...].astype(F32) + e  # (B, 1 or L, 2, D)
        shift, scale = mod[:, :, 0], mod[:, :, 1]
        return self.proj(layer_norm(x, self.eps) * (1 + scale) + shift, F32)


class Conditioning(NamedTuple):
    e: jax.Array  # (B, D) or (B, L, D) float32: head modulation input
    e0: jax.Array  # (B, 6, D) or (B, L, 6, D) float32: block modulation input
    ctx: jax.Array  # (B, L_text, D) text tokens in the compute dtype
    ctx_img: jax.Array | None  # (B, 257, D) image tokens or None


class BlockCache(NamedTuple):
    """Block residual cache (spec/yume.md "Distillation and caching"), carried through a sampling loop."""
    residuals: jax.Array  # (num_slots, B, L, D): the stored residual (output - input) of each cached layer
    slots: jax.Array  # (num_layers,) int32: each layer's slot, -1 for layers always computed


_REMAT = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def stacked_blocks(cfg: DiTConfig, rngs: nnx.Rngs, param_dtype, count: int | None = None) -> Block:
    """``count`` blocks (default cfg.num_layers) as one Block module whose params have a leading layer axis."""
    count = cfg.num_layers if count is None else count
    keys = jax.random.split(rngs.params(), count)
    state = jax.vmap(lambda k: nnx.state(Block(cfg, rngs=nnx.Rngs(k), param_dtype=param_dtype)))(keys)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: Block(cfg, rngs=nnx.Rngs(0), param_dtype=param_dtype)))
    return nnx.merge(graphdef, state)


class WanDiT(nnx.Module):
    """The Wan DiT. ``__call__`` is the diffusers-layout forward; the pieces are public for Yume."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = PatchEmbed(cfg.in_channels, d, cfg.patch_size, rngs=rngs, param_dtype=param_dtype)
        self.text_embedding = MLP(cfg.text_dim, d, d, gelu_tanh, rngs=rngs, param_dtype=param_dtype)
        self.time_embedding = MLP(cfg.freq_dim, d, d, jax.nn.silu, rngs=rngs, param_dtype=param_dtype)
        self.time_projection = Linear(d, 6 * d, rngs=rngs, param_dtype=param_dtype)
        self.img_emb = (ImageEmbedding(cfg.image_dim, d, rngs=rngs, param_dtype=param_dtype)
                        if cfg.image_dim is not None else None)
        self.blocks = stacked_blocks(cfg, rngs, param_dtype)
        self.head = Head(cfg, rngs=rngs, param_dtype=param_dtype)

    # -- pieces ---------------------------------------------------------------------------------
    def condition(self, t: jax.Array, text: jax.Array, image: jax.Array | None, rt: Runtime) -> Conditioning:
        """t: (B,) or per-token (B, L) in [0, 1000]."""
        e = self.time_embedding(sinusoidal_embedding(t, self.cfg.freq_dim), F32)
        e0 = self.time_projection(jax.nn.silu(e), F32)
        e0 = e0.reshape(*e0.shape[:-1], 6, self.cfg.dim)
        ctx = self.text_embedding(text, rt.dtype)
        ctx_img = self.img_emb(image, rt.dtype) if (self.img_emb is not None and image is not None) else None
        if self.img_emb is not None and image is None:
            raise ValueError("this model (image_dim set) needs image_context (B, 257, image_dim)")
        return Conditioning(e, e0, ctx, ctx_img)

    def run_blocks(self, x: jax.Array, cond: Conditioning, positions: np.ndarray, rt: Runtime,
                   layers: tuple[int, int] | None = None, blocks: Block | None = None,
                   cache: BlockCache | None = None, refresh=None):
        """Apply blocks ``layers=(start, stop)`` (default all) to tokens x with static RoPE positions.
        With ``cache`` (all layers), returns (x, cache) (see :meth:`_scan`)."""
        cos, sin = rope_lib.rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
        return self._scan(x, cond, (cos, sin), rt, layers, blocks, cache=cache, refresh=refresh)

    def block_features(self, x: jax.Array, cond: Conditioning, positions: np.ndarray, rt: Runtime,
                       layers: tuple[int, ...]) -> list[jax.Array]:
        """The residual stream (B, L, D) float32 after each block of ``layers`` (0-based, in the order given),
        running the blocks only up to the last of them (consecutive scanned segments of :meth:`_scan`, so
        compile time stays flat in depth). Intermediate DiT features for a discriminator head."""
        n = self.cfg.num_layers
        if not layers or any(not 0 <= int(i) < n for i in layers):
            raise ValueError(f"feature layers {layers} must be non-empty and in 0..{n - 1}")
        rope = rope_lib.rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
        out, start = {}, 0
        for stop in sorted({int(i) + 1 for i in layers}):
            x = self._scan(x, cond, rope, rt, layers=(start, stop))
            out[stop - 1], start = x, stop
        return [out[int(i)] for i in layers]

    def _scan(self, x, cond, rope, rt, layers=None, blocks=None, cache: BlockCache | None = None, refresh=None):
        """The blocks, one ``lax.scan`` over the stacked layer axis.

        Optional block residual caching (spec/yume.md "Distillation and caching"): ``cache.slots`` gives
        each layer's slot in ``cache.residuals`` (-1: always computed). When ``refresh`` (a traced bool) is
        true every layer runs and the cached layers store ``output - input`` in their slot; otherwise the
        cached layers are skipped and add their stored residual. Returns (x, cache) when caching, else x."""
        blocks = self.blocks if blocks is None else blocks
        graphdef, state = nnx.split(blocks)
        if layers is not None:
            if cache is not None:
                raise ValueError("block caching runs all layers (no layers=)")
            state = jax.tree.map(lambda p: p[layers[0]:layers[1]], state)
        cos, sin = rope

        def layer(h, layer_state):
            return nnx.merge(graphdef, layer_state)(h, cond.e0, cond.ctx, cond.ctx_img, cos, sin, rt)

        if rt.remat != "none":
            layer = jax.checkpoint(layer, policy=_REMAT[rt.remat], prevent_cse=False)

        x = sharding.constrain(x.astype(F32), ("batch", "seq", "act_embed"))
        if cache is None:
            def body(h, layer_state):
                return layer(h, layer_state), None

            carry, xs = x, state
        else:
            def body(carry, xs):
                h, res = carry
                layer_state, slot = xs
                idx = jnp.maximum(slot, 0)

                def skip(h, res):
                    return h + res[idx].astype(F32), res

                def run(h, res):
                    out = layer(h, layer_state)
                    stored = jax.lax.dynamic_update_index_in_dim(res, (out - h).astype(res.dtype), idx, 0)
                    return out, jnp.where(slot >= 0, stored, res)

                return jax.lax.cond((slot >= 0) & jnp.logical_not(refresh), skip, run, h, res), None

            carry, xs = (x, cache.residuals), (state, jnp.asarray(cache.slots, jnp.int32))

        if rt.scan_layers:
            carry, _ = jax.lax.scan(body, carry, xs)
        else:
            n = jax.tree.leaves(state)[0].shape[0]
            for i in range(n):
                carry, _ = body(carry, jax.tree.map(lambda p: p[i], xs))
        if cache is None:
            return carry
        x, residuals = carry
        return x, cache._replace(residuals=residuals)

    def unpatchify(self, y: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
        """(B, F'*H'*W', pt*ph*pw*C) -> (B, C, F, H, W)."""
        b = y.shape[0]
        pt, ph, pw = self.cfg.patch_size
        f, h, w = grid
        c = self.cfg.out_channels
        y = y.reshape(b, f, h, w, pt, ph, pw, c).transpose(0, 7, 1, 4, 2, 5, 3, 6)
        return y.reshape(b, c, f * pt, h * ph, w * pw)

    # -- the plain Wan forward -----------------------------------------------------------------
    def __call__(self, hidden_states, timestep, text_context, image_context=None, *, runtime: Runtime = Runtime()):
        rt = runtime
        x, grid = self.patch_embedding(hidden_states, rt.dtype)
        cond = self.condition(timestep, text_context, image_context, rt)
        x = self.run_blocks(x, cond, rope_lib.grid_positions(*grid), rt)
        e = cond.e
        return self.unpatchify(self.head(x, e), grid)
