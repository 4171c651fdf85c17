"""Attention kernels on the GPU at the DiT's self-attention shapes: cuDNN flash (our ``cudnn`` backend,
``jax.nn.dot_product_attention``), the Pallas Mosaic-GPU Hopper kernel (``mgpu``:
``jax.experimental.pallas.ops.gpu.attention_mgpu``, key tail < block merged by log-sum-exp), and torch SDPA
(flash) in the same process. Forward only (inference); error vs a float32 reference on a query slice.

    python bench/attention_kernels.py [--out results.jsonl]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dit_forward import timeit as _timeit  # noqa: E402
from encoders import time_torch  # noqa: E402

from yume_jax.models import attention as attn  # noqa: E402

SHAPES = {  # name: (B, L, heads, head_dim)
    "wan1.3b-21x60x104": (1, 21 * 30 * 52, 12, 128),
    "wan14b-chunk-9x68x120": (1, 9 * 34 * 60, 40, 128),
    "yume14b-H21": (1, 29565, 40, 128),
}


def timeit(fn, *args, iters=20):
    """Median ms of ``iters`` calls after a warm-up (bench/dit_forward.py's timer)."""
    return statistics.median(_timeit(lambda: fn(*args), iters, warmup=1))


def mgpu_attention(q, k, v, block_kv=128, steps=2):
    """Exact softmax(q k^T / sqrt(d)) v with the Mosaic-GPU kernel on the largest block multiple of keys and
    XLA on the tail, merged through the log-sum-exps (the kernel has no key mask and no scale)."""
    from jax.experimental.pallas.ops.gpu import attention_mgpu as mg
    b, lq, n, d = q.shape
    lk = k.shape[1]
    cfg = mg.TuningConfig(block_q=64, block_kv=block_kv, max_concurrent_steps=steps)
    dt = q.dtype
    q, k, v = (x.astype(jnp.float16) for x in (q, k, v))  # the kernel's shared-memory buffers are float16
    qs = (q.astype(jnp.float32) / math.sqrt(d)).astype(q.dtype)
    pq = (-lq) % 128
    qp = jnp.pad(qs, ((0, 0), (0, pq), (0, 0), (0, 0)))
    main = lk // block_kv * block_kv
    o1, (lse2,) = mg.attention(qp, k[:, :main], v[:, :main], cfg, save_residuals=True)
    o1 = o1[:, :lq].astype(jnp.float32)
    l1 = (lse2[..., :lq] * math.log(2.0)).transpose(0, 2, 1)[..., None]  # (B, Lq, N, 1), natural log
    if main == lk:
        return o1.astype(dt)
    s = jnp.einsum("bqnd,bknd->bqnk", qs, k[:, main:], preferred_element_type=jnp.float32)
    l2 = jax.nn.logsumexp(s, axis=-1, keepdims=True)
    o2 = jnp.einsum("bqnk,bknd->bqnd", jnp.exp(s - l2), v[:, main:].astype(jnp.float32))
    m = jnp.maximum(l1, l2)
    w1, w2 = jnp.exp(l1 - m), jnp.exp(l2 - m)
    return ((w1 * o1 + w2 * o2) / (w1 + w2)).astype(dt)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F
    dev = jax.devices()[0]
    rows = []
    for name in args.shapes.split(","):
        b, l, n, d = SHAPES[name]
        ks = jax.random.split(jax.random.key(0), 3)
        q, k, v = (jax.random.normal(kk, (b, l, n, d), jnp.bfloat16) for kk in ks)
        flops = 4 * b * n * l * l * d
        # reference on a query slice (float32)
        sl = slice(0, 512)
        ref = attn.reference_attention(q[:, sl].astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32))

        def err(out):
            o = np.asarray(out[:, sl], np.float64)
            r = np.asarray(ref, np.float64)
            return float(np.linalg.norm(o - r) / np.linalg.norm(r))

        row = {"shape": name, "B_L_N_d": [b, l, n, d], "device": dev.device_kind, "jax": jax.__version__,
               "torch": torch.__version__}
        cud = jax.jit(lambda q, k, v: attn.attention(q, k, v, "cudnn"))
        row["cudnn_ms"] = timeit(cud, q, k, v)
        row["cudnn_err"] = err(cud(q, k, v))
        for bkv, steps in ((128, 2), (128, 3), (64, 2), (256, 2)):
            key = f"mgpu_kv{bkv}_s{steps}"
            try:
                f = jax.jit(lambda q, k, v, bkv=bkv, steps=steps: mgpu_attention(q, k, v, bkv, steps))
                row[key + "_ms"] = timeit(f, q, k, v)
                row[key + "_err"] = err(f(q, k, v))
            except Exception as e:  # noqa: BLE001 - a config the kernel rejects (shared memory etc.)
                row[key + "_error"] = str(e).splitlines()[0][:200]
        tq, tk, tv = (torch.from_dlpack(jnp.swapaxes(x, 1, 2)) for x in (q, k, v))
        tq, tk, tv = (x.contiguous() for x in (tq, tk, tv))
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            _, st = time_torch(lambda: F.scaled_dot_product_attention(tq, tk, tv), 20, 3, cuda=True)
        row["torch_sdpa_ms"] = st["ms_median"]
        for kk in list(row):
            if kk.endswith("_ms"):
                row[kk.replace("_ms", "_tflops")] = round(flops / row[kk] / 1e9, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
