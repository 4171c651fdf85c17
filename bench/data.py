"""Data-path throughput on this machine's CPUs: sandbox rendering, raw-clip and latent Grain pipelines.

    python bench/data.py [--tiny] [--workers 0 2] [--out /tmp/yume_bench_data]

Prints one JSON line per measurement (frames/s or samples/s, median of repeats, warm-up excluded) with
the CPU count and library versions. Measurements:

- ``render``: :func:`yume_jax.data.world.render` frames/s at 96x160 (and 272x480), one process;
- ``clip``: :func:`yume_jax.data.world.make_clip` (script, scene, render) frames/s, and writing the
  sandbox dataset (render + H.264 encode + poses) frames/s;
- ``raw_pipeline``: samples/s of :func:`yume_jax.data.pipeline.raw_dataset` on a sandbox Yume-layout dataset
  (33-frame chunk + history, decode, 96x160, [-1, 1]) for each ``--workers`` count;
- ``latent_pipeline``: samples/s of :func:`yume_jax.data.latents.latent_dataset` on a dataset encoded with
  the stand-in encoders at sandbox size, and on synthetic Yume-size latents (16 x (9 + H/4) x 68 x 120,
  umT5 4096-d text) written by the same TFDS builder.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from yume_jax.data import latents as L  # noqa: E402
from yume_jax.data import pipeline as pl  # noqa: E402
from yume_jax.data import sekai, world  # noqa: E402


def _env() -> dict:
    import av
    import grain
    import tensorflow_datasets as tfds
    return {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "numpy": np.__version__, "grain": getattr(grain, "__version__", "?"), "av": av.__version__,
            "tfds": tfds.__version__, "load1": round(os.getloadavg()[0], 2)}


def emit(**kw):
    print(json.dumps({**kw, **_env()}), flush=True)


def bench_render(sizes, frames: int, repeats: int):
    for h, w in sizes:
        cfg = world.WorldConfig(height=h, width=w)
        rng = np.random.default_rng(0)
        script = world.random_script(rng, frames * repeats + 8, cfg)
        c2w = world.simulate(script, cfg, yaw=0.3)
        scene = world.make_scene(rng, c2w[:, [0, 2], 3], cfg)
        n_obj = len(scene.sph_c) + len(scene.box_lo) + len(scene.cyl_c)
        for i in range(4):  # warm-up
            world.render(scene, c2w[i], cfg)
        rates = []
        for r in range(repeats):
            t = time.perf_counter()
            for i in range(frames):
                world.render(scene, c2w[8 + r * frames + i], cfg)
            rates.append(frames / (time.perf_counter() - t))
        emit(bench="render", height=h, width=w, objects=n_obj, frames=frames, repeats=repeats,
             frames_per_s=round(float(np.median(rates)), 2))


def bench_clip(out: Path, frames: int, clips: int):
    cfg = world.PRESETS["default"]
    t = time.perf_counter()
    world.make_clip(0, frames, cfg)
    emit(bench="clip", what="make_clip", height=cfg.height, width=cfg.width, frames=frames,
         frames_per_s=round(frames / (time.perf_counter() - t), 2))
    root = out / "sandbox_yume"
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    world.write_dataset(root, clips, 0, "yume", cfg=cfg, num_frames=frames, min_clip_frames=33)
    dt = time.perf_counter() - t
    emit(bench="clip", what="write_dataset yume layout (render + H.264 + poses)", height=cfg.height,
         width=cfg.width, clips=clips, frames=clips * frames, frames_per_s=round(clips * frames / dt, 2))
    return root


def _rate(ds, n: int, warm: int) -> tuple[float, int]:
    it = iter(ds)
    for _ in range(warm):
        next(it)
    t = time.perf_counter()
    got = 0
    for _ in range(n):
        b = next(it)
        got += len(b["action"])
    rate = got / (time.perf_counter() - t)
    if hasattr(it, "close"):
        it.close()
    return rate, got


def bench_raw(root: Path, workers, n: int, repeats: int, cfg: pl.RawConfig):
    data = sekai.read(root)
    for nw in workers:
        rates = []
        for r in range(repeats):
            ds = pl.raw_dataset(data, cfg, pl.LoaderConfig(seed=r, num_workers=nw), 0, 1)
            rates.append(_rate(ds, n, warm=4 if nw == 0 else 2 * nw + 2)[0])
        emit(bench="raw_pipeline", clips=len(data), chunk_frames=cfg.chunk_frames, height=cfg.height,
             width=cfg.width, history_max=(cfg.history_max_short, cfg.history_max_long), workers=nw, samples=n,
             repeats=repeats, samples_per_s=round(float(np.median(rates)), 2))


def bench_latent(root: Path, out: Path, workers, n: int, repeats: int, cfg: pl.RawConfig, yume_scale: int):
    data = sekai.read(root)
    v, t = L.stand_in_encoders(z_dim=16, text_dim=4096, text_len=512)
    lat_out = out / "latents_sandbox"
    shutil.rmtree(lat_out, ignore_errors=True)
    t0 = time.perf_counter()
    rep = L.encode_dataset(data, lat_out, v, t, cfg, samples_per_clip=4, seed=0, progress=False)
    emit(bench="latent_build", what="encode_dataset with stand-in encoders (decode + pool + TFDS write)",
         examples=rep.examples, samples_per_s=round(rep.examples / (time.perf_counter() - t0), 2))
    paths = [("sandbox 96x160 (latents 16 x t x 12 x 20, text 4096-d)", rep.path)]
    if yume_scale:
        paths.append(("Yume 544x960 (latents 16 x (9 + H/4) x 68 x 120, text 4096-d)",
                      _synthetic_yume(out / "latents_yume", yume_scale)))
    for what, path in paths:
        for nw in workers:
            rates = []
            for r in range(repeats):
                ds = L.latent_dataset(path, pl.LoaderConfig(seed=r, num_workers=nw), 0.65, 0, 1)
                rates.append(_rate(ds, n, warm=4 if nw == 0 else 2 * nw + 2)[0])
            emit(bench="latent_pipeline", data=what, examples=len(L.open_source(path)), workers=nw, samples=n,
                 repeats=repeats, samples_per_s=round(float(np.median(rates)), 2))


def _synthetic_yume(out: Path, n: int) -> Path:
    """n examples with Yume-size random latents and text written through the real builder."""
    shutil.rmtree(out, ignore_errors=True)
    work = out / "_work"
    work.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = []
    for sid in range(n):
        hist = int(rng.integers(0, 26)) * 4  # history latents x 4 = frames
        p = work / f"{sid:08d}.npz"
        np.savez(p, latents=rng.normal(size=(16, 9 + hist // 4, 68, 120)).astype(np.float32),
                 num_history_latents=np.int32(hist // 4), text=rng.normal(size=(120, 4096)).astype(np.float32),
                 text_speed=rng.normal(size=(220, 4096)).astype(np.float32), text_len=np.int32(512),
                 prompt=np.array("p"), prompt_speed=np.array("q"), action=np.int32(0), i2v=np.bool_(False),
                 speed=np.zeros(3), start=np.int32(0), clip=np.array("c"), sample_id=np.int64(sid))
        files.append(p)
    path = L._write_tfds(out, "yume_latents", files, {"synthetic": True}, {})
    shutil.rmtree(work)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a quick run with few frames and samples")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--out", type=Path, default=Path("/tmp/yume_bench_data"))
    ap.add_argument("--yume-scale", type=int, default=24, help="synthetic Yume-size latent examples (0: skip)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    tiny = args.tiny
    bench_render([(96, 160)] if tiny else [(96, 160), (272, 480)], frames=8 if tiny else 48, repeats=3)
    root = bench_clip(args.out, frames=81 if tiny else 321, clips=1 if tiny else 4)
    cfg = pl.RAW_PRESETS["sandbox"]
    n = 8 if tiny else 64
    bench_raw(root, args.workers, n, 1 if tiny else 3, cfg)
    bench_latent(root, args.out, args.workers, n, 1 if tiny else 3, cfg, 4 if tiny else args.yume_scale)


if __name__ == "__main__":
    main()
