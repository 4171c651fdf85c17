"""Chunk latency of mesh-parallel sampling (yume_jax/pipeline.py): one Yume chunk (5 history + N new latent
frames, I2V channels, CLIP tokens, random bf16 weights) denoised by :meth:`Pipeline.sample` on one device and
on each ``--mesh`` (context- and CFG-parallel, yume_jax/sharding.py ``sampling_mesh``), for each ``--run``
(sampler steps and CFG scale). Per (mesh, run): the self-attention's sequence-parallel strategy (Ulysses
all-to-all or the K/V all-gather, yume_jax/models/attention.py; ``--seq-parallel`` forces one), compile time,
median chunk seconds over the run's repeats, speedup over one device and scaling efficiency (speedup /
devices). One JSON line per (mesh, run), printed as soon as measured; the VAE decode is not included.

A run with 0 repeats is measured once, cold: its ``chunk_s`` is that call minus the seconds JAX reports
spent tracing, lowering and compiling (its ``/jax/core/compile/*`` monitoring events), marked
``"estimated": true`` (what remains unmeasured, e.g. Python dispatch, is well under a second): the
14B's 50-step CFG chunk is ~160 s on one H200 (3.2 s per guided evaluation, bench/results/chunk_h200_*),
too long to run twice per mesh inside one 10-minute device call.

The issue-18 figures in ONE call on an x4 machine (14B at full depth, 544x960, 8 new + 5 history latent
frames; 4 distilled steps without CFG, timed 3x; 50 Euler steps with CFG 5, once; ~7-8 minutes):

    PYTHONPATH=$PWD python bench/mesh_inference.py --preset yume-i2v-14b --height 544 --width 960 \
        --run 4:1:3 --run 50:5:0 --mesh context=2 --mesh context=4 | tee $OUT/mesh_14b.jsonl

``--mesh cfg=2`` / ``cfg=2,context=2`` add the CFG-parallel variants (they speed up only runs with CFG);
``--layers N`` cuts the depth (latency is linear in it) when a call would not fit. On CPU:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu PYTHONPATH=$PWD \
        python bench/mesh_inference.py --preset tiny-yume --height 64 --width 64 --dtype float32 \
        --run 2:5:1 --mesh context=4 --mesh cfg=2,context=2,tensor=2
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dit_forward import peak_gib, random_model  # noqa: E402
from yume_jax import sharding  # noqa: E402
from yume_jax.models.attention import seq_parallel_strategy  # noqa: E402
from yume_jax.models.config import Runtime  # noqa: E402
from yume_jax.models.loader import DiT  # noqa: E402
from yume_jax.pipeline import Pipeline  # noqa: E402
from yume_jax.presets import dit as preset  # noqa: E402
from yume_jax.sampling import api as sampling  # noqa: E402
from yume_jax.sampling.frozen import history_mask, history_renoised  # noqa: E402


def inputs(cfg, h, w, hist, new, text_len, z=16):
    total = hist + new
    ks = jax.random.split(jax.random.key(0), 6)
    noise = jax.random.normal(ks[0], (1, z, total, h, w), jnp.float32)
    lat = jax.random.normal(ks[1], noise.shape, jnp.float32)
    frozen = history_renoised(history_mask(noise.shape, hist), lat, jax.random.normal(ks[2], noise.shape))
    mask = (jnp.arange(total) < hist).astype(jnp.float32)[None, None, :, None, None]
    y = jnp.concatenate([jnp.broadcast_to(mask, (1, 4, total, h, w)), lat * mask], axis=1)
    ctx = dict(text=jax.random.normal(ks[3], (1, text_len, cfg.text_dim)) * 0.1, y=y)
    uctx = dict(text=jax.random.normal(ks[5], (1, text_len, cfg.text_dim)) * 0.1, y=y)
    if cfg.image_dim is not None:
        ctx["image"] = uctx["image"] = jax.random.normal(ks[4], (1, 257, cfg.image_dim)) * 0.1
    if cfg.in_channels == z:
        del ctx["y"], uctx["y"]
    return noise, frozen, ctx, uctx


class CompileSeconds:
    """Seconds JAX spends tracing, lowering to MLIR and compiling (``jax.monitoring`` duration events)."""

    total = 0.0

    @classmethod
    def install(cls):
        from jax import monitoring

        def on_duration(event, duration, **kw):
            if event.startswith("/jax/core/compile/"):
                cls.total += float(duration)

        monitoring.register_event_duration_secs_listener(on_duration)


def parse_run(text: str) -> tuple[int, float, int]:
    """``STEPS:CFG[:REPEATS]`` -> (steps, cfg, repeats); repeats default 3, 0 = one cold call (estimated)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"--run {text}: expected STEPS:CFG[:REPEATS], e.g. 4:1:3 or 50:5:0")
    try:
        steps, cfg, reps = int(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else 3
    except ValueError:
        raise argparse.ArgumentTypeError(f"--run {text}: STEPS and REPEATS are integers, CFG a number") from None
    if steps < 1 or reps < 0:
        raise argparse.ArgumentTypeError(f"--run {text}: STEPS >= 1 and REPEATS >= 0")
    return steps, cfg, reps


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="yume-i2v-14b")
    ap.add_argument("--layers", type=int, default=None, help="DiT depth (default: the preset's)")
    ap.add_argument("--height", type=int, default=544)
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--history", type=int, default=5, help="history latent frames")
    ap.add_argument("--chunk-frames", type=int, default=8, help="new latent frames")
    ap.add_argument("--run", type=parse_run, action="append", default=[], metavar="STEPS:CFG[:REPEATS]",
                    help="a sampler run (repeatable; default 4:1:3 and 50:5:0): Euler steps, CFG scale "
                         "(1 = no guidance), timed repeats after a compile call (0: one cold call, estimated)")
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--seq-parallel", default="auto", choices=("auto", "ulysses", "gather"))
    ap.add_argument("--mesh", action="append", default=[],
                    help="a mesh spec (repeatable), e.g. context=4 or cfg=2,context=2; one device always runs first")
    ap.add_argument("--no-single", action="store_true", help="skip the one-device baseline (too big for one device)")
    a = ap.parse_args()
    runs = a.run or [(4, 1.0, 3), (50, 5.0, 0)]
    CompileSeconds.install()
    cfg = preset(a.preset)
    if a.layers is not None:
        cfg = cfg.replace(num_layers=a.layers)
    dt = jnp.dtype(a.dtype)
    meshes = ([] if a.no_single else [None]) + [sharding.sampling_mesh(s) for s in a.mesh]  # specs checked first
    h, w = a.height // 8, a.width // 8
    noise, frozen, ctx, uctx = inputs(cfg, h, w, a.history, a.chunk_frames, a.text_len)
    runtime = Runtime(dtype=a.dtype, seq_parallel=a.seq_parallel)
    base = Pipeline(dit=DiT(random_model(cfg, dt), runtime), vae=None, text_encoder=None)
    single: dict = {}
    for mesh in meshes:
        pipe = base.with_mesh(mesh) if mesh is not None else base
        n = 1 if mesh is None else mesh.devices.size
        strategy = seq_parallel_strategy(mesh, cfg.num_heads, a.seq_parallel) if mesh is not None else None
        for steps, scale, repeats in runs:
            sc = sampling.SamplerConfig(steps=steps, cfg_scale=scale)
            before = CompileSeconds.total
            t0 = time.perf_counter()
            out = pipe.sample(sc, a.chunk_frames, noise, ctx, uctx, frozen=frozen)  # compile + first run
            first_s = time.perf_counter() - t0
            compile_s = CompileSeconds.total - before
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = pipe.sample(sc, a.chunk_frames, noise, ctx, uctx, frozen=frozen)
                times.append(time.perf_counter() - t0)
            assert np.isfinite(np.asarray(out[:, :, a.history:], np.float32)).all()
            chunk_s = statistics.median(times) if times else max(first_s - compile_s, 0.0)
            if mesh is None:
                single[(steps, scale)] = chunk_s
            base_s = single.get((steps, scale))
            speedup = None if base_s is None else base_s / chunk_s
            print(json.dumps(dict(
                preset=a.preset, layers=cfg.num_layers, heads=cfg.num_heads,
                mesh="one device" if mesh is None else {k: v for k, v in mesh.shape.items() if v > 1},
                devices=n, seq_parallel=strategy, height=a.height, width=a.width, history=a.history,
                chunk_frames=a.chunk_frames, steps=sc.steps, cfg=sc.cfg_scale, cfg_parallel=pipe.cfg_parallel,
                evaluations=sc.evaluations, chunk_s=round(chunk_s, 3), estimated=not times,
                runs_s=[round(t, 3) for t in times], compile_and_first_s=round(first_s, 1),
                compile_s=round(compile_s, 1), speedup=None if speedup is None else round(speedup, 2),
                efficiency=None if speedup is None else round(speedup / n, 2), peak_gib=peak_gib(),
                device=str(jax.devices()[0].device_kind), jax=jax.__version__)), flush=True)
        if mesh is not None:
            del pipe


if __name__ == "__main__":
    main()
