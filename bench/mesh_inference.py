"""Chunk latency of mesh-parallel sampling (yume_jax/pipeline.py): one Yume chunk (5 history + N new latent
frames, I2V channels, CLIP tokens, random bf16 weights) denoised by :meth:`Pipeline.sample` on one device and
on each ``--mesh`` (context- and CFG-parallel, yume_jax/sharding.py ``sampling_mesh``). Per mesh: compile
time, median chunk seconds over ``--repeats``, speedup over one device and scaling efficiency
(speedup / devices). One JSON line per mesh; the VAE decode (one device) is not included.

    PYTHONPATH=$PWD python bench/mesh_inference.py --preset yume-i2v-14b --height 544 --width 960 --steps 4 \\
        --mesh context=4
    PYTHONPATH=$PWD python bench/mesh_inference.py --preset yume-i2v-14b --steps 50 --cfg 5 \\
        --mesh context=2 --mesh context=4 --mesh cfg=2,context=2
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu PYTHONPATH=$PWD \\
        python bench/mesh_inference.py --preset tiny-yume --height 64 --width 64 --mesh context=4 --mesh cfg=2
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="yume-i2v-14b")
    ap.add_argument("--height", type=int, default=544)
    ap.add_argument("--width", type=int, default=960)
    ap.add_argument("--history", type=int, default=5, help="history latent frames")
    ap.add_argument("--chunk-frames", type=int, default=8, help="new latent frames")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mesh", action="append", default=[],
                    help="a mesh spec (repeatable), e.g. context=4 or cfg=2,context=2; one device always runs first")
    ap.add_argument("--no-single", action="store_true", help="skip the one-device baseline (too big for one device)")
    a = ap.parse_args()
    cfg = preset(a.preset)
    dt = jnp.dtype(a.dtype)
    meshes = ([] if a.no_single else [None]) + [sharding.sampling_mesh(s) for s in a.mesh]  # specs checked first
    h, w = a.height // 8, a.width // 8
    noise, frozen, ctx, uctx = inputs(cfg, h, w, a.history, a.chunk_frames, a.text_len)
    sc = sampling.SamplerConfig(steps=a.steps, cfg_scale=a.cfg)
    base = Pipeline(dit=DiT(random_model(cfg, dt), Runtime(dtype=a.dtype)), vae=None, text_encoder=None)
    single = None
    for mesh in meshes:
        pipe = base.with_mesh(mesh) if mesh is not None else base
        n = 1 if mesh is None else mesh.devices.size
        t0 = time.perf_counter()
        out = pipe.sample(sc, a.chunk_frames, noise, ctx, uctx, frozen=frozen)  # compile + first run
        first_s = time.perf_counter() - t0
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            out = pipe.sample(sc, a.chunk_frames, noise, ctx, uctx, frozen=frozen)
            times.append(time.perf_counter() - t0)
        assert np.isfinite(np.asarray(out[:, :, a.history:], np.float32)).all()
        chunk_s = statistics.median(times)
        single = chunk_s if mesh is None else single
        speedup = None if single is None else single / chunk_s
        print(json.dumps(dict(
            preset=a.preset, mesh="one device" if mesh is None else {k: v for k, v in mesh.shape.items() if v > 1},
            devices=n, height=a.height, width=a.width, history=a.history, chunk_frames=a.chunk_frames,
            steps=sc.steps, cfg=sc.cfg_scale, cfg_parallel=pipe.cfg_parallel, evaluations=sc.evaluations,
            chunk_s=round(chunk_s, 3), runs_s=[round(t, 3) for t in times],
            compile_and_first_s=round(first_s, 1), speedup=None if speedup is None else round(speedup, 2),
            efficiency=None if speedup is None else round(speedup / n, 2), peak_gib=peak_gib(),
            device=str(jax.devices()[0].device_kind), jax=jax.__version__)), flush=True)
        if mesh is not None:
            del pipe


if __name__ == "__main__":
    main()
