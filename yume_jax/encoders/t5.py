"""umT5 encoder in Flax NNX (spec/wan.md "Text encoder: umT5-XXL encoder").

Per block: x += Attn(RMSNorm(x)); x += FFN(RMSNorm(x)); then a final RMSNorm. Attention has no
1/sqrt(d) scaling and adds a learned relative position bias (32 buckets, max distance 128,
bidirectional) from a table owned by EVERY block (plain T5 shares block 0's). FFN =
fc2(gelu_tanh(gate(x)) * fc1(x)). Padded keys are masked; padded queries are computed too, exactly
as transformers' ``UMT5EncoderModel(...).last_hidden_state``.

Precision rule (bf16 inference): parameters and matmul inputs in the compute dtype with float32
accumulation; the residual stream, RMS statistics, position bias and softmax in float32; the output
is returned in the compute dtype. Blocks are stacked on a leading layer axis and run with lax.scan.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yume_jax.encoders.config import UMT5Config
from yume_jax.models.layers import F32, Linear, RMSNorm, gelu_tanh

NEG = float(np.finfo(np.float32).min)


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of (key - query) for every pair, bidirectional (Mesh TF / T5), as int32 [q_len, k_len].

    Computed on the host in float32 exactly like the PyTorch references (same log, same truncation), so
    the bucket boundaries agree bit for bit; the result is a compile-time constant.
    """
    rel = np.arange(k_len, dtype=np.int64)[None, :] - np.arange(q_len, dtype=np.int64)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    exact = half // 2
    log = np.log(np.maximum(rel, 1).astype(np.float32) / np.float32(exact))
    large = log / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
    large = np.minimum(exact + large.astype(np.int64), half - 1)
    return (out + np.where(rel < exact, rel, large)).astype(np.int32)


class Embedding(nnx.Module):
    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs, param_dtype=F32, std: float = 1.0):
        w = jax.random.normal(rngs.params(), (num, dim), param_dtype)  # in param_dtype: no fp32 temporary
        self.embedding = nnx.Param(w * jnp.asarray(std, param_dtype))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)


class Attention(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs, param_dtype=F32):
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q = Linear(cfg.dim, cfg.inner_dim, rngs=rngs, param_dtype=param_dtype, bias=False)
        self.k = Linear(cfg.dim, cfg.inner_dim, rngs=rngs, param_dtype=param_dtype, bias=False)
        self.v = Linear(cfg.dim, cfg.inner_dim, rngs=rngs, param_dtype=param_dtype, bias=False)
        self.o = Linear(cfg.inner_dim, cfg.dim, rngs=rngs, param_dtype=param_dtype, bias=False)

    def __call__(self, x, bias, key_mask, dtype):
        """x (B, L, D); bias (H, L, L) float32; key_mask (B, L) bool."""
        b, n, _ = x.shape
        q, k, v = (f(x, dtype).reshape(b, n, self.heads, self.head_dim) for f in (self.q, self.k, self.v))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=F32) + bias[None]
        s = jnp.where(key_mask[:, None, None, :], s, NEG)
        p = jax.nn.softmax(s, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", p.astype(dtype), v, preferred_element_type=F32)
        return self.o(out.reshape(b, n, -1), dtype)


class GatedFFN(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs, param_dtype=F32):
        self.gate = Linear(cfg.dim, cfg.ffn_dim, rngs=rngs, param_dtype=param_dtype, bias=False)
        self.fc1 = Linear(cfg.dim, cfg.ffn_dim, rngs=rngs, param_dtype=param_dtype, bias=False)
        self.fc2 = Linear(cfg.ffn_dim, cfg.dim, rngs=rngs, param_dtype=param_dtype, bias=False)

    def __call__(self, x, dtype):
        h = gelu_tanh(self.gate(x, dtype).astype(F32)) * self.fc1(x, dtype).astype(F32)
        return self.fc2(h.astype(dtype), dtype)


class Block(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs, param_dtype=F32):
        self.norm1 = RMSNorm(cfg.dim, cfg.eps, param_dtype=param_dtype)
        self.attn = Attention(cfg, rngs=rngs, param_dtype=param_dtype)
        self.pos_embedding = Embedding(cfg.num_buckets, cfg.num_heads, rngs=rngs, param_dtype=param_dtype,
                                       std=cfg.dim ** -0.5)
        self.norm2 = RMSNorm(cfg.dim, cfg.eps, param_dtype=param_dtype)
        self.ffn = GatedFFN(cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, buckets, key_mask, dtype):
        bias = jnp.moveaxis(self.pos_embedding(buckets).astype(F32), -1, 0)  # (H, L, L)
        x = x + self.attn(self.norm1(x), bias, key_mask, dtype).astype(F32)
        return x + self.ffn(self.norm2(x), dtype).astype(F32)


def stacked(make, count: int, rngs: nnx.Rngs):
    """``count`` modules from ``make(rngs)`` as one module whose params have a leading layer axis."""
    keys = jax.random.split(rngs.params(), count)
    state = jax.vmap(lambda k: nnx.state(make(nnx.Rngs(k))))(keys)
    return nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: make(nnx.Rngs(0)))), state)


def scan_blocks(blocks: nnx.Module, x: jax.Array, count: int, *args) -> jax.Array:
    """Apply the first ``count`` of the stacked ``blocks`` to x with lax.scan (no copy of the stack)."""
    graphdef, state = nnx.split(blocks)

    def body(h, i):
        layer = jax.tree.map(lambda p: jax.lax.dynamic_index_in_dim(p, i, keepdims=False), state)
        return nnx.merge(graphdef, layer)(h, *args), None

    x, _ = jax.lax.scan(body, x, jnp.arange(count))
    return x


class UMT5Encoder(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs, param_dtype=F32):
        self.cfg = cfg
        self.token_embedding = Embedding(cfg.vocab_size, cfg.dim, rngs=rngs, param_dtype=param_dtype)
        self.blocks = stacked(lambda r: Block(cfg, rngs=r, param_dtype=param_dtype), cfg.num_layers, rngs)
        self.norm = RMSNorm(cfg.dim, cfg.eps, param_dtype=param_dtype)

    def __call__(self, ids: jax.Array, mask: jax.Array, dtype=F32) -> jax.Array:
        """ids, mask (B, L) -> last hidden state (B, L, dim) in ``dtype``."""
        cfg = self.cfg
        n = ids.shape[1]
        buckets = jnp.asarray(relative_position_buckets(n, n, cfg.num_buckets, cfg.max_distance))
        x = self.token_embedding(ids).astype(F32)
        x = scan_blocks(self.blocks, x, cfg.num_layers, buckets, mask.astype(bool), jnp.dtype(dtype))
        return self.norm(x).astype(dtype)
