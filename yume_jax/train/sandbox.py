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
# DiT training batches from the pool, in the layout inference sees, encoded once by the frozen VAE

@dataclasses.dataclass
class Encoded:
    """The pool's walks encoded by the frozen VAE (normalised latents, float32 host arrays).

    A training sample is a walk prefix: its first ``1 + 4 (h - 1)`` frames are the history (h latent frames, the
    first a single frame, exactly as an exploration's history starts with its start frame) and the next
    ``4 m`` frames the chunk. The VAE is causal, so the latents of a prefix are the prefix of the walk's
    latents: one encode per walk serves every history length. ``gray[h]``: the I2V channels' continuation of
    that sample, the latents of [history frames, gray frames] on the chunk (the encode stream of the history
    continued with gray frames, :func:`yume_jax.data.latents.gray_continuation`). ``start_*``: the image start
    of the walk's first frame (the frame repeated ``image_repeat`` times, then itself, then the walk's next
    ``4 m`` frames; the explorer's pseudo-history)."""

    latents: np.ndarray  # (N, z, H_max + m, h, w)
    gray: dict  # h -> (N, z, m, h, w)
    start_latents: np.ndarray  # (N, z, 1 + image_repeat / 4 + m, h, w)
    start_gray: np.ndarray  # (N, z, m, h, w)
    chunk: int
    image_repeat: int


def encode_pool(pool: Pool, vae, history: tuple[int, ...], chunk: int, image_repeat: int = 16, group: int = 32,
                progress: bool = False) -> Encoded:
    """Encode every walk of ``pool`` once (plus its gray continuations and image start), ``group`` walks per call."""
    hs = sorted(set(int(h) for h in history))
    if not hs or hs[0] < 1:
        raise ValueError(f"history latent frames must be >= 1, got {history}")
    m = chunk
    need = 1 + 4 * (hs[-1] - 1) + 4 * m
    n, t = pool.frames.shape[:2]
    if t < need:
        raise ValueError(f"pool walks have {t} frames; history {hs[-1]} + chunk {m} latent frames need {need}")

    def px(a):
        return a.astype(np.float32).transpose(0, 4, 1, 2, 3) * np.float32(1 / 127.5) - np.float32(1)

    lat, gray, s_lat, s_gray = [], {h: [] for h in hs}, [], []
    it = range(0, n, group)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="encode walks", unit="group")
    for g in it:
        fr = pool.frames[g:g + group]
        b = len(fr)
        parts, state, done = [], None, 0
        zeros = np.zeros((b, 3, 4 * m) + fr.shape[2:4], np.float32)
        for h in hs:  # stream the walk, branching a gray continuation at each history length
            end = 1 + 4 * (h - 1)
            if end > done:
                z, state = vae.stream_encode(px(fr[:, done:end]), state)
                parts.append(np.asarray(z))
                done = end
            zg, _ = vae.stream_encode(zeros, state.copy())
            gray[h].append(np.asarray(zg))
        z, state = vae.stream_encode(px(fr[:, done:need]), state)
        parts.append(np.asarray(z))
        lat.append(np.concatenate(parts, axis=2))
        start = np.concatenate([np.repeat(fr[:, :1], image_repeat, axis=1), fr[:, :1 + 4 * m]], axis=1)
        s_lat.append(np.asarray(vae.encode(px(start))))
        st = vae.stream_encode(px(np.repeat(fr[:, :1], image_repeat + 1, axis=1)), None)[1]
        s_gray.append(np.asarray(vae.stream_encode(zeros, st)[0]))
    return Encoded(np.concatenate(lat), {h: np.concatenate(v) for h, v in gray.items()}, np.concatenate(s_lat),
                   np.concatenate(s_gray), m, image_repeat)


class PoolBatches:
    """``random_map`` function: item -> one whole training batch of ``batch`` samples of :class:`Encoded` walks
    (one history length per batch, so nothing is trimmed).

    Per batch: with probability ``i2v_prob`` the image start (5 history latent frames for 16 repeats), else
    h drawn uniformly from ``history``. Per sample: a random walk; the prompt is the Yume prompt
    (``prompt_style``) of the majority QCM action of the chunk's exact poses (the pairs from the last history
    frame through the chunk), with the speed sentence of its measured speed with probability ``speed_prob``
    (Yume's training prompts; spec/yume.md "Training objective"), encoded by the frozen text encoder;
    ``image``: the frozen image encoder's tokens of the last history frame.
    """

    def __init__(self, pool: Pool, enc: Encoded, encoders: str, batch: int, history: tuple[int, ...],
                 i2v_prob: float = 0.3, speed_prob: float = 0.65, prompt_style: str = "yume1",
                 speed_fps: float = 30.0, text_len: int = 512):
        self.pool, self.enc, self.encoders, self.batch = pool, enc, str(encoders), batch
        self.history, self.i2v_prob = tuple(sorted(set(history))), i2v_prob
        self.speed_prob, self.prompt_style, self.speed_fps, self.text_len = speed_prob, prompt_style, speed_fps, text_len
        self._enc = None

    def __getstate__(self):
        return {**self.__dict__, "_enc": None}

    def _encoders(self):
        if self._enc is None:
            import yume_jax
            p = Path(self.encoders)
            self._enc = (yume_jax.load_text_encoder(p / "text_encoder", text_len=self.text_len, cache=None),
                         yume_jax.load_image_encoder(p / "image_encoder") if (p / "image_encoder").is_dir() else None)
        return self._enc

    def __call__(self, index, rng: np.random.Generator) -> dict:
        from yume_jax.camera import prompt, quantize, speed
        from yume_jax.data.pipeline import _majority

        te, ie = self._encoders()
        e, m = self.enc, self.enc.chunk
        i2v = bool(rng.random() < self.i2v_prob)
        h = 1 + e.image_repeat // 4 if i2v else int(self.history[int(rng.integers(len(self.history)))])
        walks = rng.integers(len(self.pool), size=self.batch)
        last = 0 if i2v else 4 * (h - 1)  # the last history frame, in walk frames
        prompts, actions = [], []
        for c in walks:
            poses = self.pool.c2w[c, last:last + 4 * m + 1]
            a = _majority(quantize(poses))
            with_speed = rng.random() < self.speed_prob
            prompts.append(prompt(a, self.prompt_style, speed(poses, fps=self.speed_fps) if with_speed else None))
            actions.append(a.index)
        if i2v:
            lat, gray = e.start_latents[walks], e.start_gray[walks]
        else:
            lat, gray = e.latents[walks, :, :h + m], e.gray[h][walks]
        out = {"latents": np.ascontiguousarray(lat), "num_history": np.full(self.batch, h, np.int32),
               "text": np.asarray(te.encode(prompts), np.float32), "gray": np.ascontiguousarray(gray),
               "i2v": np.full(self.batch, i2v), "action": np.asarray(actions, np.int32),
               "item": np.full(self.batch, int(index), np.int64)}
        if ie is not None:
            out["image"] = np.asarray(ie.encode(self.pool.frames[walks, last]), np.float32)
        return out


def _first(items: list[dict]) -> dict:
    return items[0]


def pool_dataset(pool: Pool, encoders, batch: int, chunk: int, history: tuple[int, ...], raw, seed: int,
                 shard_index: int, shard_count: int, i2v_prob: float = 0.3, text_len: int = 512,
                 log=print, image_repeat: int = 16):
    """This process's batches (each item of the Grain pipeline is a whole batch of :class:`PoolBatches`)."""
    import time

    import yume_jax
    from yume_jax.data import pipeline as pl

    t0 = time.time()
    vae = yume_jax.load_vae(Path(encoders) / "vae", latents_per_step=4)
    enc = encode_pool(pool, vae, history, chunk, image_repeat)
    log(f"encoded {len(pool)} walks ({pool.frames.shape[1]} frames) in {time.time() - t0:.1f} s")
    fn = PoolBatches(pool, enc, encoders, batch, history, i2v_prob=i2v_prob, speed_prob=raw.speed_prob,
                     prompt_style=raw.prompt_style, speed_fps=raw.speed_fps, text_len=text_len)
    loader = pl.LoaderConfig(seed=seed, batch_size=1, read_threads=1, read_buffer=2)
    return pl.build(1 << 30, fn, loader, shard_index, shard_count, collate_fn=_first)
