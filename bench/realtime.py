"""Real-time exploration cost at real model sizes, random bf16 weights, through the project's own pipeline and
pipelined session (yume_jax.pipeline.Pipeline, yume_jax.rollout.Session.explore). Issue 17.

One JSON line per chunk (history fed/stored, critical path: text, dispatch, wait, interval; XLA programs
compiled), then a summary line per phase: time to first frame (session start -> first chunk's frames on the
host, text encoding and every compile included), steady seconds per chunk (median interval after the
warm-up chunks), fps and real-time factor including decode, programs compiled vs read from the persistent
cache. By default two phases run as two processes sharing a fresh compilation cache: ``cold`` (empty
cache) and ``cached`` (a second launch), so first-chunk latency is measured both ways.

    PYTHONPATH=$PWD python bench/realtime.py --preset yume-5b --height 704 --width 1280 --steps 4 --cfg 1 --chunks 8
    PYTHONPATH=$PWD python bench/realtime.py --preset yume-i2v-14b --height 544 --width 960 --steps 4 --cfg 1
    PYTHONPATH=$PWD python bench/realtime.py --preset yume-5b --height 704 --width 1280 --teacher  # 50 steps, CFG 5
    PYTHONPATH=$PWD python bench/realtime.py --tiny --preset tiny-ti2v --height 32 --width 64 --chunks 3  # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

ACTIONS = ["W", "W+A", "→", "S+D", "W", "W", "D", "W"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="yume-5b", help="DiT preset (yume_jax.presets): yume-5b, yume-i2v-14b, tiny-*")
    ap.add_argument("--height", type=int, default=704)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--teacher", action="store_true", help="the public sampler's settings: 50 Euler steps, CFG 5")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3, help="chunks left out of the steady-state figures")
    ap.add_argument("--chunk-frames", type=int, default=8, help="new latent frames per chunk (32 video frames)")
    ap.add_argument("--max-history", type=int, default=9)
    ap.add_argument("--buckets", default="default", help="history buckets: default (memory.BUCKETS), exact, or a,b,c")
    ap.add_argument("--vae-dtype", default="bfloat16")
    ap.add_argument("--tiny", action="store_true", help="tiny encoders and VAE (CPU smoke test)")
    ap.add_argument("--phase", choices=["cold", "cached", "single"], default=None,
                    help="run one phase in this process (default: cold then cached, as two processes)")
    ap.add_argument("--compile-cache", default=None, help="cache directory of the phases (default: a fresh one)")
    a = ap.parse_args(argv)
    if a.teacher:
        a.steps, a.cfg = 50, 5.0
    return a


def build(a):
    import jax.numpy as jnp

    from dit_forward import random_model
    from yume_jax.encoders import ImageEncoder, TextEncoder
    from yume_jax.models.config import Runtime
    from yume_jax.models.loader import DiT
    from yume_jax.pipeline import Pipeline
    from yume_jax.presets import VAE, YUME_TIERS, dit, encoder
    from yume_jax.vae import WanVAE
    from yume_jax.vae.params import init_params

    te_cfg = encoder("tiny-umt5" if a.tiny else "umt5-xxl").replace(tokenizer="byt5")
    ie_cfg = encoder("tiny-clip" if a.tiny else "clip-vit-h-14")
    base = dit(a.preset)
    cfg = dit(a.preset, text_dim=te_cfg.dim, image_dim=ie_cfg.dim if base.image_dim else None) if a.tiny else base
    if not cfg.history_tiers:  # a Wan base preset (tiny-ti2v): add the Yume history embeddings
        cfg = cfg.replace(history_tiers=YUME_TIERS)
    ti2v = cfg.in_channels == 48
    vcfg = VAE[("tiny-" if a.tiny else "wan") + ("2.2" if ti2v else "2.1")]
    vae = WanVAE(vcfg, init_params(vcfg, 0), dtype=a.vae_dtype)
    te = TextEncoder.random(te_cfg, dtype="bfloat16")
    ie = ImageEncoder.random(ie_cfg, dtype="bfloat16") if cfg.image_dim else None
    model = DiT(random_model(cfg, jnp.bfloat16), Runtime(dtype="bfloat16"))
    pipe = Pipeline(dit=model, vae=vae, text_encoder=te, image_encoder=ie)
    pipe.check()
    return pipe


def run_phase(a) -> dict:
    import jax
    import numpy as np

    from yume_jax.models import memory
    from yume_jax.pipeline import CompileCounter, enable_compile_cache
    from yume_jax.rollout import RolloutConfig, Session
    from yume_jax.sampling import api as sampling

    where = enable_compile_cache(a.compile_cache or "off")
    t0 = time.perf_counter()
    pipe = build(a)
    build_s = time.perf_counter() - t0
    buckets = {"default": memory.BUCKETS, "exact": None}.get(a.buckets)
    if buckets is None and a.buckets != "exact":
        buckets = tuple(int(x) for x in a.buckets.split(","))
    rc = RolloutConfig(height=a.height, width=a.width, chunk_frames=a.chunk_frames, max_history=a.max_history,
                       history_buckets=buckets, history_mode="clean" if pipe.ti2v else "renoise",
                       sampler=sampling.SamplerConfig(steps=a.steps, cfg_scale=a.cfg))
    img = (np.random.default_rng(0).random((a.height, a.width, 3)) * 255).astype(np.uint8)
    before = CompileCounter.snapshot()
    t_start = time.perf_counter()
    session = Session(pipe, rc, image=img)
    start_s = time.perf_counter() - t_start
    dev = jax.devices()[0]
    first, intervals, frames_per_chunk = None, [], 0
    for i, (frames, rec) in enumerate(session.explore(ACTIONS[i % len(ACTIONS)] for i in range(a.chunks))):
        now = time.perf_counter()
        if first is None:
            first = now - t_start
        cp = rec["critical_path_s"]
        if a.warmup <= i < a.chunks - 1 and cp["interval"]:  # the last has no next chunk to dispatch
            intervals.append(cp["interval"])
        frames_per_chunk = int(frames.shape[0])
        print(json.dumps(dict(phase=a.phase, chunk=i, action=rec["action"], history=rec["history_frames"],
                              stored=rec["history_stored"], frames=frames_per_chunk, critical_path_s=cp,
                              xla=CompileCounter.snapshot())), flush=True)
    after = CompileCounter.snapshot()
    steady = float(np.median(intervals)) if intervals else None
    stats = (dev.memory_stats() or {}) if hasattr(dev, "memory_stats") else {}
    return dict(phase=a.phase, preset=a.preset, size=f"{a.height}x{a.width}", steps=a.steps, cfg=a.cfg,
                chunk_frames=a.chunk_frames, max_history=a.max_history, buckets=a.buckets, chunks=a.chunks,
                build_s=round(build_s, 2), session_start_s=round(start_s, 2),
                first_chunk_s=None if first is None else round(first, 2),
                steady_s_per_chunk=None if steady is None else round(steady, 3),
                fps=None if not steady else round(frames_per_chunk / steady, 2),
                rtf=None if not steady else round(frames_per_chunk / steady / rc.fps, 3),
                xla_compiled=after["compiled"] - before["compiled"], xla_cache_hits=after["cache_hits"] - before["cache_hits"],
                sampler_compiles=pipe.compiles, compile_cache=str(where) if where else "off",
                peak_gib=round(stats.get("peak_bytes_in_use", 0) / 2**30, 1), device=dev.device_kind)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    if a.phase is not None:
        print(json.dumps(dict(summary=run_phase(a))), flush=True)
        return 0
    cache = a.compile_cache or tempfile.mkdtemp(prefix="yume-realtime-xla-")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    summaries = []
    for phase in ("cold", "cached"):
        p = subprocess.run([sys.executable, __file__, *argv, "--phase", phase, "--compile-cache", cache], env=env,
                           stdout=subprocess.PIPE, text=True)
        sys.stdout.write(p.stdout)
        if p.returncode:
            return p.returncode
        summaries.append(json.loads(p.stdout.strip().splitlines()[-1])["summary"])
    cold, cached = summaries
    print(json.dumps(dict(result=dict(cold, phase=None, first_chunk_cold_s=cold["first_chunk_s"],
                                      first_chunk_cached_s=cached["first_chunk_s"],
                                      cached_xla_compiled=cached["xla_compiled"]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
