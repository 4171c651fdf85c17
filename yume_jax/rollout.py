"""Autoregressive exploration sessions: generate the world chunk by chunk with the history memory
(spec/yume.md "Sampling", "History memory").

A :class:`Session` holds only exploration state: the clean history latents, the VAE's streaming decode
state, the start frame's CLIP tokens, the negative prompt's embedding, the PRNG key and the per-chunk
records. Everything heavy (components, mesh, compiled samplers) belongs to the shared
:class:`yume_jax.pipeline.Pipeline`, so sessions are cheap and a second session with the same config
compiles nothing. Each :meth:`Session.step` samples the next chunk of latents (history frozen: re-noised
with a fixed draw in Yume 1.0 mode, clean with t = 0 in Yume 1.5 mode), appends them to the history, and
decodes ONLY the new latent frames, continuing from the saved decoder cache (the public code re-decodes
everything each chunk).

What the model is fed follows the public sampler (spec/yume.md "The public sampler's pipeline"). Starts:
image-to-video (pseudo-history: the image repeated 16 times then itself, 17 pixel frames -> 5 latent
frames), video-to-video (the encoded input video is the history), text-only (no history; needs a model
without image cross-attention or I2V channels). I2V models with 2z+4 input channels get Wan's conditioning
channels from :func:`yume_jax.models.conditioning.history_channels` (the builder training uses too): y =
vae.encode([history pixel frames, gray frames for the chunk]), streamed: the history's pixel frames are
encoded once as they are decoded, and each chunk's gray latents continue a copy of that encode stream.
CLIP features are those of the last history frame, recomputed every chunk. The CFG negative prompt is Wan's,
and yume1-style prompts end with the public sampler's fixed speed sentence.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from yume_jax import camera
from yume_jax.media import resize_frames, to_uint8, to_video
from yume_jax.models import memory
from yume_jax.models.conditioning import history_channels
from yume_jax.pipeline import Pipeline
from yume_jax.sampling import api as sampling
from yume_jax.sampling.cache import CacheConfig
from yume_jax.sampling.frozen import history_clean, history_mask, history_renoised


@dataclass(frozen=True)
class RolloutConfig:
    height: int = 96
    width: int = 160
    chunk_frames: int = 2  # new latent frames per chunk (8 at 544x960 in the public sampler)
    history_mode: str = "renoise"  # "renoise" (Yume 1.0) | "clean" (Yume 1.5)
    max_history: Optional[int] = None  # latent frames of history kept (None: all; memory caps at 1366)
    prompt_style: str = "yume1"
    caption: str = ""
    negative_prompt: str = camera.NEGATIVE_PROMPT  # CFG negative (Wan's, as the public sampler)
    speed_sentence: bool = True  # yume1 style: append the public sampler's fixed speed sentence
    image_repeat: int = 16  # image start: the image repeated this many times, then itself (17 -> 5 latents)
    fps: int = 16
    seed: int = 0
    sampler: sampling.SamplerConfig = field(default_factory=lambda: sampling.SamplerConfig(steps=4))
    history_buckets: tuple[int, ...] | None = None  # bounded shapes (memory.BUCKETS); None: every length, exact
    block_cache: int = 0  # block residual caching: refresh every N steps (0: off; any sampler)
    cache_blocks: tuple[int, ...] | None = None  # cached layers; None: pipeline.json's, else the middle half

    def __post_init__(self):
        if self.history_mode not in ("renoise", "clean"):
            raise ValueError(f"history_mode must be renoise or clean, not {self.history_mode!r}")
        if self.chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        if self.prompt_style not in camera.STYLES:
            raise ValueError(f"prompt_style must be one of {camera.STYLES}")
        if self.image_repeat < 0 or self.image_repeat % 4:
            raise ValueError("image_repeat must be a multiple of 4 (whole latent frames), >= 0")
        if self.max_history is not None and self.max_history < 1:
            raise ValueError("max_history must be >= 1 (frame 0, the anchor, is always kept)")
        if self.history_buckets is not None:
            object.__setattr__(self, "history_buckets", memory.check_buckets(self.history_buckets))
        if self.block_cache < 0:
            raise ValueError("block_cache (refresh interval) must be >= 0")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sampler"] = self.sampler.to_dict()
        return d

    @classmethod
    def for_pipeline(cls, pipe: Pipeline, **overrides) -> "RolloutConfig":
        """A config with ``pipe``'s pipeline.json defaults (:meth:`from_defaults` of its run defaults)."""
        return cls.from_defaults(pipe.run_defaults(), **overrides)

    @classmethod
    def from_defaults(cls, d: dict, **overrides) -> "RolloutConfig":
        """A config from pipeline.json defaults ``d`` (size, chunk, history mode, prompt style, the sampler with
        a student's explicit sigmas: :func:`yume_jax.pipeline.sampler_config`), ``overrides`` on top."""
        from yume_jax.pipeline import sampler_config

        mode = {"noised": "renoise"}.get(d.get("history_mode"), d.get("history_mode"))
        base = {k: d[k] for k in ("height", "width", "chunk_frames", "max_history", "prompt_style") if k in d}
        base.update(sampler=sampler_config(d), **({"history_mode": mode} if mode else {}))
        return cls(**{**base, **overrides})


class Session:
    """One exploration on a shared pipeline: history latents, decoder state, prompts, records."""

    def __init__(self, pipe: Pipeline, config: RolloutConfig, *, image: np.ndarray | None = None,
                 video: np.ndarray | None = None, on_step: Optional[Callable[[int], None]] = None,
                 mesh=None):
        """``mesh``: sample on this mesh (context- and CFG-parallel, yume_jax/pipeline.py) with
        ``pipe.with_mesh(mesh)``, a pipeline of its own; sessions sharing a pipeline share its mesh
        (``load_pipeline(path, mesh=...)``). None: the pipeline's mesh."""
        if mesh is not None and mesh is not pipe.mesh:
            pipe = pipe.with_mesh(mesh)
        self.pipe, self.config = pipe, config
        cfg = pipe.dit.config
        stride = pipe.vae.cfg.spatial_stride
        if config.height % (stride * 2) or config.width % (stride * 2):
            raise ValueError(f"height and width must be multiples of {stride * 2} (VAE stride x patch)")
        if image is not None and video is not None:
            raise ValueError("give an image or a video, not both")
        if (cfg.image_dim is not None or pipe.conditioned) and image is None and video is None:
            raise ValueError("this model is image-to-video: give --image (or --video)")
        self.records: list[dict] = []
        self.key = jax.random.key(config.seed)
        self._on_step = on_step
        self._delivered = None  # perf_counter of the last frames handed to the host (Chunk.frames)
        self.history = None  # (1, z, H, h, w) clean latents (the model's history input)
        self.y_history = None  # (1, z, H, h, w) VAE latents of the history's PIXEL frames (I2V channels y)
        self.encode_state = None  # the VAE encode stream after the history's pixel frames (I2V models)
        self.decode_state = None
        self.last_frame = None  # (h, w, 3) uint8: the last history frame (CLIP input of the next chunk)
        self.initial_frames = np.zeros((0, config.height, config.width, 3), np.uint8)
        self.uncond_text = pipe.text_encoder.encode([config.negative_prompt])
        pixels = None
        if video is not None:
            frames = resize_frames(video, config.height, config.width)
            n = 1 + 4 * ((len(frames) - 1) // 4)
            pixels = frames[-n:]
        elif image is not None:
            img = resize_frames(np.asarray(image)[None], config.height, config.width)
            # pseudo-history: the image repeated, then itself (17 pixel frames -> 5 latent frames)
            pixels = np.repeat(img, config.image_repeat + 1, axis=0)
        if pixels is not None:
            self.last_frame = pixels[-1]
            self.history, self.encode_state = pipe.vae.stream_encode(to_video(pixels))
            self.y_history = self.history
            if not pipe.conditioned:
                self.encode_state = None
            video_out, self.decode_state = pipe.vae.stream_decode(self.history)
            self.initial_frames = to_uint8(video_out)
        self.image_context = None
        self._clip()

    @property
    def mesh(self):
        """The mesh this session samples on (its pipeline's; None: one device)."""
        return self.pipe.mesh

    @property
    def cache(self) -> Optional[CacheConfig]:
        """The block cache of this run (None: off)."""
        c = self.config
        if not c.block_cache:
            return None
        return CacheConfig(refresh=c.block_cache, blocks=self.cache_blocks())

    def cache_blocks(self) -> tuple[int, ...]:
        c = self.config
        return tuple(c.cache_blocks) if c.cache_blocks is not None else self.pipe.default_cache_blocks()

    @property
    def sampler(self) -> sampling.Sampler:
        """The pipeline's compiled sampler this session uses (shared with every session of the same key)."""
        c = self.config
        return self.pipe.sampler(c.sampler, c.chunk_frames, cache_refresh=c.block_cache,
                                 progress=self._on_step is not None)

    def prompt(self, action: camera.Action) -> str:
        """The action's prompt; in the yume1 style with the public sampler's fixed speed sentence appended
        (``speed_sentence``; spec/yume.md "The public sampler's pipeline")."""
        c = self.config
        text = camera.prompt(action, style=c.prompt_style, caption=c.caption or None)
        if c.speed_sentence and c.prompt_style == "yume1":
            text += camera.INFERENCE_SPEED_SENTENCE
        return text

    def _clip(self):
        """CLIP tokens of the last history frame (the image for an image start), recomputed every chunk."""
        if self.pipe.dit.config.image_dim is not None and self.last_frame is not None:
            self.image_context = self.pipe.image_encoder.encode(self.last_frame[None])

    def _gray_continuation(self, chunk_frames: int):
        """The VAE latents of ``chunk_frames`` latent frames of gray (0 in [-1, 1]) pixel frames continuing
        the history through the causal encoder, from a copy of the history's encode stream."""
        c = self.config
        gray = jnp.zeros((1, 3, 4 * chunk_frames, c.height, c.width), jnp.float32)
        lat, _ = self.pipe.vae.stream_encode(gray, self.encode_state.copy(), check_range=False)
        return lat

    # -- one chunk: dispatch (asynchronous), then frames on the host ------------------------------
    def window(self) -> Optional[int]:
        """History frames stored: ``max_history``, and with ``history_buckets`` at most the largest bucket
        (frames older than the anchor + newest ``max(buckets) - 1`` can never be fed); None: unbounded."""
        c = self.config
        caps = [m for m in (c.max_history, max(c.history_buckets) if c.history_buckets else None) if m is not None]
        return min(caps) if caps else None

    def _keep_history(self, hist: int) -> np.ndarray:
        """Indices of the history frames kept under :meth:`window`: frame 0 (the anchor, as the memory's own
        selection keeps it) and the newest ``window - 1``."""
        m = self.window()
        if m is None or hist <= m:
            return np.arange(hist)
        return np.concatenate([[0], np.arange(hist - (m - 1), hist)]).astype(int)

    def submit(self, action: camera.Action | str, *, sync: bool = False) -> "Chunk":
        """Dispatch the next chunk for ``action`` and return at once (JAX asynchronous dispatch: the sampled
        latents, the decode of the new frames and, for I2V models, their encode and CLIP features are queued
        on the device; nothing waits for them). :meth:`Chunk.frames` hands the frames to the host. So a
        caller that submits chunk i+1 before taking chunk i's frames keeps the device busy while the host
        converts, encodes or sends chunk i (:meth:`explore`). ``sync=True`` blocks after sampling and after
        decoding instead, so the record's ``timings_s`` split sample and decode exactly (what :meth:`step`
        does). With a per-step progress hook (``on_step``) sampling always blocks: the hook is routed to the
        calling session only while it holds the pipeline's lock."""
        if isinstance(action, str):
            action = camera.parse_step(action)
        c, pipe = self.config, self.pipe
        idx = len(self.records)
        t0 = time.perf_counter()
        text = self.prompt(action)
        cond_text = pipe.text_encoder.encode([text])
        t_text = time.perf_counter() - t0
        stride = pipe.vae.cfg.spatial_stride
        h, w = c.height // stride, c.width // stride
        z = pipe.z_dim
        stored = 0 if self.history is None else self.history.shape[2]
        keep = self._keep_history(stored)
        if len(keep) < stored:
            self.history = self.history[:, :, keep]
            if self.y_history is not None:
                self.y_history = self.y_history[:, :, keep]
            stored = len(keep)
        # the frames fed to the model: all (exact), or the anchor + newest of a bucket length (bounded shapes)
        feed = np.arange(stored) if not c.history_buckets else memory.bucket_frames(stored, c.history_buckets)
        hist = len(feed)
        history = self.history if hist == stored else self.history[:, :, feed]
        y_history = self.y_history
        if y_history is not None and hist != stored:
            y_history = y_history[:, :, feed]
        total = hist + c.chunk_frames
        k_chunk = jax.random.fold_in(self.key, idx)
        k_noise, k_hist, k_sde = jax.random.split(k_chunk, 3)
        noise = jax.random.normal(k_noise, (1, z, total, h, w), jnp.float32)
        frozen = None
        if hist:
            mask = history_mask(noise.shape, hist)
            clean = jnp.zeros_like(noise).at[:, :, :hist].set(history)
            if c.history_mode == "renoise":
                frozen = history_renoised(mask, clean, jax.random.normal(k_hist, noise.shape, jnp.float32))
            else:
                frozen = history_clean(mask, clean)
        ctx = {"text": cond_text}
        uctx = {"text": self.uncond_text}
        if self.image_context is not None:
            ctx["image"] = uctx["image"] = self.image_context
        if pipe.conditioned:
            gray = None if self.encode_state is None else self._gray_continuation(c.chunk_frames)
            ctx["y"] = uctx["y"] = history_channels(None if hist == 0 else y_history, c.chunk_frames, gray)
        t1 = time.perf_counter()
        out = pipe.sample(c.sampler, c.chunk_frames, noise, ctx, uctx, key=k_sde, frozen=frozen, cache=self.cache,
                          on_step=self._on_step, block=sync)
        new = out[:, :, hist:]
        t_sample = time.perf_counter() - t1
        self.history = new if self.history is None else jnp.concatenate([self.history, new], axis=2)
        t2 = time.perf_counter()
        # the causal VAE: a stream's first latent frame decodes to 1 video frame, every later one to 4
        n_video = 4 * c.chunk_frames - (3 if self.decode_state is None else 0)
        video, self.decode_state = pipe.vae.stream_decode(new, self.decode_state)
        if self.encode_state is not None:  # the new pixel frames continue the history's encode stream
            # the decoder's clamped output: no range check (a host sync that would wait for this chunk's
            # sampling and decode, and so serialise the pipeline of :meth:`explore`)
            new_y, self.encode_state = pipe.vae.stream_encode(video, self.encode_state, check_range=False)
            self.y_history = jnp.concatenate([self.y_history, new_y], axis=2)
        last = _uint8_frame(video[:, :, -1])  # on device: the next chunk's CLIP input, no host sync
        self.last_frame = last
        self._clip()
        if sync:
            jax.block_until_ready(video)
        t_decode = time.perf_counter() - t2
        timings = dict(text=round(t_text, 4), sample=round(t_sample, 4), decode=round(t_decode, 4))
        if not sync:  # host time to enqueue sampling and decoding; the device time shows up in wait
            timings = dict(text=round(t_text, 4), dispatch=round(t_sample + t_decode, 4))
        rec = dict(chunk=idx, action=str(action), prompt=text, negative_prompt=c.negative_prompt, seed=c.seed,
                   key_fold=idx, history_frames=hist, history_stored=stored, new_latent_frames=c.chunk_frames,
                   video_frames=n_video, timings_s=timings,
                   sampler_compiles=self.sampler.traces)
        self.records.append(rec)
        return Chunk(self, rec, video, time.perf_counter())

    def step(self, action: camera.Action | str) -> tuple[np.ndarray, dict]:
        """Generate the next chunk for ``action``; returns its new video frames (T, H, W, 3) uint8 and a record
        (blocking; ``timings_s``: text, sample, decode, each waited for)."""
        chunk = self.submit(action, sync=True)
        return chunk.frames(), chunk.record

    def explore(self, actions) -> Iterator[tuple[np.ndarray, dict]]:
        """Frames and record of each chunk for an iterable of actions, pipelined: chunk i+1 is dispatched
        before chunk i's frames are fetched, so the device samples chunk i+1 while the host converts and
        hands over chunk i (the consumer gets each chunk as soon as it is decoded). ``actions`` is read
        lazily, one ahead of the frames handed out; each record's ``critical_path_s`` says where the
        chunk's time went (text, dispatch, wait for the device, and interval: wall time since the previous
        chunk was handed out, the steady-state seconds per chunk)."""
        pending = None
        for action in actions:
            nxt = self.submit(action)
            if pending is not None:
                yield pending.frames(), pending.record
            pending = nxt
        if pending is not None:
            yield pending.frames(), pending.record

    def metrics(self) -> dict:
        """A summary for status lines and sidecars: chunks, seconds per chunk (mean of the last 4 intervals),
        frames per second, history length, compiles so far."""
        recs = [r for r in self.records if "critical_path_s" in r]
        iv = [r["critical_path_s"]["interval"] for r in recs[-4:] if r["critical_path_s"].get("interval")]
        spc = float(np.mean(iv)) if iv else None
        last = self.records[-1] if self.records else {}
        return dict(chunks=len(self.records), s_per_chunk=None if spc is None else round(spc, 3),
                    fps=None if not spc else round(4 * self.config.chunk_frames / spc, 2),
                    history_frames=last.get("history_frames", 0), history_stored=last.get("history_stored", 0),
                    sampler_compiles=self.pipe.compiles)


@jax.jit
def _uint8_frame(frame: jax.Array) -> jax.Array:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8, rounding as :func:`yume_jax.media.to_uint8`."""
    v = jnp.transpose(frame[0].astype(jnp.float32), (1, 2, 0))
    return jnp.clip(jnp.round((v + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


class Chunk:
    """A dispatched chunk of a :class:`Session`: its record now, its frames once the device has them."""

    def __init__(self, session: Session, record: dict, video: jax.Array, dispatched: float):
        self.session, self.record, self.video, self._dispatched = session, record, video, dispatched
        self._frames = None

    def frames(self) -> np.ndarray:
        """The chunk's new video frames (T, H, W, 3) uint8: waits for the device once, then cached. Adds
        ``critical_path_s`` (text, dispatch, wait, interval) to the record."""
        if self._frames is None:
            t0 = time.perf_counter()
            self._frames = to_uint8(self.video)
            now = time.perf_counter()
            s, rec = self.session, self.record
            t = rec["timings_s"]
            prev = s._delivered
            rec["video_frames"] = int(self._frames.shape[0])
            rec["critical_path_s"] = dict(text=t["text"], dispatch=t.get("dispatch", round(t.get("sample", 0) + t.get("decode", 0), 4)),
                                          wait=round(now - t0, 4),
                                          interval=None if prev is None else round(now - prev, 4))
            s._delivered = now
            self.video = None
        return self._frames
