"""Autoregressive exploration: generate the world chunk by chunk with the history memory
(spec/yume.md "Sampling", "History memory").

A :class:`Pipeline` bundles the DiT, the VAE, the text encoder (with its prompt cache) and, for I2V
models, the CLIP image encoder. A :class:`Session` holds the clean history latents and the VAE's
streaming decode state; each :meth:`Session.step` samples the next chunk of latents with one compiled
sampler (history frozen: re-noised with a fixed draw in Yume 1.0 mode, clean with t = 0 in Yume 1.5
mode), appends them to the history, and decodes ONLY the new latent frames, continuing from the
saved decoder cache (the public code re-decodes everything each chunk).

Starts: image-to-video (the encoded image is the first history frame: pseudo-history), video-to-video
(the encoded input video is the history), text-only (no history; needs a model without image
cross-attention). I2V models with 2z+4 input channels get Wan's conditioning channels: a 4-channel
mask marking history (conditioning) frames and the clean history latents, zeros on the chunk.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yume_jax import blockcache, camera, sharding
from yume_jax.sampling import api as sampling
from yume_jax.sampling.frozen import history_clean, history_mask, history_renoised

PIPELINE_JSON = "pipeline.json"


@dataclass(frozen=True)
class RolloutConfig:
    height: int = 96
    width: int = 160
    chunk_frames: int = 2  # new latent frames per chunk (8 at 544x960 in the public sampler)
    history_mode: str = "renoise"  # "renoise" (Yume 1.0) | "clean" (Yume 1.5)
    max_history: Optional[int] = None  # latent frames of history kept (None: all; memory caps at 1366)
    prompt_style: str = "yume1"
    caption: str = ""
    negative_prompt: str = ""
    fps: int = 16
    seed: int = 0
    sampler: sampling.SamplerConfig = field(default_factory=lambda: sampling.SamplerConfig(steps=4))
    block_cache: int = 0  # block residual caching: refresh every N steps (0: off; euler sampler only)
    cache_blocks: tuple[int, ...] | None = None  # cached layers; None: pipeline.json's, else the middle half

    def __post_init__(self):
        if self.history_mode not in ("renoise", "clean"):
            raise ValueError(f"history_mode must be renoise or clean, not {self.history_mode!r}")
        if self.chunk_frames < 1:
            raise ValueError("chunk_frames must be >= 1")
        if self.prompt_style not in camera.STYLES:
            raise ValueError(f"prompt_style must be one of {camera.STYLES}")
        if self.block_cache < 0:
            raise ValueError("block_cache (refresh interval) must be >= 0")
        if self.block_cache and (self.sampler.name != "euler" or self.sampler.aam is not None):
            raise ValueError("block caching works with the euler sampler without AAM")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["sampler"] = self.sampler.to_dict()
        return d


@dataclass
class Pipeline:
    dit: object  # yume_jax.models.loader.DiT
    vae: object  # yume_jax.vae.WanVAE
    text_encoder: object  # yume_jax.encoders.TextEncoder
    image_encoder: object = None  # yume_jax.encoders.ImageEncoder (I2V models)
    defaults: dict = field(default_factory=dict)  # pipeline.json: defaults for RolloutConfig
    source: str = ""

    @property
    def z_dim(self) -> int:
        return self.vae.cfg.z_dim

    @property
    def conditioned(self) -> bool:
        """Wan I2V input layout: noisy latents + 4 mask channels + conditioning latents."""
        return self.dit.config.in_channels == 2 * self.z_dim + 4

    def check(self):
        c = self.dit.config
        if c.in_channels not in (self.z_dim, 2 * self.z_dim + 4):
            raise ValueError(f"DiT takes {c.in_channels} input channels; the VAE has z = {self.z_dim} "
                             f"(expected {self.z_dim} or {2 * self.z_dim + 4})")
        if self.text_encoder.config.dim != c.text_dim:
            raise ValueError(f"text encoder dim {self.text_encoder.config.dim} != DiT text_dim {c.text_dim}")
        if c.image_dim is not None:
            if self.image_encoder is None:
                raise ValueError("this DiT has image cross-attention but the pipeline has no image encoder")
            if self.image_encoder.config.dim != c.image_dim:
                raise ValueError(f"image encoder dim {self.image_encoder.config.dim} != DiT image_dim {c.image_dim}")


def load_pipeline(path) -> Pipeline:
    """A pipeline directory: dit/, vae/, text_encoder/, [image_encoder/], pipeline.json."""
    import yume_jax

    path = Path(path)
    for part in ("dit", "vae", "text_encoder"):
        if not (path / part).is_dir():
            raise FileNotFoundError(f"{path}: not a yume_jax pipeline directory (missing {part}/)")
    defaults = json.loads((path / PIPELINE_JSON).read_text()) if (path / PIPELINE_JSON).exists() else {}
    pipe = Pipeline(dit=yume_jax.load_dit(path / "dit"), vae=yume_jax.load_vae(path / "vae"),
                    text_encoder=yume_jax.load_text_encoder(path / "text_encoder"),
                    image_encoder=(yume_jax.load_image_encoder(path / "image_encoder")
                                   if (path / "image_encoder").is_dir() else None),
                    defaults=defaults, source=str(path))
    pipe.check()
    return pipe


# ---------------------------------------------------------------------------------------------


def to_video(frames_uint8: np.ndarray) -> jax.Array:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float32 in [-1, 1]."""
    x = jnp.asarray(frames_uint8, jnp.float32) / 127.5 - 1.0
    return x.transpose(3, 0, 1, 2)[None]


def to_uint8(video: jax.Array) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    v = np.asarray(jax.device_get(video[0]), np.float32).transpose(1, 2, 3, 0)
    return np.clip(np.round((v + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of uint8 frames (T, H, W, 3) with antialiasing (jax.image)."""
    frames = np.asarray(frames)
    if frames.shape[1:3] == (height, width):
        return frames
    out = jax.image.resize(jnp.asarray(frames, jnp.float32), (frames.shape[0], height, width, 3), "bicubic")
    return np.clip(np.round(np.asarray(out)), 0, 255).astype(np.uint8)


class Session:
    """One exploration: history latents, decoder state, prompts, and a compiled sampler."""

    def __init__(self, pipe: Pipeline, config: RolloutConfig, *, image: np.ndarray | None = None,
                 video: np.ndarray | None = None, on_step: Optional[Callable[[int], None]] = None):
        self.pipe, self.config = pipe, config
        cfg = pipe.dit.config
        stride = pipe.vae.cfg.spatial_stride
        if config.height % (stride * 2) or config.width % (stride * 2):
            raise ValueError(f"height and width must be multiples of {stride * 2} (VAE stride x patch)")
        if image is not None and video is not None:
            raise ValueError("give an image or a video, not both")
        if cfg.image_dim is not None and image is None and video is None:
            raise ValueError("this model is image-to-video: give --image (or --video)")
        self.records: list[dict] = []
        self.key = jax.random.key(config.seed)
        self._on_step = on_step
        self.sampler = sampling.Sampler(config.sampler, self._velocity_model, on_step=on_step)
        self._cached = jax.jit(self._sample_cached)
        self.history = None  # (1, z, H, h, w) clean latents
        self.decode_state = None
        self.first_frame = None
        self.initial_frames = np.zeros((0, config.height, config.width, 3), np.uint8)
        self.uncond_text = pipe.text_encoder.encode([config.negative_prompt])
        if video is not None:
            frames = resize_frames(video, config.height, config.width)
            n = 1 + 4 * ((len(frames) - 1) // 4)
            frames = frames[-n:]
            self.first_frame = frames[0]
            self.history = pipe.vae.encode(to_video(frames))
        elif image is not None:
            img = resize_frames(np.asarray(image)[None], config.height, config.width)
            self.first_frame = img[0]
            self.history = pipe.vae.encode(to_video(img))  # one latent frame: pseudo-history
        if self.history is not None:
            video_out, self.decode_state = pipe.vae.stream_decode(self.history)
            self.initial_frames = to_uint8(video_out)
        self.image_context = None
        if cfg.image_dim is not None:
            self.image_context = pipe.image_encoder.encode(self.first_frame[None])

    # -- the model seen by the sampler: model(params, x, sigma, ctx) -> v shaped like x ------------
    def _velocity_model(self, params, x, sigma, ctx, residuals=None, slot_of_layer=None, refresh=None):
        dit = self.pipe.dit
        n = self.config.chunk_frames
        f = x.shape[2]
        inp = jnp.concatenate([x, ctx["y"]], axis=1) if "y" in ctx else x
        sigma = jnp.asarray(sigma, jnp.float32)
        if sigma.ndim == 0:  # renoise mode: one t for every token
            t, ht = jnp.broadcast_to(sigma * 1000.0, (x.shape[0],)), None
        else:  # clean mode: per-position sigma, 0 on history; the chunk's sigma is its last frame's
            t = jnp.broadcast_to(sigma.reshape(sigma.shape[0], -1)[:, -1] * 1000.0, (x.shape[0],))
            ht = 0.0
        kw = dict(chunk=None if n == f else n, history_timestep=ht if n != f else None, runtime=dit.runtime)
        with sharding.use_mesh(dit.mesh):
            model = nnx.merge(dit.graphdef, params)
            if residuals is None:
                v = model(inp, t, ctx["text"], ctx.get("image"), **kw)
            else:
                v, residuals = model.forward_cached(inp, t, ctx["text"], ctx.get("image"), residuals=residuals,
                                                    slots=slot_of_layer, refresh=refresh, **kw)
        if n != f:
            pad = jnp.zeros(x.shape[:2] + (f - n,) + x.shape[3:], v.dtype)
            v = jnp.concatenate([pad, v], axis=2)
        v = v.astype(x.dtype)
        return v if residuals is None else (v, residuals)

    def cache_blocks(self) -> tuple[int, ...]:
        c = self.config
        if c.cache_blocks is not None:
            return tuple(c.cache_blocks)
        if "cache_blocks" in self.pipe.defaults:
            return tuple(self.pipe.defaults["cache_blocks"])
        n = self.pipe.dit.config.num_layers
        return tuple(range(n // 4, n // 4 + n // 2))

    def _sample_cached(self, params, noise, ctx, uctx, frozen, slot_of_layer, residuals):
        c = self.config
        return blockcache.sample_euler(self._velocity_model, params, noise, ctx, uctx, sigmas=c.sampler.sigmas,
                                       cfg_scale=c.sampler.cfg_scale, refresh=c.block_cache,
                                       slot_of_layer=slot_of_layer, residuals=residuals, frozen=frozen,
                                       on_step=self._on_step)

    def _conditioning_channels(self, hist_frames: int, total: int, h: int, w: int):
        z = self.pipe.z_dim
        mask = (jnp.arange(total) < hist_frames).astype(jnp.float32)
        mask = jnp.broadcast_to(mask[None, None, :, None, None], (1, 4, total, h, w))
        latents = jnp.zeros((1, z, total, h, w), jnp.float32)
        if hist_frames:
            latents = latents.at[:, :, :hist_frames].set(self.history)
        return jnp.concatenate([mask, latents], axis=1)

    def prompt(self, action: camera.Action) -> str:
        return camera.prompt(action, style=self.config.prompt_style, caption=self.config.caption or None)

    def step(self, action: camera.Action | str) -> tuple[np.ndarray, dict]:
        """Generate the next chunk for ``action``; returns its new video frames (T, H, W, 3) uint8 and a record."""
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
        hist = 0 if self.history is None else self.history.shape[2]
        if c.max_history is not None and hist > c.max_history:
            self.history = self.history[:, :, hist - c.max_history:]
            hist = c.max_history
        total = hist + c.chunk_frames
        k_chunk = jax.random.fold_in(self.key, idx)
        k_noise, k_hist, k_sde = jax.random.split(k_chunk, 3)
        noise = jax.random.normal(k_noise, (1, z, total, h, w), jnp.float32)
        frozen = None
        if hist:
            mask = history_mask(noise.shape, hist)
            clean = jnp.zeros_like(noise).at[:, :, :hist].set(self.history)
            if c.history_mode == "renoise":
                frozen = history_renoised(mask, clean, jax.random.normal(k_hist, noise.shape, jnp.float32))
            else:
                frozen = history_clean(mask, clean)
        ctx = {"text": cond_text}
        uctx = {"text": self.uncond_text}
        if self.image_context is not None:
            ctx["image"] = uctx["image"] = self.image_context
        if pipe.conditioned:
            ctx["y"] = uctx["y"] = self._conditioning_channels(hist, total, h, w)
        key = k_sde if c.sampler.stochastic else None
        t1 = time.perf_counter()
        if c.block_cache:
            blocks = self.cache_blocks()
            slot_of_layer = blockcache.slots(pipe.dit.config.num_layers, blocks)
            tokens = pipe.dit.model.num_tokens(total, h, w, c.chunk_frames)
            batch = 2 if c.sampler.cfg_scale != 1.0 else 1
            residuals = jnp.zeros((max(len(blocks), 1), batch, tokens, pipe.dit.config.dim), jnp.bfloat16)
            out = self._cached(pipe.dit.params, noise, ctx, uctx, frozen, slot_of_layer, residuals)
        else:
            out = self.sampler(pipe.dit.params, noise, ctx, uctx if c.sampler.cfg_scale != 1.0 else None,
                               key=key, frozen=frozen)
        new = jax.block_until_ready(out[:, :, hist:])
        t_sample = time.perf_counter() - t1
        self.history = new if self.history is None else jnp.concatenate([self.history, new], axis=2)
        t2 = time.perf_counter()
        video, self.decode_state = pipe.vae.stream_decode(new, self.decode_state)
        frames = to_uint8(video)
        t_decode = time.perf_counter() - t2
        rec = dict(chunk=idx, action=str(action), prompt=text, seed=c.seed, key_fold=idx, history_frames=hist,
                   new_latent_frames=c.chunk_frames, video_frames=int(frames.shape[0]),
                   timings_s=dict(text=round(t_text, 4), sample=round(t_sample, 4), decode=round(t_decode, 4)),
                   sampler_compiles=self.sampler.traces)
        self.records.append(rec)
        return frames, rec


# ---------------------------------------------------------------------------------------------
# the tiny self-contained pipeline (tests, CPU demos, the explorer's default until a trained one ships)


def tiny_components(seed: int = 0):
    """Random tiny DiT (Yume I2V layout), Wan 2.1 VAE, umT5 (ByT5 tokenizer) and CLIP encoders."""
    from yume_jax.presets import dit as get
    from yume_jax.encoders import ImageEncoder, TextEncoder
    from yume_jax.presets import encoder as enc_get
    from yume_jax.models.loader import build
    from yume_jax.presets import VAE as VAE_PRESETS
    from yume_jax.vae.params import init_params

    te_cfg, ie_cfg = enc_get("tiny-umt5"), enc_get("tiny-clip")
    dit = build(get("tiny-yume", text_dim=te_cfg.dim, image_dim=ie_cfg.dim), seed=seed)
    vae_cfg = VAE_PRESETS["tiny-2.1"]
    return dict(dit=dit, vae=(vae_cfg, init_params(vae_cfg, seed)),
                text_encoder=TextEncoder.random(te_cfg, seed=seed),
                image_encoder=ImageEncoder.random(ie_cfg, seed=seed))


def save_tiny_pipeline(path, seed: int = 0, defaults: dict | None = None) -> Path:
    """Write a tiny random pipeline directory (dit/, vae/, text_encoder/, image_encoder/, pipeline.json)."""
    from yume_jax.core.checkpoint import save_module, write_checkpoint

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    comps = tiny_components(seed)
    save_module(path / "dit", "dit", comps["dit"].cfg.to_dict(), comps["dit"])
    vae_cfg, vae_params = comps["vae"]
    write_checkpoint(path / "vae", "vae", vae_cfg.to_dict(), vae_params)
    te, ie = comps["text_encoder"], comps["image_encoder"]
    save_module(path / "text_encoder", "t5", te.config.to_dict(), nnx.merge(te.graphdef, te.params))
    save_module(path / "image_encoder", "clip", ie.config.to_dict(), nnx.merge(ie.graphdef, ie.params))
    (path / PIPELINE_JSON).write_text(json.dumps(defaults or {"height": 96, "width": 160, "chunk_frames": 2},
                                                 indent=1))
    return path
