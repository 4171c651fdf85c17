"""Grain training input pipelines (raw clips here; latents in :mod:`yume_jax.data.latents`).

Raw-clip samples follow Yume's loader (spec/sekai.md "Yume's training layout", spec/yume.md "Training
objective"): a chunk of ``chunk_frames`` = 4n+1 contiguous frames at a random start, preceded by a
random-length history of the frames just before it (10..L frames, L = 400 with p = 0.4 else 1000,
from the full source video in the Yume layout, from the same clip in the Sekai layout), history
trimmed to a multiple of 4 so the whole video stays 4n+1 frames. With p = 0.4 the sample is the
image-to-video variant: the history is the chunk's first frame repeated 16 times. Frames are decoded
and resized by FFmpeg, scaled to [-1, 1] and laid out (3, T, H, W). The prompt is the Yume prompt of
the chunk's action (the clip label in the Yume layout, the majority QCM action of the chunk's poses in
the Sekai layout) plus, with p = 0.65, the speed sentence.

Pipeline (one mechanism for raw clips and latents): indices -> shard for this JAX process (disjoint
``[index::count]``) -> per-epoch shuffle -> repeat -> ``random_map`` (randomness seeded by seed and
element index, so the stream is a pure function of the seed, independent of worker count) -> optional
``mp_prefetch`` worker processes -> in-process collation that drops and counts skipped samples
(broken videos, too-short clips) and batches, and fails fast (:class:`DataError`, naming the first
problems) when nothing decodes or the skipped fraction exceeds ``max_skip_fraction`` after
``min_attempts`` samples, so a broken dataset can never spin forever. The iterator's state (``get_state``/``set_state``, JSON
via :func:`save_state`/:func:`load_state`) includes the skip counters; a restored iterator yields
exactly the batches the uninterrupted one would have.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import grain
import numpy as np

from yume_jax.core.cli import UserError
from yume_jax.camera import ALL_ACTIONS, Action, Speed, prompt, quantize, speed
from yume_jax.data import sekai
from yume_jax.data import video as vio

SKIP = "_skip"


class DataError(UserError):
    """A dataset that cannot feed training: nothing decodes, or too many samples are skipped (the message
    names the first problems: file and reason)."""


@dataclasses.dataclass(frozen=True)
class RawConfig:
    chunk_frames: int = 33  # 4n+1
    height: int = 544
    width: int = 960
    history_min: int = 10
    history_max_short: int = 400  # L with probability history_short_prob
    history_max_long: int = 1000
    history_short_prob: float = 0.4
    i2v_prob: float = 0.4
    i2v_history: int = 16  # the first image repeated this many times
    speed_prob: float = 0.65
    speed_fps: float = 30.0  # Yume's loader computes speeds as if at 30 fps
    prompt_style: str = "yume1"
    history_buckets: tuple[int, ...] | None = None  # round the history down to one of these (fewer shapes to compile)

    def replace(self, **kw) -> "RawConfig":
        return dataclasses.replace(self, **kw)

    def __post_init__(self):
        for f in ("chunk_frames", "height", "width", "history_min", "history_max_short", "history_max_long",
                  "i2v_history"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{f} must be an integer, got {v!r}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be >= 1, got {self.height}x{self.width}")
        for f in ("history_short_prob", "i2v_prob", "speed_prob"):
            if not 0.0 <= float(getattr(self, f)) <= 1.0:  # also rejects NaN
                raise ValueError(f"{f} must be a probability in [0, 1], got {getattr(self, f)!r}")
        if not (0.0 < float(self.speed_fps) < float("inf")):
            raise ValueError(f"speed_fps must be positive and finite, got {self.speed_fps!r}")
        if self.chunk_frames < 1 or self.chunk_frames % 4 != 1:
            raise ValueError(f"chunk_frames must be 4n+1, got {self.chunk_frames}")
        if self.i2v_history % 4:
            raise ValueError(f"i2v_history must be a multiple of 4 (video stays 4n+1 frames), got {self.i2v_history}")
        if not 0 <= self.history_min <= min(self.history_max_short, self.history_max_long):
            raise ValueError("need 0 <= history_min <= history_max_short, history_max_long")
        if self.history_buckets is not None and any(b < 0 or b % 4 for b in self.history_buckets):
            raise ValueError(f"history_buckets must be non-negative multiples of 4, got {self.history_buckets}")


RAW_PRESETS = {
    "yume": RawConfig(),
    "sandbox": RawConfig(height=96, width=160),
    "tiny": RawConfig(chunk_frames=9, height=48, width=80, history_min=4, history_max_short=12, history_max_long=24,
                      i2v_history=4),
}


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """How samples are ordered, split, batched and prefetched."""

    seed: int = 0
    batch_size: int = 1
    num_epochs: int | None = None  # None: repeat forever
    shuffle: bool = True
    drop_remainder: bool = True
    num_workers: int = 0  # multiprocessing prefetch workers (0: decode in this process)
    worker_buffer: int = 2  # elements buffered per worker process
    read_threads: int = 2  # threads decoding ahead inside each process (PyAV releases the GIL)
    read_buffer: int = 4  # elements decoded ahead per process (each can be large: keep small)
    max_skip_fraction: float = 0.5  # fail when more than this fraction of the samples tried was skipped ...
    min_attempts: int = 32  # ... once this many were tried (nothing decoding at all fails at this count too)

    def replace(self, **kw) -> "LoaderConfig":
        return dataclasses.replace(self, **kw)


def _majority(actions: list[Action]) -> Action:
    if not actions:
        return Action()
    counts = collections.Counter(actions)
    best = max(counts.values())
    return next(a for a in actions if counts[a] == best)  # earliest among the most frequent


class RawSample:
    """``random_map`` function: clip index + rng -> sample dict (or a skip marker)."""

    def __init__(self, clips: Sequence[sekai.ClipInfo], cfg: RawConfig):
        self.clips, self.cfg = list(clips), cfg

    def choose(self, info: sekai.ClipInfo, rng: np.random.Generator) -> dict | None:
        """The random choices of one sample (chunk start, history length, i2v, speed sentence)."""
        c = self.cfg
        T, n = c.chunk_frames, info.num_frames
        u = rng.random(4)  # fixed consumption: every choice below comes from these draws
        if n < T:
            return None
        start = int(u[0] * (n - T + 1))
        before = start + (info.history_offset if info.history_video is not None else 0)
        cap = c.history_max_short if u[1] < c.history_short_prob else c.history_max_long
        lo, hi = (c.history_min, min(cap, before)) if before > c.history_min else (0, before)
        hist = int(rng.integers(lo, hi + 1))
        hist -= hist % 4
        if c.history_buckets:
            hist = max((b for b in c.history_buckets if b <= hist), default=0)
        return dict(start=start, history=hist, i2v=bool(u[2] < c.i2v_prob), with_speed=bool(u[3] < c.speed_prob))

    def make(self, index, rng: np.random.Generator) -> dict:
        """Decoded video and metadata of one sample (no prompt), or a skip marker."""
        index = int(index)
        info = self.clips[index]
        ch = self.choose(info, rng)
        if ch is None:
            return {SKIP: "too_short", "clip": index,
                    "error": f"{info.video}: {info.num_frames} frames < chunk_frames={self.cfg.chunk_frames}"}
        c, T, s = self.cfg, self.cfg.chunk_frames, ch["start"]
        size = (c.height, c.width)
        try:
            c2w = sekai.clip_poses(info)[s:s + T]
            h = 0 if ch["i2v"] else ch["history"]
            if info.history_video is None or info.history_video == info.video:
                frames = vio.read_frames(info.video, range(s - h, s + T), size=size)
            else:
                frames = vio.read_frames(info.video, range(s, s + T), size=size)
                if h:
                    off = info.history_offset + s
                    frames = np.concatenate([vio.read_frames(info.history_video, range(off - h, off), size), frames])
        except (vio.VideoError, sekai.PoseError, OSError) as e:
            return {SKIP: "bad_video" if isinstance(e, vio.VideoError) else "bad_poses", "clip": index,
                    "error": str(e)[:300]}
        if ch["i2v"]:
            h = c.i2v_history
            frames = np.concatenate([np.repeat(frames[:1], h, axis=0), frames])
        action = info.action if info.action is not None else _majority(quantize(c2w))
        sp = speed(c2w, fps=c.speed_fps)
        # C-contiguous, so mp_prefetch hands it over in shared memory instead of pickling it through a pipe
        video = np.ascontiguousarray(frames.transpose(3, 0, 1, 2), dtype=np.float32)
        video *= np.float32(1 / 127.5)
        video -= np.float32(1.0)
        return {"video": video, "num_history": np.int32(h), "i2v": np.bool_(ch["i2v"]),
                "with_speed": np.bool_(ch["with_speed"]), "action": np.int32(action.index), "clip": np.int32(index),
                "start": np.int32(s), "speed": np.array([sp.distance, sp.turn, sp.rotation], np.float64)}

    def prompts(self, sample: dict) -> tuple[str, str]:
        """The sample's prompt without and with the speed sentence."""
        c, info = self.cfg, self.clips[int(sample["clip"])]
        action = ALL_ACTIONS[int(sample["action"])]
        caption = info.caption if c.prompt_style == "yume1.5" else None
        sp = Speed(*(float(v) for v in sample["speed"]))
        return prompt(action, c.prompt_style, caption=caption), prompt(action, c.prompt_style, sp, caption)

    def __call__(self, index, rng: np.random.Generator) -> dict:
        out = self.make(index, rng)
        if SKIP not in out:
            plain, with_speed = self.prompts(out)
            out["prompt"] = with_speed if out["with_speed"] else plain
        return out


def collate(items: list[dict], video_key: str = "video", history_key: str = "num_history") -> dict:
    """Stack samples; videos (or latents) of different history lengths share the batch's shortest history
    (oldest frames dropped from axis 1) so every one keeps its chunk at the end. Yume trains with one
    sample per device; with larger batches use ``history_buckets`` to keep more history."""
    out = {}
    if video_key in items[0]:
        h = min(int(x[history_key]) for x in items)
        out[video_key] = np.stack([x[video_key][:, int(x[history_key]) - h:] for x in items])
        out[history_key] = np.full(len(items), h, np.int32)
    for k, v in items[0].items():
        if k in out:
            continue
        if isinstance(v, str):
            out[k] = np.array([x[k] for x in items], dtype=object)
        else:
            out[k] = np.stack([np.asarray(x[k]) for x in items])
    return out


class _CollateIterator(grain.DatasetIterator):
    def __init__(self, parent, batch_size: int, drop_remainder: bool, collate_fn: Callable,
                 max_skip_fraction: float = 1.0, min_attempts: int = 32):
        super().__init__(parent)
        self._bs, self._drop, self._collate = batch_size, drop_remainder, collate_fn
        self._max_frac, self._min_attempts = max_skip_fraction, max(int(min_attempts), 1)
        self.skipped: collections.Counter = collections.Counter()
        self.problems: list[str] = []
        self.samples = 0

    @property
    def attempts(self) -> int:
        """Samples tried so far (yielded + skipped), including those of a restored state."""
        return self.samples + sum(self.skipped.values())

    def _check(self, decoded: int):
        """DataError when nothing decoded or too many samples were skipped (after ``min_attempts``)."""
        n, bad = self.attempts + decoded, sum(self.skipped.values())
        if n < self._min_attempts:
            return
        if self.samples + decoded == 0:
            what = f"no sample decodes ({bad} tried)"
        elif bad / n > self._max_frac:
            what = (f"{bad} of {n} samples skipped ({100 * bad / n:.0f}% > max_skip_fraction="
                    f"{self._max_frac:g})")
        else:
            return
        causes = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
        first = "; ".join(self.problems[:3])
        raise DataError(f"{what}: {causes}; first problems: {first}")

    def __next__(self):
        items = []
        while len(items) < self._bs:
            try:
                x = next(self._parent)
            except StopIteration:
                if items and not self._drop:
                    break
                raise
            if SKIP in x:
                self.skipped[x[SKIP]] += 1
                if len(self.problems) < 1000:
                    self.problems.append(f"{x[SKIP]}: item {x.get('clip')}: {x.get('error', '')}")
                self._check(len(items))
                continue
            items.append(x)
        self.samples += len(items)
        return self._collate(items)

    def get_state(self) -> dict:
        return {"parent": self._parent.get_state(), "skipped": dict(self.skipped), "samples": self.samples}

    def set_state(self, state: dict):
        self._parent.set_state(state["parent"])
        self.skipped = collections.Counter(state["skipped"])
        self.samples = int(state["samples"])

    def __str__(self):
        return f"CollateIterator(batch_size={self._bs})"


class _Collate(grain.IterDataset):
    def __init__(self, parent, batch_size: int, drop_remainder: bool, collate_fn: Callable,
                 max_skip_fraction: float = 1.0, min_attempts: int = 32):
        super().__init__(parent)
        self._args = (batch_size, drop_remainder, collate_fn, max_skip_fraction, min_attempts)

    def __iter__(self):
        return _CollateIterator(self._parent.__iter__(), *self._args)

    def __str__(self):
        return f"Collate(batch_size={self._args[0]})"


def _process_shard(shard_index, shard_count) -> tuple[int, int]:
    if shard_index is None or shard_count is None:
        import jax
        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    return int(shard_index), int(shard_count)


def build(num_items: int, sample_fn: Callable[[int, np.random.Generator], dict], loader: LoaderConfig,
          shard_index: int | None = None, shard_count: int | None = None,
          collate_fn: Callable = collate) -> grain.IterDataset:
    """The shared pipeline over item indices 0..num_items-1 (see the module docstring)."""
    shard_index, shard_count = _process_shard(shard_index, shard_count)
    from absl import flags  # grain's worker processes read absl flags; outside an absl app they are unparsed
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    if loader.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {loader.batch_size}")
    if not 0.0 <= float(loader.max_skip_fraction) <= 1.0:
        raise ValueError(f"max_skip_fraction must be in [0, 1], got {loader.max_skip_fraction!r}")
    ds = grain.MapDataset.range(num_items)[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"shard {shard_index}/{shard_count} of {num_items} items is empty")
    if loader.shuffle:
        ds = ds.shuffle(seed=loader.seed)
    ds = ds.repeat(loader.num_epochs)
    ds = ds.random_map(sample_fn, seed=loader.seed)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=loader.read_threads, prefetch_buffer_size=loader.read_buffer))
    if loader.num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=loader.num_workers,
                                                         per_worker_buffer_size=loader.worker_buffer))
    return _Collate(it, loader.batch_size, loader.drop_remainder, collate_fn, loader.max_skip_fraction,
                    loader.min_attempts)


def skip_stats(iterator) -> tuple[int, dict[str, int]] | None:
    """(samples tried, skipped per cause) of the pipeline under ``iterator`` (found through the chain of
    parent iterators, e.g. below a ``.map``), or None for an iterator not built by :func:`build`."""
    seen, todo = set(), [iterator]
    while todo:
        it = todo.pop()
        if id(it) in seen:
            continue
        seen.add(id(it))
        if isinstance(it, _CollateIterator):
            return it.attempts, dict(it.skipped)
        todo.extend(getattr(it, "_parents", ()) or ())
    return None


def raw_dataset(data: sekai.Dataset | Sequence[sekai.ClipInfo], cfg: RawConfig = RawConfig(),
                loader: LoaderConfig = LoaderConfig(), shard_index: int | None = None,
                shard_count: int | None = None) -> grain.IterDataset:
    """Training samples from raw clips of either layout (``iter()`` it for batches; see module docstring)."""
    clips = data.clips if isinstance(data, sekai.Dataset) else list(data)
    if not clips:
        raise ValueError("no clips to read")
    return build(len(clips), RawSample(clips, cfg), loader, shard_index, shard_count)


def save_state(iterator, path) -> Path:
    """Write an iterator's state as JSON (atomically)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(_jsonable(iterator.get_state())))
    os.replace(tmp, path)
    return path


def load_state(iterator, path) -> Any:
    state = json.loads(Path(path).read_text())
    iterator.set_state(state)
    return iterator


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, bytes):
        raise ValueError("iterator state holds bytes; not JSON-serialisable")
    return x
