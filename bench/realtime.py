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

CPU figures (docs/realtime.md): ``--explorer`` runs the pipeline and run config of ``python -m infer.explore``
with no --checkpoint (the embedded default: yume_jax.testing.save_tiny_pipeline, loaded with load_pipeline,
configured by infer.explore.build_config with ``--explorer-args``); ``--sandbox`` the size the default model
ships at (DiT sandbox-yume, VAE sandbox-2.1, encoders sandbox-umt5 / sandbox-clip), random weights:

    PYTHONPATH=$PWD python bench/realtime.py --explorer --chunks 8 --warmup 4
    PYTHONPATH=$PWD python bench/realtime.py --sandbox --dtype float32 --vae-dtype float32 --height 96 --width 160 \
        --steps 4 --cfg 1 --chunk-frames 2 --max-history 9 --chunks 8 --warmup 4
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
    ap.add_argument("--split", type=int, default=2,
                    help="chunks run blocking after the pipelined ones (Session.step): sampling and decode apart")
    ap.add_argument("--chunk-frames", type=int, default=8, help="new latent frames per chunk (32 video frames)")
    ap.add_argument("--max-history", type=int, default=9)
    ap.add_argument("--buckets", default="default", help="history buckets: default (memory.BUCKETS), exact, or a,b,c")
    ap.add_argument("--vae-dtype", default="bfloat16")
    ap.add_argument("--tiny", action="store_true", help="tiny encoders and VAE (CPU smoke test)")
    ap.add_argument("--sandbox", action="store_true",
                    help="the embedded default's size: DiT sandbox-yume, VAE sandbox-2.1, sandbox-umt5/-clip")
    ap.add_argument("--explorer", action="store_true",
                    help="python -m infer.explore's default pipeline and run config (flags: --explorer-args)")
    ap.add_argument("--explorer-args", default="--max-history 9",
                    help="infer.explore flags of the --explorer run config (default: %(default)s)")
    ap.add_argument("--dtype", default="bfloat16", help="compute and parameter dtype of DiT and encoders "
                                                        "(load_pipeline, hence the explorer: float32)")
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

    small = "sandbox" if a.sandbox else "tiny" if a.tiny else None
    te_cfg = encoder(f"{small}-umt5" if small else "umt5-xxl").replace(tokenizer="byt5")
    ie_cfg = encoder(f"{small}-clip" if small else "clip-vit-h-14")
    preset = "sandbox-yume" if a.sandbox else a.preset
    base = dit(preset)
    cfg = dit(preset, text_dim=te_cfg.dim, image_dim=ie_cfg.dim if base.image_dim else None) if small else base
    if not cfg.history_tiers:  # a Wan base preset (tiny-ti2v): add the Yume history embeddings
        cfg = cfg.replace(history_tiers=YUME_TIERS)
    ti2v = cfg.in_channels == 48
    vcfg = VAE[(f"{small}-" if small else "wan") + ("2.2" if ti2v else "2.1")]
    vae = WanVAE(vcfg, init_params(vcfg, 0), dtype=a.vae_dtype)
    te = TextEncoder.random(te_cfg, dtype=a.dtype)
    ie = ImageEncoder.random(ie_cfg, dtype=a.dtype) if cfg.image_dim else None
    model = DiT(random_model(cfg, jnp.dtype(a.dtype)), Runtime(dtype=a.dtype))
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
    if a.explorer:  # the explorer's own load and config (infer.explore._run_locked, build_config)
        import shlex

        from infer import explore
        from yume_jax.pipeline import load_pipeline

        pipe = load_pipeline(a.pipeline_dir)
        rc = explore.build_config(explore.parse_args(shlex.split(a.explorer_args)), pipe)
        a.preset, a.height, a.width, a.steps, a.cfg = "explorer-default", rc.height, rc.width, rc.sampler.steps, \
            rc.sampler.cfg_scale
        a.chunk_frames, a.max_history, a.buckets = rc.chunk_frames, rc.max_history, str(rc.history_buckets)
    else:
        pipe = build(a)
        a.preset = "sandbox-yume" if a.sandbox else a.preset
        buckets = {"default": memory.BUCKETS, "exact": None}.get(a.buckets)
        if buckets is None and a.buckets != "exact":
            buckets = tuple(int(x) for x in a.buckets.split(","))
        rc = RolloutConfig(height=a.height, width=a.width, chunk_frames=a.chunk_frames, max_history=a.max_history,
                           history_buckets=buckets, history_mode="clean" if pipe.ti2v else "renoise",
                           sampler=sampling.SamplerConfig(steps=a.steps, cfg_scale=a.cfg))
    build_s = time.perf_counter() - t0
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
    split = []  # blocking chunks (same shapes as the last pipelined ones): sampling and decode each waited for
    for i in range(a.split):
        _, rec = session.step(ACTIONS[(a.chunks + i) % len(ACTIONS)])
        split.append(rec["timings_s"])
        print(json.dumps(dict(phase=a.phase, chunk=a.chunks + i, blocking=rec["timings_s"])), flush=True)
    med = lambda k: round(float(np.median([t[k] for t in split])), 3) if split else None  # noqa: E731
    steady = float(np.median(intervals)) if intervals else None
    stats = (dev.memory_stats() or {}) if hasattr(dev, "memory_stats") else {}
    return dict(phase=a.phase, preset=a.preset, size=f"{a.height}x{a.width}", steps=a.steps, cfg=a.cfg,
                chunk_frames=a.chunk_frames, max_history=a.max_history, buckets=a.buckets, chunks=a.chunks,
                build_s=round(build_s, 2), session_start_s=round(start_s, 2),
                first_chunk_s=None if first is None else round(first, 2),
                steady_s_per_chunk=None if steady is None else round(steady, 3),
                fps=None if not steady else round(frames_per_chunk / steady, 2),
                blocking_sample_s=med("sample"), blocking_decode_s=med("decode"), blocking_text_s=med("text"),
                rtf=None if not steady else round(frames_per_chunk / steady / rc.fps, 3),
                xla_compiled=after["compiled"] - before["compiled"], xla_cache_hits=after["cache_hits"] - before["cache_hits"],
                sampler_compiles=pipe.compiles, compile_cache=str(where) if where else "off",
                peak_gib=round(stats.get("peak_bytes_in_use", 0) / 2**30, 1), device=dev.device_kind)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse_args(argv)
    if a.explorer:  # the explorer's default model, written once (as infer.explore does) for both phases
        a.pipeline_dir = os.environ.get("YUME_REALTIME_PIPELINE")
        if a.pipeline_dir is None:
            from yume_jax.testing import save_tiny_pipeline

            a.pipeline_dir = str(save_tiny_pipeline(Path(tempfile.mkdtemp(prefix="yume-realtime-pipe-")) / "tiny"))
            os.environ["YUME_REALTIME_PIPELINE"] = a.pipeline_dir
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
