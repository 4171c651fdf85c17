"""Attention backends, chosen by platform (spec/performance.md: the XLA fallback is ~6x slower on GPU).

- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (flash attention; GPU, bf16/fp16).
- ``splash``: Pallas splash attention (TPU; runs in interpret mode elsewhere for testing).
- ``xla``: ``jax.nn.dot_product_attention(implementation="xla")``; long sequences are processed in
  query blocks so memory stays O(L * block) instead of O(L^2).
- ``reference``: plain softmax(QK^T/sqrt(d))V in float32, for tests.

``auto`` picks cudnn on GPU (xla when the dtype is float32, which cuDNN flash does not support),
splash on TPU, xla elsewhere. Layout everywhere is (batch, length, heads, head_dim).

Under a mesh with ``context`` or ``tensor`` axes, attention runs inside ``shard_map`` (any backend works
inside), with one of two sequence-parallel strategies (:func:`seq_parallel_strategy`; the choice is
``Runtime.seq_parallel``: ``auto`` | ``ulysses`` | ``gather``):

- ``ulysses`` (DeepSpeed-Ulysses, Jacobs et al. 2023, arXiv:2309.14509; the all-to-all half of xDiT's
  USP): q/k/v arrive sharded over the sequence (``context``); they are resharded to a head split over
  ``context`` (x ``tensor`` when the heads are already split over it), each device attends over the FULL
  sequence with its subset of heads, and the output is resharded back to the sequence split. The two
  reshards are JAX sharding only (``with_sharding_constraint`` around a ``shard_map`` whose in/out specs
  split heads): XLA's SPMD partitioner emits them as all-to-all, which moves each activation once
  (O(L d / devices) per device) instead of gathering K/V. It needs the heads to divide
  context x tensor; the sequence need not divide (a replicated sequence is sliced by heads locally).
- ``gather`` (the fallback): queries keep their sequence shard, keys/values are all-gathered over the
  sequence on entry (each device then holds all L keys, O(L d) traffic and memory per device), heads
  split over ``tensor`` only. It is the strategy that works for ANY head count: Ulysses cannot split
  heads that do not divide the devices, and a hand-written ring (ring attention, K/V blocks passed
  around ``ppermute`` with an online softmax) is what we do not write: the gather is the collective
  JAX/XLA give us for it. A sequence that does not divide ``context`` has its queries padded to a
  multiple (the padded rows are dropped), so the attention compute is still split.

``auto`` takes ``ulysses`` for self-attention when the heads divide, else ``gather``. Cross-attention
(queries of the video, keys/values of the replicated text/image tokens) always keeps the query shard:
its K/V are not sequence-sharded, so that path needs no collective at all.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from yume_jax import sharding
from yume_jax.models.config import SEQ_PARALLEL

XLA_QUERY_BLOCK = 4096  # query block for the xla backend on long sequences


def resolve(backend: str, dtype) -> str:
    if backend != "auto":
        return backend
    platform = jax.default_backend()
    if platform == "gpu":
        return "cudnn" if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "xla"
    if platform == "tpu":
        return "splash"
    return "xla"


def reference_attention(q, k, v):
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = jnp.einsum("bqnd,bknd->bnqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
    p = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bnqk,bknd->bqnd", p, v.astype(jnp.float32)).astype(q.dtype)


def _xla(q, k, v):
    lq = q.shape[1]
    if lq <= XLA_QUERY_BLOCK:
        return jax.nn.dot_product_attention(q, k, v, implementation="xla")
    nb = -(-lq // XLA_QUERY_BLOCK)
    pad = nb * XLA_QUERY_BLOCK - lq
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    qb = qp.reshape(q.shape[0], nb, XLA_QUERY_BLOCK, *q.shape[2:]).swapaxes(0, 1)
    out = jax.lax.map(lambda qi: jax.nn.dot_product_attention(qi, k, v, implementation="xla"), qb)
    return out.swapaxes(0, 1).reshape(q.shape[0], nb * XLA_QUERY_BLOCK, *q.shape[2:])[:, :lq]


CUDNN_KV_MULTIPLE = 64  # cuDNN's flash backward rejects some key lengths (e.g. CLIP's 257): pad and mask


def pad_keys(k, v, multiple: int):
    """K/V padded on the sequence axis to a multiple, and the true lengths (B,) for masking."""
    lk = k.shape[1]
    pad = (-lk) % multiple
    if not pad:
        return k, v, None
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    return jnp.pad(k, widths), jnp.pad(v, widths), jnp.full((k.shape[0],), lk, jnp.int32)


def _cudnn(q, k, v, implementation="cudnn"):
    k, v, lengths = pad_keys(k, v, CUDNN_KV_MULTIPLE)
    return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation=implementation)


def _splash(q, k, v, block: int = 128):
    """Splash attention with padding to the block size; padded keys are masked by segment ids."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b, lq, n, d = q.shape
    lk = k.shape[1]
    pq, pk = -(-lq // block) * block, -(-lk // block) * block
    interpret = jax.default_backend() != "tpu"
    mask = sa.MultiHeadMask([sa.FullMask((pq, pk)) for _ in range(n)])
    bs = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block)
    kernel = sa.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=bs, interpret=interpret)
    qt = jnp.pad(q, ((0, 0), (0, pq - lq), (0, 0), (0, 0))).transpose(0, 2, 1, 3) / math.sqrt(d)
    kt = jnp.pad(k, ((0, 0), (0, pk - lk), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    vt = jnp.pad(v, ((0, 0), (0, pk - lk), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    seg = sa.SegmentIds(q=jnp.zeros((pq,), jnp.int32), kv=jnp.where(jnp.arange(pk) < lk, 0, 1).astype(jnp.int32))
    out = jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=seg))(qt.astype(q.dtype), kt, vt)
    return out.transpose(0, 2, 1, 3)[:, :lq].astype(q.dtype)


_BACKENDS = {"xla": _xla, "cudnn": _cudnn, "splash": _splash, "reference": reference_attention}


def attention(q: jax.Array, k: jax.Array, v: jax.Array, backend: str = "auto",
              seq_parallel: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(d)) v for (B, L, N, d) inputs with the chosen backend (no mask); under a mesh with
    ``context``/``tensor`` axes, sharded with the ``seq_parallel`` strategy (module docstring)."""
    name = resolve(backend, q.dtype)
    if name == "cudnn" and jnp.dtype(q.dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError("cudnn attention needs bfloat16/float16 inputs; run with dtype=bfloat16 or attention=xla")
    if seq_parallel not in SEQ_PARALLEL:
        raise ValueError(f"seq_parallel must be one of {SEQ_PARALLEL}, not {seq_parallel!r}")
    fn = _BACKENDS[name]
    mesh = sharding.current_mesh()
    if mesh is None or (mesh.shape["context"] == 1 and mesh.shape["tensor"] == 1):
        return fn(q, k, v)
    if seq_parallel_strategy(mesh, q.shape[2], seq_parallel) == "ulysses":
        return _ulysses(fn, mesh, q, k, v)
    return _gather(fn, mesh, q, k, v)


def _head_axes(mesh, heads: int) -> tuple[str, ...]:
    """Mesh axes the heads split over in Ulysses: ``tensor`` (when it already splits them) then ``context``."""
    tensor = sharding.spec(("act_heads",), (heads,), mesh)[0]
    return (("tensor",) if tensor else ()) + (("context",) if mesh.shape["context"] > 1 else ())


def seq_parallel_strategy(mesh, heads: int, seq_parallel: str = "auto") -> str:
    """``ulysses`` or ``gather`` for self-attention with ``heads`` heads on ``mesh``: ``auto`` takes Ulysses
    when there is a context axis and the heads divide context x tensor; ``ulysses`` where they do not is an
    error (ValueError, one line)."""
    if seq_parallel not in SEQ_PARALLEL:
        raise ValueError(f"seq_parallel must be one of {SEQ_PARALLEL}, not {seq_parallel!r}")
    if seq_parallel == "gather" or mesh is None or mesh.shape["context"] == 1:
        return "gather"
    axes = _head_axes(mesh, heads)
    split = math.prod(mesh.shape[a] for a in axes)
    if heads % split:
        if seq_parallel == "ulysses":
            raise ValueError(f"seq_parallel=ulysses splits the {heads} heads over "
                             f"{' x '.join(f'{a}={mesh.shape[a]}' for a in axes)} = {split} devices, which does "
                             "not divide them; use seq_parallel=gather (or auto)")
        return "gather"
    return "ulysses"


def _specs(mesh, q):
    b_axes = sharding.spec(("batch",), (q.shape[0],), mesh)[0]
    heads = sharding.spec(("act_heads",), (q.shape[2],), mesh)[0]
    seq = sharding.spec(("seq",), (q.shape[1],), mesh)[0]
    return b_axes, seq, heads


def _ulysses(fn, mesh, q, k, v):
    """Sequence split -> head split (all-to-all) -> local attention over the whole sequence -> back."""
    b_axes, seq, heads = _specs(mesh, q)
    seq_spec = NamedSharding(mesh, P(b_axes, seq, heads, None))
    head_axes = _head_axes(mesh, q.shape[2])
    head_spec = P(b_axes, None, head_axes[0] if len(head_axes) == 1 else head_axes, None)
    q, k, v = (jax.lax.with_sharding_constraint(t, seq_spec) for t in (q, k, v))
    f = jax.shard_map(functools.partial(_local, fn), mesh=mesh, in_specs=(head_spec,) * 3, out_specs=head_spec,
                      check_vma=False)
    return jax.lax.with_sharding_constraint(f(q, k, v), seq_spec)


def _gather(fn, mesh, q, k, v):
    """Queries keep their sequence shard over ``context`` (padded to a multiple of it), keys/values gathered,
    heads over ``tensor``."""
    b_axes, _, heads = _specs(mesh, q)
    ctx, lq = mesh.shape["context"], q.shape[1]
    pad = (-lq) % ctx
    if pad:  # a sequence the context axis does not divide: pad the queries so their compute still splits
        q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
    q_spec = P(b_axes, "context" if ctx > 1 else None, heads, None)
    kv_spec = P(b_axes, None, heads, None)
    f = jax.shard_map(functools.partial(_local, fn), mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec),
                      out_specs=q_spec, check_vma=False)
    out = f(q, k, v)
    return out[:, :lq] if pad else out


def _local(fn, q, k, v):
    return fn(q, k, v)
