"""Validate the camera-motion estimator (yume_jax.eval.motion) on sandbox ground truth.

For every one of the 81 key x mouse actions and several seeds, a one-chunk walk (``--pairs`` frame pairs
at the nominal speed) is rendered from a held-out start view (seed [VALIDATION_TAG, seed, action]); the
estimator sees ``--frames`` of its frames (all, or first/middle/last) and its Algorithm-1 label is compared
with the true QCM label of the chunk (keys and mouse separately); the rotation error is the geodesic angle
to the true relative rotation. Renders are cached (``--cache``), so re-running with other estimator
settings costs only the estimation.

Run from the repository root with ``PYTHONPATH=$PWD`` (``sys.path[0]`` is bench/, so an editable install of
another checkout would be imported otherwise)::

    python bench/motion_estimator.py --preset default --seeds 4 --frames all
    python bench/motion_estimator.py --preset 540p --seeds 4 --frames all --backend jax --workers 16

``--backend jax`` renders with the jit-compiled :mod:`yume_jax.data.world_jax` in this process (on a GPU:
seconds instead of hours at 544x960; the same frames up to float rounding); ``--workers`` processes render
(numpy backend) and estimate.

Writes bench/results/motion_<preset>_<frames>.json and prints the BENCHMARKS.md table row.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

from yume_jax.camera import ALL_ACTIONS, KEYS, MOUSE, Action, quantize
from yume_jax.data import world
from yume_jax.eval import motion as M

VALIDATION_TAG = 0x7A1D


def frame_indices(pairs: int, which: str) -> list[int]:
    if which == "all":
        return list(range(pairs + 1))
    if which == "3":
        return [0, pairs // 2, pairs]
    if which == "2":
        return [0, pairs]
    raise ValueError(f"--frames must be all, 3 or 2, not {which!r}")


def _cache_path(job) -> Path | None:
    preset, seed, index, pairs, which, cache, _ = job
    return Path(cache) / f"{preset}_{pairs}_{which}_{seed}_{index}.npz" if cache else None


def _render(job):
    preset, seed, index, pairs, which, cache, backend = job
    path = _cache_path(job)
    if path is not None and path.exists():
        z = np.load(path)
        return z["frames"], z["c2w"], z["K"]
    a, cfg, idx = ALL_ACTIONS[index], world.PRESETS[preset], frame_indices(pairs, which)
    if backend == "jax":
        from yume_jax.data import world_jax
        script = [world.Step(a, pairs)]
        _, _, c2w, scene = world.plan_clip([VALIDATION_TAG, seed, index], pairs + 1, cfg, script)
        frames, K = world_jax.render_frames(scene, c2w[idx], cfg), cfg.intrinsics()
    else:
        frames, c2w, K = world.render_walk([VALIDATION_TAG, seed, index], [world.Step(a, pairs)], cfg, idx)
    if path is not None:
        np.savez_compressed(path, frames=frames, c2w=c2w, K=K)
    return frames, c2w, K


def _estimate(job):
    index, seed, (frames, c2w, K), cfg = job
    true = ALL_ACTIONS[index]
    assert set(quantize(c2w)) == {true}  # every frame pair's QCM label is the scripted action
    m = M.estimate(frames, K, cfg)
    lab = M.label(m, cfg)
    R, t = M.relative_pose(c2w[0], c2w[-1])
    return dict(seed=seed, action=str(true), estimated=str(lab) if lab else None, valid=m.valid,
                keys_ok=lab is not None and lab.keys == true.keys,
                mouse_ok=lab is not None and lab.mouse == true.mouse,
                rotation_error_deg=M.rotation_error_deg(m.R, R) if m.valid else None,
                translation_dir_error_deg=M.translation_error_deg(m.t, t) if m.valid else None,
                translating=m.translating, parallax=m.parallax, tracks=m.tracks, inliers=m.inliers,
                model=m.reason)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default", choices=sorted(world.PRESETS))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=8, help="frame pairs per chunk (8: 2 latent frames)")
    ap.add_argument("--frames", default="all", choices=["all", "3", "2"], help="frames the estimator sees")
    ap.add_argument("--workers", type=int, default=2, help="processes for rendering (numpy) and estimation")
    ap.add_argument("--backend", default="numpy", choices=list(world.BACKENDS), help="renderer (jax: in this process)")
    ap.add_argument("--cache", default="/tmp/yume_motion_cache", help="render cache directory ('' : none)")
    ap.add_argument("--config", default="{}", help="MotionConfig overrides as JSON")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    cfg = M.MotionConfig(**json.loads(a.config))
    if a.cache:
        Path(a.cache).mkdir(parents=True, exist_ok=True)
    jobs = [(a.preset, s, i, a.pairs, a.frames, a.cache, a.backend)
            for s in range(a.seeds) for i in range(len(ALL_ACTIONS))]
    t0 = time.perf_counter()
    from tqdm import tqdm
    cached = all(p is not None and p.exists() for p in map(_cache_path, jobs))
    if a.backend == "jax" or a.workers <= 1 or cached:  # jax: one process owns the device
        renders = [_render(j) for j in tqdm(jobs, desc=f"render {a.preset} ({a.backend})")]
    else:
        with mp.get_context("spawn").Pool(a.workers) as pool:
            renders = list(tqdm(pool.imap(_render, jobs), total=len(jobs), desc=f"render {a.preset}"))
    t_render = time.perf_counter() - t0
    t1 = time.perf_counter()
    est_jobs = [(index, seed, r, cfg) for (_, seed, index, *_), r in zip(jobs, renders)]
    if a.workers <= 1:
        rows = [_estimate(j) for j in tqdm(est_jobs, desc="estimate")]
    else:
        with mp.get_context("spawn").Pool(a.workers) as pool:
            rows = list(tqdm(pool.imap(_estimate, est_jobs, chunksize=4), total=len(est_jobs), desc="estimate"))
    t_est = time.perf_counter() - t1
    n = len(rows)
    rot = [r["rotation_error_deg"] for r in rows if r["rotation_error_deg"] is not None]
    summary = dict(
        preset=a.preset, height=world.PRESETS[a.preset].height, width=world.PRESETS[a.preset].width,
        seeds=a.seeds, clips=n, pairs=a.pairs, frames=a.frames, config=cfg.__dict__,
        keys=sum(r["keys_ok"] for r in rows) / n, mouse=sum(r["mouse_ok"] for r in rows) / n,
        both=sum(r["keys_ok"] and r["mouse_ok"] for r in rows) / n, valid=sum(r["valid"] for r in rows) / n,
        rotation_error_median_deg=float(np.median(rot)) if rot else None,
        rotation_error_p90_deg=float(np.percentile(rot, 90)) if rot else None,
        seconds_render=round(t_render, 1), seconds_estimate=round(t_est, 1),
        seconds_per_estimate=round(t_est / n, 4), workers=a.workers, backend=a.backend)
    by = {}
    for k in KEYS:
        sel = [r for r in rows if Action(*r["action"].split(" ")).keys == k]
        by[f"keys {k}"] = sum(r["keys_ok"] for r in sel) / len(sel)
    for m_ in MOUSE:
        sel = [r for r in rows if Action(*r["action"].split(" ")).mouse == m_]
        by[f"mouse {m_}"] = sum(r["mouse_ok"] for r in sel) / len(sel)
    summary["by_label"] = by
    pure = [r for r in rows if Action(*r["action"].split(" ")).keys == "None"]
    summary["mouse_when_not_moving"] = sum(r["mouse_ok"] for r in pure) / len(pure)
    moving = [r for r in rows if Action(*r["action"].split(" ")).keys != "None"]
    summary["translation_detected_when_moving"] = sum(r["valid"] and r["translating"] for r in moving) / len(moving)
    summary["translation_detected_when_still"] = sum(r["valid"] and r["translating"] for r in pure) / len(pure)
    summary["trusted_labels"] = [k for k, v in by.items() if v >= 0.95]
    out = Path(a.out or Path(__file__).parent / "results" / f"motion_{a.preset}_{a.frames}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(summary=summary, rows=rows), indent=1, ensure_ascii=False))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("config",)}, indent=1, ensure_ascii=False))
    s = summary
    print(f"| {s['height']}x{s['width']} | {a.frames} | {n} | {s['keys']:.3f} | {s['mouse']:.3f} | {s['both']:.3f} "
          f"| {s['mouse_when_not_moving']:.3f} | {s['rotation_error_median_deg']:.2f} "
          f"| {s['rotation_error_p90_deg']:.2f} |")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
