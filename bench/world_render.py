"""Sandbox rendering throughput, NumPy reference against the JAX port, on whatever device JAX picks.

    python bench/world_render.py [--sizes 96x160 544x960] [--backends numpy jax] [--supersample 1]
                                 [--clips 8] [--frames 32] [--numpy-frames 8] [--frames-per-call N]

Prints one JSON line per measurement, with the device, load and versions:

Scenes are those of ``--clip-frames``-frame clips (161: about 100 objects, the dataset's size); frames are
spread over each clip's poses.

- ``numpy``: :func:`yume_jax.data.world.render` frames/s, one process, one frame at a time (median over
  repeats, 2 warm-up frames excluded);
- ``jax``: :func:`yume_jax.data.world.render_clips`-style (``backend="jax"``, that is
  :func:`yume_jax.data.world_jax.render_walks`) rendering of ``--clips`` scenes x ``--frames`` poses
  (scenes padded to the capacity for ``--clip-frames`` frames, or with ``--tight`` to the per-kind
  :func:`~yume_jax.data.world_jax.tight_capacity` of these scenes): ``compile_s`` is the first call
  (tracing, compilation and one run), then ``frames_per_s`` end to end (scene padding, host-to-device,
  render, uint8 frames back on the host) and ``device_frames_per_s`` (inputs already on the device, one
  compiled call of ``frames_per_call`` frames, blocked on the result), medians over repeats.

Run the same command on a CPU or a GPU machine: nothing in it names a device.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from yume_jax.data import world  # noqa: E402
from yume_jax.data import world_jax as wj  # noqa: E402


def _env() -> dict:
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device": dev.device_kind, "devices": jax.device_count(),
            "cpus": os.cpu_count(), "load1": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "jax": jax.__version__, "numpy": np.__version__}


def emit(**kw):
    print(json.dumps({**kw, **_env()}), flush=True)


def _plans(cfg, clips: int, clip_frames: int):
    plans = [world.plan_clip([1000, i], clip_frames, cfg) for i in range(clips)]
    return [p[3] for p in plans], np.stack([p[2] for p in plans])


def bench_numpy(cfg, clip_frames: int, frames: int, repeats: int):
    scenes, c2w = _plans(cfg, 1, clip_frames)
    scene, c2w = scenes[0], c2w[0][:: max(1, clip_frames // (frames + 2))]
    for i in range(2):  # warm-up
        world.render(scene, c2w[i], cfg)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(frames):
            world.render(scene, c2w[2 + i], cfg)
        rates.append(frames / (time.perf_counter() - t))
    n_obj = len(scene.sph_r) + len(scene.box_lo) + len(scene.cyl_r)
    emit(bench="world_render", backend="numpy", height=cfg.height, width=cfg.width, supersample=cfg.supersample,
         shadows=cfg.shadows, objects=n_obj, frames=frames, repeats=repeats,
         frames_per_s=round(float(np.median(rates)), 3))


def bench_jax(cfg, clips: int, clip_frames: int, frames: int, repeats: int, fpc: int | None, ray_chunk,
              tight: bool):
    scenes, c2w = _plans(cfg, clips, clip_frames)
    c2w = c2w[:, :: max(1, clip_frames // frames)][:, :frames]
    cap = wj.tight_capacity(scenes) if tight else wj._cap_for(cfg, clip_frames, scenes)
    arrays = [wj.scene_arrays(s, cap) for s in scenes]
    per_frame = [a for a in arrays for _ in range(frames)]
    flat = c2w.reshape(-1, 4, 4)
    fpc = fpc or wj.default_frames_per_call(cfg)
    chunk = wj.default_ray_chunk() if ray_chunk == -1 else ray_chunk
    fpc = min(fpc, len(flat))
    t = time.perf_counter()  # first call: the call size the timed runs use (render_poses's rule)
    warm = min(fpc, 1 << max(0, len(flat) - 1).bit_length())
    out = wj.render_poses(per_frame[:warm], flat[:warm], cfg, frames_per_call=fpc, ray_chunk=ray_chunk)
    compile_s = time.perf_counter() - t
    assert out.shape == (warm, cfg.height, cfg.width, 3)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        wj.render_poses(per_frame, flat, cfg, frames_per_call=fpc, ray_chunk=ray_chunk)
        rates.append(len(flat) / (time.perf_counter() - t))
    # device only: one call's inputs placed once
    idx = np.arange(fpc)
    sa = jax.device_put(wj._stack([per_frame[i] for i in idx]))
    R, o = jax.device_put(flat[idx, :3, :3].astype(np.float32)), jax.device_put(flat[idx, :3, 3].astype(np.float32))
    st = wj._Static.of(cfg, chunk)
    dc = wj._directions(cfg)
    wj._render_batch(sa, R, o, dc, None, st).block_until_ready()
    dev_rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        wj._render_batch(sa, R, o, dc, None, st).block_until_ready()
        dev_rates.append(fpc / (time.perf_counter() - t))
    emit(bench="world_render", backend="jax", height=cfg.height, width=cfg.width, supersample=cfg.supersample,
         shadows=cfg.shadows, capacity_per_kind=cap, clips=clips, frames=len(flat), frames_per_call=fpc,
         ray_chunk=chunk, repeats=repeats, compile_s=round(compile_s, 2),
         frames_per_s=round(float(np.median(rates)), 3), device_frames_per_s=round(float(np.median(dev_rates)), 3))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["96x160", "544x960"], help="HxW")
    ap.add_argument("--backends", nargs="+", choices=["numpy", "jax"], default=["numpy", "jax"])
    ap.add_argument("--supersample", type=int, default=1)
    ap.add_argument("--no-shadows", action="store_true")
    ap.add_argument("--clips", type=int, default=8, help="JAX: scenes rendered together")
    ap.add_argument("--clip-frames", type=int, default=161, help="clip length: scene size and JAX capacity")
    ap.add_argument("--frames", type=int, default=32, help="JAX: frames rendered per clip (spread over it)")
    ap.add_argument("--numpy-frames", type=int, default=8, help="NumPy: frames per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames-per-call", type=int, help="JAX: frames per compiled call (default: by platform)")
    ap.add_argument("--tight", action="store_true", help="JAX: per-kind capacities of these scenes (cap='tight')")
    ap.add_argument("--ray-chunk", type=int, default=-1, help="JAX: rays per loop step (-1 platform default, 0 none)")
    args = ap.parse_args(argv)
    for size in args.sizes:
        h, w = map(int, size.split("x"))
        cfg = world.WorldConfig(height=h, width=w, supersample=args.supersample, shadows=not args.no_shadows)
        for backend in args.backends:
            if backend == "numpy":
                bench_numpy(cfg, args.clip_frames, args.numpy_frames, args.repeats)
            else:
                bench_jax(cfg, args.clips, args.clip_frames, args.frames, args.repeats, args.frames_per_call,
                          None if args.ray_chunk == 0 else args.ray_chunk, args.tight)


if __name__ == "__main__":
    jnp.zeros(1).block_until_ready()  # start the backend before any timing
    main()
