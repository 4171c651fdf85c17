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
from pathlib import Path
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


# ------------------------------------------------------------------------------------------------
# DiT training batches from the pool, encoded on the device by the pipeline's own VAE and encoders

class PoolBatches:
    """``random_map`` function: item -> one whole training batch of ``batch`` samples from the pool, encoded
    by the real (frozen) VAE, text and image encoders of a pipeline directory, in the layout inference
    sees (yume_jax/rollout.py): ``1 + 4 (h - 1)`` history pixel frames (h latent frames, the first one a
    single frame) followed by ``4 m`` new frames (m = the chunk's latent frames).

    Per batch (one history length per batch, so nothing is trimmed): with probability ``i2v_prob`` the
    image-to-video start (the start frame repeated ``image_repeat`` times, then itself: the explorer's
    pseudo-history, 5 latent frames for 16 repeats), else h drawn uniformly from ``history`` (latent frames).
    Per sample: a random walk and start; the prompt is the Yume prompt (``prompt_style``) of the majority
    QCM action of the chunk's exact poses, with the speed sentence of its measured speed with probability
    ``speed_prob`` (Yume's training prompts; spec/yume.md "Training objective"); ``image``: the image
    encoder's tokens of the last history frame; ``gray``: the I2V channels' continuation, the VAE latents of
    [history pixel frames, gray frames] on the chunk's frames (:func:`yume_jax.data.latents.gray_continuation`).
    """

    def __init__(self, pool: Pool, encoders: str, batch: int, chunk: int, history: tuple[int, ...],
                 i2v_prob: float = 0.3, image_repeat: int = 16, speed_prob: float = 0.65,
                 prompt_style: str = "yume1", speed_fps: float = 30.0, text_len: int = 512):
        if chunk < 1 or not history or min(history) < 1:
            raise ValueError(f"need chunk >= 1 and history latent frames >= 1, got {chunk}, {history}")
        need = 1 + 4 * (max(max(history), 1) - 1) + 4 * chunk
        if pool.frames.shape[1] < need:
            raise ValueError(f"pool walks have {pool.frames.shape[1]} frames; history {max(history)} + chunk {chunk} "
                             f"latent frames need {need}")
        self.pool, self.encoders, self.batch, self.chunk = pool, str(encoders), batch, chunk
        self.history, self.i2v_prob, self.image_repeat = tuple(history), i2v_prob, image_repeat
        self.speed_prob, self.prompt_style, self.speed_fps, self.text_len = speed_prob, prompt_style, speed_fps, text_len
        self._enc = None

    def __getstate__(self):
        return {**self.__dict__, "_enc": None}

    def _encoders(self):
        if self._enc is None:
            import yume_jax
            p = Path(self.encoders)
            self._enc = (yume_jax.load_vae(p / "vae"),
                         yume_jax.load_text_encoder(p / "text_encoder", text_len=self.text_len, cache=None),
                         yume_jax.load_image_encoder(p / "image_encoder") if (p / "image_encoder").is_dir() else None)
        return self._enc

    def choose(self, rng: np.random.Generator) -> tuple[bool, int]:
        """(image start?, history latent frames) of one batch."""
        if rng.random() < self.i2v_prob:
            return True, 1 + self.image_repeat // 4
        return False, int(self.history[int(rng.integers(len(self.history)))])

    def __call__(self, index, rng: np.random.Generator) -> dict:
        from yume_jax.camera import ALL_ACTIONS, prompt, quantize, speed
        from yume_jax.data.pipeline import _majority

        vae, te, ie = self._encoders()
        frames, c2w = self.pool.frames, self.pool.c2w
        i2v, h = self.choose(rng)
        m = self.chunk
        hist_px = 1 + self.image_repeat if i2v else 1 + 4 * (h - 1)
        span = (1 if i2v else hist_px) + 4 * m  # walk frames used
        videos, prompts, actions, lasts = [], [], [], []
        n, t = frames.shape[:2]
        for _ in range(self.batch):
            c = int(rng.integers(n))
            s = int(rng.integers(t - span + 1))
            if i2v:
                v = np.concatenate([np.repeat(frames[c, s:s + 1], self.image_repeat, 0), frames[c, s:s + 1 + 4 * m]])
                first = s  # the chunk's pairs start at the image
            else:
                v = frames[c, s:s + span]
                first = s + hist_px - 1
            poses = c2w[c, first:first + 4 * m + 1]
            a = _majority(quantize(poses))
            with_speed = rng.random() < self.speed_prob
            prompts.append(prompt(a, self.prompt_style, speed(poses, fps=self.speed_fps) if with_speed else None))
            actions.append(a.index)
            videos.append(v)
            lasts.append(v[hist_px - 1])
        u8 = np.stack(videos)  # (B, T, H, W, 3)
        x = u8.astype(np.float32).transpose(0, 4, 1, 2, 3) * np.float32(1 / 127.5) - np.float32(1)
        lat = np.asarray(vae.encode(x))
        g = x.copy()
        g[:, :, hist_px:] = 0.0
        gray = np.asarray(vae.encode(g))[:, :, -m:]
        out = {"latents": lat.astype(np.float32), "num_history": np.full(self.batch, h, np.int32),
               "text": np.asarray(te.encode(prompts), np.float32), "gray": gray.astype(np.float32),
               "i2v": np.full(self.batch, i2v), "action": np.asarray(actions, np.int32),
               "item": np.full(self.batch, int(index), np.int64)}
        if ie is not None:
            out["image"] = np.asarray(ie.encode(np.stack(lasts)), np.float32)
        return out


def _first(items: list[dict]) -> dict:
    return items[0]


def pool_dataset(pool: Pool, encoders, batch: int, chunk: int, history: tuple[int, ...], raw, seed: int,
                 shard_index: int, shard_count: int, i2v_prob: float = 0.3, text_len: int = 512):
    """This process's batches (each item of the Grain pipeline is a whole batch of :class:`PoolBatches`)."""
    from yume_jax.data import pipeline as pl

    fn = PoolBatches(pool, encoders, batch, chunk, history, i2v_prob=i2v_prob, speed_prob=raw.speed_prob,
                     prompt_style=raw.prompt_style, speed_fps=raw.speed_fps, text_len=text_len)
    loader = pl.LoaderConfig(seed=seed, batch_size=1, read_threads=1, read_buffer=2)
    return pl.build(1 << 30, fn, loader, shard_index, shard_count, collate_fn=_first)
