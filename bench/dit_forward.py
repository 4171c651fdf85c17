"""JAX DiT forward timing (random bf16 weights, batch 1), comparable to shared/bench/torch_wan_reference.py.

Prints one JSON line per configuration: median / min / max ms over timed forwards after warm-up
(compile excluded and reported separately), model TFLOP/s with the reference's FLOP formula, peak
device memory, and a breakdown (one block, its self-attention kernel, its FFN matmuls) so any gap to
the reference is located by measurement.

    python bench/dit_forward.py --model 14b-i2v --latent 9x68x120
    python bench/dit_forward.py --model 14b-i2v --latent 9x68x120 --history 21   # Yume chunk + history
    python bench/dit_forward.py --tiny                                            # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs.models import get  # noqa: E402
from yume_jax.models import memory  # noqa: E402
from yume_jax.core import params as P  # noqa: E402
from yume_jax.models.attention import attention  # noqa: E402
from yume_jax.models.config import Runtime  # noqa: E402
from yume_jax.models.loader import DiT, build  # noqa: E402

MODELS = {"14b-i2v": "wan2.1-i2v-14b", "1.3b-t2v": "wan2.1-t2v-1.3b", "5b-ti2v": "wan2.2-ti2v-5b",
          "14b-t2v": "wan2.1-t2v-14b", "yume-14b": "yume-i2v-14b", "tiny": "tiny-i2v"}


def model_flops(tokens, dim, ffn, layers, context):
    per_block = (8 * tokens * dim * dim + 4 * tokens * tokens * dim + 4 * tokens * dim * dim
                 + 4 * tokens * context * dim + 4 * tokens * dim * ffn)
    return float(per_block * layers)


def random_model(cfg, dtype):
    """Random parameters generated directly on the device in ``dtype`` (no host copies)."""
    abstract = build(cfg, param_dtype=dtype, abstract=True)
    graphdef, state = nnx.split(abstract)
    counter = iter(range(1 << 30))

    @jax.jit
    def normal(key, like):
        return (0.02 * jax.random.normal(key, like.shape, jnp.float32)).astype(like.dtype)

    def init(name, leaf):
        z = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
        v = normal(jax.random.key(next(counter)), z)
        return v + 1 if name.endswith(".scale") else v

    return nnx.merge(graphdef, P.map_named(state, init))


def timeit(fn, runs, warmup=2):
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times


def peak_gib():
    stats = jax.devices()[0].memory_stats() or {}
    return round(stats.get("peak_bytes_in_use", 0) / 2**30, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="14b-i2v", choices=sorted(MODELS))
    ap.add_argument("--latent", default="9x68x120")
    ap.add_argument("--history", type=int, default=0, help="history latent frames before the chunk (Yume)")
    ap.add_argument("--layers", type=int, help="override depth")
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--tiny", action="store_true")
    a = ap.parse_args()
    if a.tiny:
        a.model, a.latent, a.text_len, a.runs = "tiny", "3x8x8", 16, 2
    name = MODELS[a.model]
    if a.history and not name.startswith(("yume", "tiny")):
        name = "yume-i2v-14b"
    cfg = get(name, **({"num_layers": a.layers} if a.layers else {}))
    if a.tiny and a.history:
        cfg = get("tiny-yume", in_channels=36)
    f, h, w = (int(v) for v in a.latent.split("x"))
    t0 = time.perf_counter()
    model = random_model(cfg, jnp.dtype(a.dtype))
    init_s = time.perf_counter() - t0
    rt = Runtime(dtype=a.dtype, attention=a.attention)
    dit = DiT(model, rt)
    key = jax.random.key(1)
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (1, cfg.in_channels, f + a.history, h, w), jnp.float32)
    ctx = jax.random.normal(k2, (1, a.text_len, cfg.text_dim), jnp.float32)
    img = jax.random.normal(k3, (1, 257, cfg.image_dim), jnp.float32) if cfg.image_dim else None
    t = jnp.array([700.0])
    chunk = f if a.history else None
    t0 = time.perf_counter()
    jax.block_until_ready(dit(x, t, ctx, img, chunk=chunk))
    compile_s = time.perf_counter() - t0
    times = timeit(lambda: dit(x, t, ctx, img, chunk=chunk), a.runs)
    med = times[len(times) // 2]
    chunk_tokens = f * (h // 2) * (w // 2)
    tokens = chunk_tokens
    if a.history:
        tokens = sum(memory.token_counts(a.history, h, w, f).values())
    context = a.text_len + (257 if cfg.image_dim else 0)
    flops = model_flops(tokens, cfg.dim, cfg.ffn_dim, cfg.num_layers, context)
    out = dict(impl="jax-yume", model=name, latent=a.latent, history=a.history, tokens=tokens,
               chunk_tokens=chunk_tokens, layers=cfg.num_layers, dtype=a.dtype, attention=a.attention,
               median_ms=round(med, 1), min_ms=round(times[0], 1), max_ms=round(times[-1], 1),
               tflops_per_s=round(flops / med / 1e9, 1), compile_s=round(compile_s, 1), init_s=round(init_s, 1),
               peak_gib=peak_gib(), device=str(jax.devices()[0].device_kind), jax=jax.__version__)
    print(json.dumps(out), flush=True)
    if a.breakdown:
        breakdown(cfg, rt, tokens, context, a)


def breakdown(cfg, rt, tokens, context, a):
    """Time one block's pieces at the model shape: attention kernel, FFN matmuls, the whole block."""
    dt = jnp.dtype(a.dtype)
    n, d = cfg.num_heads, cfg.head_dim
    ks = jax.random.split(jax.random.key(2), 6)
    q = jax.random.normal(ks[0], (1, tokens, n, d), dt)
    kk = jax.random.normal(ks[1], (1, tokens, n, d), dt)
    v = jax.random.normal(ks[2], (1, tokens, n, d), dt)
    att = jax.jit(lambda q, k, v: attention(q, k, v, rt.attention))
    tm = timeit(lambda: att(q, kk, v), 10)
    att_flops = 4 * tokens * tokens * cfg.dim
    xm = jax.random.normal(ks[3], (tokens, cfg.dim), dt)
    w1 = jax.random.normal(ks[4], (cfg.dim, cfg.ffn_dim), dt) * 0.02
    w2 = jax.random.normal(ks[5], (cfg.ffn_dim, cfg.dim), dt) * 0.02
    ffn = jax.jit(lambda x: jnp.dot(jax.nn.gelu(jnp.dot(x, w1)), w2))
    tf = timeit(lambda: ffn(xm), 10)
    ffn_flops = 4 * tokens * cfg.dim * cfg.ffn_dim
    one = random_model(cfg.replace(num_layers=1), dt)
    d1 = DiT(one, rt)
    f, h, w = (int(v) for v in a.latent.split("x"))
    x = jnp.zeros((1, cfg.in_channels, f, h, w)) + 0.1
    ctx = jnp.ones((1, a.text_len, cfg.text_dim)) * 0.1
    img = jnp.ones((1, 257, cfg.image_dim)) * 0.1 if cfg.image_dim else None
    tb = timeit(lambda: d1(x, jnp.array([700.0]), ctx, img), 5)
    block_flops = model_flops(tokens, cfg.dim, cfg.ffn_dim, 1, context)
    med = lambda ts: ts[len(ts) // 2]  # noqa: E731
    torch_ms = None
    try:  # the same attention through torch SDPA (flash/cuDNN as torch picks), same process
        import torch

        if torch.cuda.is_available():
            tq, tk, tv = (torch.randn(1, n, tokens, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            sdpa = torch.nn.functional.scaled_dot_product_attention
            for _ in range(3):
                sdpa(tq, tk, tv)
            torch.cuda.synchronize()
            ts = []
            for _ in range(10):
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                sdpa(tq, tk, tv)
                e1.record()
                torch.cuda.synchronize()
                ts.append(e0.elapsed_time(e1))
            torch_ms = sorted(ts)[len(ts) // 2]
            del tq, tk, tv
    except ImportError:
        pass
    print(json.dumps(dict(breakdown=cfg.dim, tokens=tokens,
                          attention_ms=round(med(tm), 2), attention_tflops=round(att_flops / med(tm) / 1e9, 1),
                          torch_sdpa_ms=None if torch_ms is None else round(torch_ms, 2),
                          torch_sdpa_tflops=None if torch_ms is None else round(att_flops / torch_ms / 1e9, 1),
                          ffn_ms=round(med(tf), 2), ffn_tflops=round(ffn_flops / med(tf) / 1e9, 1),
                          one_layer_model_ms=round(med(tb), 2),
                          one_layer_tflops=round(block_flops / med(tb) / 1e9, 1))), flush=True)


if __name__ == "__main__":
    main()
