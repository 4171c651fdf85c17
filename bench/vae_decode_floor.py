"""The Wan VAE decode of a chunk against its FLOP and memory-traffic floors (issue 17, "Faster decode").

    python bench/vae_decode_floor.py                         # Wan 2.2 @ 704x1280 and Wan 2.1 @ 544x960, 8 latents
    python bench/vae_decode_floor.py --sizes 2.2:704x1280 --compile-size 176x320   # XLA's count at a reduced size
    python bench/vae_decode_floor.py --no-xla                # the analytic count only (tracing, no compile)
    python bench/vae_decode_floor.py --time                   # + measured bf16 decode (a GPU; CPU allowed, slow)

The decode is yume_jax's own streaming decode (:class:`yume_jax.vae.WanVAE`, ``stream_decode``): a first
compiled step for latent frame 0 (1 video frame) and a continuation step per later latent frame (4 video
frames each, ``latents_per_step`` = 1), the causal cache carried between them. 8 latent frames = 29 video
frames. Per step program, at the compute dtype (bf16 by default):

- **analytic** (from the traced jaxpr, no compile, full size): FLOPs of every convolution
  (2 x output elements x kernel volume x input channels per group) and matmul (the mid-block attention),
  elementwise work not counted; the convolutions whose operands are float32 in bf16 mode (upcasts);
  the *absolute* traffic floor (weights read once, latents and causal cache in, video and cache out);
  the *per-layer* floor (every convolution reads its input and kernel and writes its output once: what
  any implementation that does not fuse consecutive convolutions must move).
- **XLA** (``jit(...).lower(...).compile().cost_analysis()``, no execution): XLA's own ``flops`` and
  ``bytes accessed`` of the compiled programs of the backend in use. On CPU the full-size compile of the
  Wan 2.2 decoder takes long; ``--compile-size HxW`` compiles at a reduced size and scales by the pixel
  ratio (exact for convolutions, which dominate; the attention of the mid block is quadratic in its tokens
  and is scaled with the analytic ratio instead, see ``scaled``).
- **measured** (``--time``): bf16 decode wall time of the whole 8-latent stream (median of ``--repeats``,
  compile excluded), the ratio to the FLOP floor at ``--peak-tflops`` and to the absolute and per-layer
  traffic floors at ``--peak-gbs`` (defaults: H200, 989 dense bf16 TFLOP/s and 4800 GB/s), achieved TFLOP/s
  and GB/s.

Also reported: whether the continuation step compiles once for the whole stream (the cache returned by
step k has step k-1's shapes: no re-padding, no recompile per chunk). ``steady_chunk``: the
same counts for a session's steady chunk (``latents`` continuation steps, 4 x ``latents`` video frames).
One JSON line per VAE.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESET = {"2.1": "wan2.1", "2.2": "wan2.2"}  # else a yume_jax.presets VAE name (sandbox-2.1, tiny-2.2, ...)


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def _sub_jaxprs(eqn):
    for v in eqn.params.values():
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if hasattr(x, "jaxpr") and hasattr(x, "consts"):  # ClosedJaxpr
                yield x.jaxpr
            elif hasattr(x, "eqns"):
                yield x


def count(jaxpr, acc=None) -> dict:
    """FLOPs of the convolutions and matmuls of ``jaxpr`` (recursively), their operand traffic, and the
    convolutions by operand dtype."""
    import jax.numpy as jnp

    acc = acc if acc is not None else dict(conv_flops=0, dot_flops=0, conv_bytes=0, kernel_bytes=0, convs={}, dots=0)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            lhs, rhs = (v.aval for v in eqn.invars[:2])
            out = eqn.outvars[0].aval
            dn = eqn.params["dimension_numbers"]
            k_spatial = int(np.prod([rhs.shape[d] for d in dn.rhs_spec[2:]]))
            cin_per_group = rhs.shape[dn.rhs_spec[1]]
            acc["conv_flops"] += 2 * int(np.prod(out.shape)) * k_spatial * cin_per_group
            acc["conv_bytes"] += sum(int(np.prod(a.shape)) * jnp.dtype(a.dtype).itemsize for a in (lhs, rhs, out))
            acc["kernel_bytes"] += int(np.prod(rhs.shape)) * jnp.dtype(rhs.dtype).itemsize
            key = f"{lhs.dtype}x{rhs.dtype}"
            acc["convs"][key] = acc["convs"].get(key, 0) + 1
        elif name == "dot_general":
            lhs, rhs = (v.aval for v in eqn.invars[:2])
            (lc, _), (lb, _) = eqn.params["dimension_numbers"]
            k = int(np.prod([lhs.shape[d] for d in lc]))
            acc["dot_flops"] += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * k
            acc["dots"] += 1
        for sub in _sub_jaxprs(eqn):
            count(sub, acc)
    return acc


def nbytes(tree) -> int:
    import jax

    return int(sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def step_programs(vae, h: int, w: int):
    """(name, fn, args) of the first step and the continuation steps of a stream at latent size h x w, and
    whether the continuation's cache keeps its shapes (one program for every later chunk)."""
    import jax
    import jax.numpy as jnp

    z = jax.ShapeDtypeStruct((1, vae.cfg.z_dim, 1, h, w), jnp.float32)
    stats = vae._stats[True]
    first = functools.partial(vae._decode_step, first=True, finish=True)
    cont = functools.partial(vae._decode_step, first=False, finish=True)
    _, c1 = jax.eval_shape(first, vae.params, None, z, stats)
    _, c2 = jax.eval_shape(cont, vae.params, c1, z, stats)
    _, c3 = jax.eval_shape(cont, vae.params, c2, z, stats)
    shapes = lambda c: [(x.shape, str(x.dtype)) for x in jax.tree_util.tree_leaves(c)]  # noqa: E731
    steady = shapes(c2) == shapes(c3)
    progs = [("first", first, (vae.params, None, z, stats)), ("continuation", cont, (vae.params, c2, z, stats))]
    if shapes(c1) != shapes(c2):
        progs.insert(1, ("second", cont, (vae.params, c1, z, stats)))
    return progs, steady


def analyse(version: str, size, latents: int, dtype: str, compile_size, xla: bool) -> dict:
    import jax

    from yume_jax.presets import vae as vae_preset
    from yume_jax.vae import WanVAE
    from yume_jax.vae.params import init_params

    cfg = vae_preset(PRESET.get(version, version))
    vae = WanVAE(cfg, init_params(cfg, 0), dtype=dtype)
    H, W = size
    s = cfg.spatial_stride
    progs, steady = step_programs(vae, H // s, W // s)
    # how many of each program a stream of ``latents`` frames runs
    runs = {"first": 1, "second": 1 if len(progs) == 3 else 0}
    runs["continuation"] = latents - 1 - runs["second"]
    rec = dict(vae=PRESET.get(version, version), dtype=dtype, latents=latents, height=H, width=W,
               video_frames=1 + 4 * (latents - 1), backend=jax.default_backend(),
               continuation_compiles_once=steady, programs={n: runs[n] for n, _, _ in progs},
)
    flops = conv_flops = dot_flops = per_layer = absolute = 0
    f32_convs = 0
    for name, fn, args in progs:
        c = count(jax.make_jaxpr(fn)(*args).jaxpr)
        out = jax.eval_shape(fn, *args)
        io = nbytes(args[1:]) + nbytes(out)  # latents, cache, stats in; video, cache out
        n = runs[name]
        conv_flops += n * c["conv_flops"]
        dot_flops += n * c["dot_flops"]
        per_layer += n * (c["conv_bytes"] + io)
        absolute += n * (c["kernel_bytes"] + io)  # the decoder's kernels (not the encoder's) read once
        rec["decoder_kernel_bytes"] = c["kernel_bytes"]
        f32_convs = max(f32_convs, c["convs"].get("float32xfloat32", 0))
        rec[f"convs_{name}"] = c["convs"]
        rec[f"step_{name}"] = dict(flops=c["conv_flops"] + c["dot_flops"], kernel_bytes=c["kernel_bytes"],
                                   per_layer_bytes=c["conv_bytes"] + io, io_bytes=io)
    flops = conv_flops + dot_flops
    rec["analytic"] = dict(flops=flops, conv_flops=conv_flops, attention_flops=dot_flops,
                           absolute_floor_bytes=absolute, per_layer_floor_bytes=per_layer)
    cont = rec["step_continuation"]  # a steady chunk of a session: every latent frame a continuation
    rec["steady_chunk"] = dict(latents=latents, video_frames=4 * latents, flops=latents * cont["flops"],
                               absolute_floor_bytes=latents * (cont["kernel_bytes"] + cont["io_bytes"]),
                               per_layer_floor_bytes=latents * cont["per_layer_bytes"])
    rec["float32_convs_per_step"] = f32_convs  # 0 in bf16 mode: no upcast convolution
    if xla:
        ch, cw = compile_size or size
        scale = (H * W) / (ch * cw)
        sprogs, _ = step_programs(vae, ch // s, cw // s) if compile_size else (progs, steady)
        xf = xb = 0.0
        t0 = time.perf_counter()
        for name, fn, args in sprogs:
            ca = jax.jit(fn).lower(*args).compile().cost_analysis()
            ca = ca[0] if isinstance(ca, (list, tuple)) else ca
            xf += runs[name] * float(ca.get("flops", 0.0))
            xb += runs[name] * float(ca.get("bytes accessed", 0.0))
        if compile_size:  # convolutions and bytes scale with the pixels; attention with the analytic ratio
            small = sum(runs[n] * count(jax.make_jaxpr(fn)(*a).jaxpr)["dot_flops"] for n, fn, a in sprogs)
            xf = (xf - small) * scale + dot_flops
            xb *= scale
        rec["xla"] = dict(flops=xf, bytes_accessed=xb, compiled_at=[ch, cw], scaled=bool(compile_size),
                          compile_s=round(time.perf_counter() - t0, 1))
    return rec


def measure(rec: dict, repeats: int, peak_tflops: float, peak_gbs: float) -> dict:
    import jax

    from yume_jax.presets import vae as vae_preset
    from yume_jax.vae import WanVAE
    from yume_jax.vae.params import init_params

    cfg = vae_preset(rec["vae"])
    vae = WanVAE(cfg, init_params(cfg, 0), dtype=rec["dtype"])
    s = cfg.spatial_stride
    z = jax.random.normal(jax.random.key(0), (1, cfg.z_dim, rec["latents"], rec["height"] // s, rec["width"] // s))
    jax.block_until_ready(vae.decode(z))  # compiles
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(vae.decode(z))
        ts.append(time.perf_counter() - t0)
    t = float(np.median(ts))
    a = rec["analytic"]
    f = rec.get("xla", {}).get("flops") or a["flops"]
    rec["measured"] = dict(
        seconds=round(t, 4), all_s=[round(x, 4) for x in ts], device=str(jax.devices()[0].device_kind),
        fps=round(rec["video_frames"] / t, 1), achieved_tflops=round(f / t / 1e12, 2),
        achieved_gbs_absolute=round(a["absolute_floor_bytes"] / t / 1e9, 1),
        achieved_gbs_per_layer=round(a["per_layer_floor_bytes"] / t / 1e9, 1),
        flop_floor_s=round(f / (peak_tflops * 1e12), 4),
        per_layer_floor_s=round(a["per_layer_floor_bytes"] / (peak_gbs * 1e9), 4),
        x_flop_floor=round(t / (f / (peak_tflops * 1e12)), 2),
        x_per_layer_floor=round(t / (a["per_layer_floor_bytes"] / (peak_gbs * 1e9)), 2),
        peak_tflops=peak_tflops, peak_gbs=peak_gbs)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2.2:704x1280,2.1:544x960",
                    help="VERSION:HxW,... (VERSION 2.1, 2.2 or a VAE preset name, e.g. sandbox-2.1:96x160)")
    ap.add_argument("--latents", type=int, default=8)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--compile-size", type=_size, default=None, metavar="HxW",
                    help="compile XLA's programs at this size and scale (CPU: the full size compiles slowly)")
    ap.add_argument("--no-xla", dest="xla", action="store_false", help="analytic count only (no compile)")
    ap.add_argument("--time", action="store_true", help="measure the decode (default: on a GPU only)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H200: 989)")
    ap.add_argument("--peak-gbs", type=float, default=4800.0, help="memory bandwidth (H200: 4800 GB/s)")
    a = ap.parse_args(argv)
    import jax

    for item in a.sizes.split(","):
        version, _, size = item.partition(":")
        rec = analyse(version, _size(size), a.latents, a.dtype, a.compile_size, a.xla)
        if a.time or jax.default_backend() == "gpu":
            rec = measure(rec, a.repeats, a.peak_tflops, a.peak_gbs)
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
