"""Sandbox clips at accelerator speed: a pool of rendered walks (the training data of the embedded default
model, docs/default_model.md; issue "data at GPU speed").

Walks are planned on the host (:func:`yume_jax.data.world.plan_clip`: script, exact poses, scene; in worker
processes when there are many) and rendered together by the JAX ray caster
(:func:`yume_jax.data.world_jax.render_walks`, equal to the NumPy renderer up to float rounding,
tests/test_world_jax.py) on the default device, in groups so that memory stays bounded. Seeds are
``[seed, i]`` like :func:`yume_jax.data.world.write_dataset`; the benchmark's start views use other seeds
(yume_jax/eval/bench.py), so nothing here is a benchmark view.
"""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from yume_jax.data import world


@dataclasses.dataclass
class Pool:
    """N rendered walks of T frames."""

    frames: np.ndarray  # uint8 (N, T, H, W, 3)
    c2w: np.ndarray  # float64 (N, T, 4, 4)
    intrinsic: np.ndarray  # (3, 3)
    seeds: list

    def __len__(self) -> int:
        return len(self.frames)


def _plan(job):
    seed, frames, cfg = job
    script, actions, c2w, scene = world.plan_clip(seed, frames, cfg)
    return c2w, scene


def plan(seeds, num_frames: int, cfg: world.WorldConfig, workers: int | None = None):
    """(c2w (N, T, 4, 4), scenes) of the walks of ``seeds`` (host planning, in parallel processes)."""
    jobs = [(s, num_frames, cfg) for s in seeds]
    workers = min(len(jobs), os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(jobs) < 8:
        out = [_plan(j) for j in jobs]
    else:
        import multiprocessing as mp
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            out = list(ex.map(_plan, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    return np.stack([o[0] for o in out]), [o[1] for o in out]


def render_pool(num_clips: int, num_frames: int, cfg: world.WorldConfig, seed: int = 0, group: int = 64,
                workers: int | None = None, progress: bool = False) -> Pool:
    """``num_clips`` walks of ``num_frames`` frames (seeds ``[seed, i]``), rendered by JAX ``group`` at a time."""
    from yume_jax.data import world_jax

    if num_clips < 1 or num_frames < 2:
        raise ValueError(f"need >= 1 clip of >= 2 frames, got {num_clips} x {num_frames}")
    seeds = [[int(seed), i] for i in range(num_clips)]
    c2w, scenes = plan(seeds, num_frames, cfg, workers)
    frames = np.zeros((num_clips, num_frames, cfg.height, cfg.width, 3), np.uint8)
    it = range(0, num_clips, group)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="render sandbox walks", unit="group")
    for g in it:
        frames[g:g + group] = world_jax.render_walks(scenes[g:g + group], c2w[g:g + group], cfg)
    return Pool(frames, c2w, cfg.intrinsics(), seeds)
