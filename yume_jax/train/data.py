"""Training batches of latents for the trainer, through the Grain pipeline of :mod:`yume_jax.data.pipeline`.

Every source yields dicts with ``latents`` (B, C, F, H, W) float32 (history frames then the chunk),
``num_history`` (B,) history latent frames (equal within a batch), ``text`` (B, text_len, text_dim),
``image`` (B, image_tokens, image_dim) when the model has image cross-attention, and sample ids
(``clip``/``start`` or ``item``) for bookkeeping. Process sharding, shuffling, determinism and the
iterator state (checkpointed with the run) are those of the shared pipeline.

Sources:

- ``sandbox``: sandbox-world clips (either layout) through the raw-clip pipeline, encoded by
  :class:`StandInEncoder`, a cheap deterministic stand-in for the VAE, text and image encoders so the
  whole training path runs on CPU: video -> latents by average pooling (first frame alone, then groups
  of ``stride_t`` frames, ``stride_h`` x ``stride_w`` pixels) and a fixed channel tiling; prompt -> one
  hashed Gaussian vector per word, zero padded (as Wan pads T5 output); image -> pooled-colour tokens
  of the first frame. The real latent dataset and VAE replace it when they exist; presets of real models
  (``yume14b-540p``) refuse the stand-in unless ``--data.source=sandbox`` asks for it (configs/train.py).
- ``latents``: the latent dataset of :mod:`yume_jax.data.latents` (real VAE latents and umT5 features,
  written by ``python -m train.build_latents``). Models with image cross-attention (Wan/Yume I2V 14B)
  need a dataset built with ``--image-encoder`` (CLIP features of each sample's first frame).
- ``synthetic``: Gaussian latents of one fixed shape (tests, benchmarks).
"""
from __future__ import annotations

import dataclasses
import math
import re
import zlib
from functools import lru_cache
from pathlib import Path

import grain
import numpy as np

from yume_jax.data import pipeline as pl

_WORD = re.compile(r"\w+|[^\w\s]")


class StandInEncoder:
    """Deterministic stand-ins for the Wan VAE (latents), umT5 (text) and CLIP (image) features."""

    def __init__(self, latent_channels: int = 16, stride: tuple[int, int, int] = (4, 8, 8), text_dim: int = 4096,
                 text_len: int = 512, image_dim: int | None = 1280, image_tokens: int = 257):
        self.z, self.stride = latent_channels, tuple(stride)
        self.text_dim, self.text_len = text_dim, text_len
        self.image_dim, self.image_tokens = image_dim, image_tokens
        g = math.isqrt(image_tokens - 1)
        if g * g != image_tokens - 1:
            raise ValueError(f"image_tokens must be 1 + a square (CLIP: 257 = 1 + 16^2), got {image_tokens}")
        self.grid = g
        rng = np.random.default_rng(20250723)
        # channel tiling: latent channel i copies RGB channel i % 3 with a fixed gain and sign
        self.mix = np.zeros((latent_channels, 3), np.float32)
        gains = rng.uniform(0.5, 1.5, latent_channels) * rng.choice([-1.0, 1.0], latent_channels)
        self.mix[np.arange(latent_channels), np.arange(latent_channels) % 3] = gains
        if image_dim is not None:
            self.img_proj = rng.standard_normal((3, image_dim)).astype(np.float32)
            self.img_pos = 0.1 * rng.standard_normal((image_tokens, image_dim)).astype(np.float32)

    def video(self, v: np.ndarray) -> np.ndarray:
        """(B, 3, T, H, W) in [-1, 1], T = 1 + stride_t * n -> (B, C, 1 + n, H / stride_h, W / stride_w)."""
        b, c, t, h, w = v.shape
        st, sh, sw = self.stride
        if (t - 1) % st or h % sh or w % sw:
            raise ValueError(f"video (T, H, W) = {(t, h, w)} needs T = 1 + {st}n and H, W multiples of {sh}, {sw}")
        first = v[:, :, :1]
        rest = v[:, :, 1:].reshape(b, c, (t - 1) // st, st, h, w).mean(axis=3)
        x = np.concatenate([first, rest], axis=2)
        x = x.reshape(b, c, x.shape[2], h // sh, sh, w // sw, sw).mean(axis=(4, 6))
        return np.einsum("zc,bcfhw->bzfhw", self.mix, x).astype(np.float32)

    def text(self, prompts) -> np.ndarray:
        out = np.zeros((len(prompts), self.text_len, self.text_dim), np.float32)
        for i, p in enumerate(prompts):
            for j, word in enumerate(_WORD.findall(str(p))[: self.text_len]):
                out[i, j] = _word_vector(word, self.text_dim)
        return out

    def image(self, frames: np.ndarray) -> np.ndarray:
        """(B, 3, H, W) -> (B, image_tokens, image_dim): [mean colour, g x g pooled colours] projected."""
        b, c, h, w = frames.shape
        g = self.grid
        ys, xs = np.linspace(0, h, g + 1).astype(int), np.linspace(0, w, g + 1).astype(int)
        cells = np.stack([frames[:, :, ys[i]:max(ys[i + 1], ys[i] + 1), xs[j]:max(xs[j + 1], xs[j] + 1)]
                          .mean(axis=(2, 3)) for i in range(g) for j in range(g)], axis=1)  # (B, g*g, 3)
        tok = np.concatenate([frames.mean(axis=(2, 3))[:, None], cells], axis=1)
        return (tok @ self.img_proj + self.img_pos).astype(np.float32)


@lru_cache(maxsize=65536)
def _word_vector(word: str, dim: int) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(word.encode())).standard_normal(dim).astype(np.float32)


class EncodeBatch:
    """Grain map: a collated raw-clip batch -> a latent batch (see the module docstring)."""

    def __init__(self, encoder: StandInEncoder, with_image: bool):
        self.enc, self.with_image = encoder, with_image

    def __call__(self, raw: dict) -> dict:
        v = raw["video"]
        st = self.enc.stride[0]
        h = int(raw["num_history"][0])
        out = {"latents": self.enc.video(v), "num_history": (raw["num_history"] // st).astype(np.int32),
               "text": self.enc.text(raw["prompt"]), "clip": raw["clip"], "start": raw["start"], "i2v": raw["i2v"]}
        if h % st:
            raise ValueError(f"history of {h} frames is not a multiple of the VAE stride {st}")
        if self.with_image:
            out["image"] = self.enc.image(v[:, :, 0])
        return out


class SyntheticSample:
    """Grain random_map: item index + rng -> one sample of Gaussian latents and features."""

    def __init__(self, shape: tuple[int, int, int, int], num_history: int, text: tuple[int, int],
                 image: tuple[int, int] | None):
        self.shape, self.nh, self.text_shape, self.image_shape = shape, num_history, text, image

    def __call__(self, index, rng: np.random.Generator) -> dict:
        out = {"latents": rng.standard_normal(self.shape, dtype=np.float32),
               "text": rng.standard_normal(self.text_shape, dtype=np.float32),
               "num_history": np.int32(self.nh), "item": np.int64(index)}
        if self.image_shape is not None:
            out["image"] = rng.standard_normal(self.image_shape, dtype=np.float32)
        return out


class LatentBatch:
    """Grain map: a latent-dataset batch -> the trainer's keys (``image`` only for image cross-attention)."""

    def __init__(self, with_image: bool = False):
        self.with_image = with_image

    def __call__(self, b: dict) -> dict:
        out = {"latents": np.asarray(b["latents"], np.float32), "num_history": b["num_history_latents"],
               "text": np.asarray(b["text"], np.float32), "item": b["sample_id"], "i2v": b["i2v"]}
        if self.with_image:
            out["image"] = np.asarray(b["image"], np.float32)
        if "gray" in b:  # the I2V channels' continuation (yume_jax/data/latents.py)
            out["gray"] = np.asarray(b["gray"], np.float32)
        return out


SYNTHETIC_ITEMS = 1 << 30


@dataclasses.dataclass(frozen=True)
class Shapes:
    """What the model will see, known before anything is compiled."""

    chunk: int  # latent frames of the current chunk
    latent_hw: tuple[int, int]
    channels: int
    text_len: int
    text_dim: int
    image_tokens: int  # 0: no image features


def describe(d, raw: pl.RawConfig, dit, path: Path | None) -> Shapes:
    """Shapes of the batches of data section ``d`` (raw-clip config ``raw``) for model ``dit``; raises
    ValueError when they do not fit the model."""
    st, sh, sw = d.vae_stride
    if d.source != "latents":
        return Shapes((raw.chunk_frames - 1) // st + 1, (raw.height // sh, raw.width // sw), d.latent_channels,
                      d.text_len, dit.text_dim, d.image_tokens if dit.image_dim is not None else 0)
    from yume_jax.data import latents
    if path is None or not Path(path).is_dir():
        raise ValueError(f"--data.path={path} is not a latent dataset directory (python -m train.build_latents "
                         "writes OUT/<name>/<version>)")
    try:
        info = latents.build_info(path)
        ex = latents.open_source(path)[0]
        ex["latents"], ex["text"]
    except Exception as e:  # noqa: BLE001 - TFDS / ArrayRecord / JSON errors of a damaged dataset
        msg = " ".join(str(e).split())[:240] or type(e).__name__
        raise ValueError(f"--data.path={path} is not a readable latent dataset ({type(e).__name__}: {msg}); "
                         "rebuild it with python -m train.build_latents") from None
    z, _, h, w = ex["latents"].shape
    text_dim, text_len = ex["text"].shape[-1], int(ex["text_len"])
    chunk = (info["config"]["chunk_frames"] - 1) // st + 1
    image_tokens = 0
    if dit.image_dim is not None:
        if "image" not in ex:
            raise ValueError(f"the model has image cross-attention but the latent dataset {path} holds no "
                             "image features; rebuild it with python -m train.build_latents --image-encoder CLIP, "
                             "or use a model without image_dim")
        image_tokens, image_dim = ex["image"].shape
        if image_dim != dit.image_dim:
            raise ValueError(f"the latent dataset's image features have {image_dim} dims; the model takes "
                             f"{dit.image_dim}")
    if z != dit.out_channels:
        raise ValueError(f"the latent dataset has {z} latent channels; the model predicts {dit.out_channels}")
    if text_dim != dit.text_dim:
        raise ValueError(f"the latent dataset's text features have {text_dim} dims; the model takes {dit.text_dim}")
    pt, ph, pw = dit.patch_size
    if h % ph or w % pw:
        raise ValueError(f"latent size {h}x{w} is not a multiple of the patch {dit.patch_size}")
    return Shapes(chunk, (h, w), z, text_len, text_dim, image_tokens)


def ensure_world(path: Path, d, raw: pl.RawConfig) -> Path:
    """Render ``d.generate`` sandbox videos (of ``raw``'s size) into ``path`` when it holds no clips yet."""
    from yume_jax.data import world
    path = Path(path)
    if path.is_dir() and any(path.iterdir()):
        return path
    if d.generate <= 0:
        raise ValueError(f"--data.path={path} holds no clips; render some with python -m yume_jax.data.world "
                         "or set --data.generate=N")
    wcfg = world.PRESETS[d.world]
    wcfg = wcfg.replace(height=raw.height, width=raw.width)
    tmp = path.with_name(path.name + ".partial")
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    world.write_dataset(tmp, d.generate, d.seed, d.layout or "yume", cfg=wcfg, num_frames=d.generate_frames,
                        min_clip_frames=raw.chunk_frames + 3)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def dataset(d, raw: pl.RawConfig, dit, batch_size: int, shard_index: int, shard_count: int,
            path: Path | None = None) -> grain.IterDataset:
    """The batches of this process (``batch_size`` = its share of one optimizer step) for data section
    ``d`` (``configs.train.DataConfig``), raw-clip config ``raw`` and model ``dit``."""
    from yume_jax.data import sekai
    loader = pl.LoaderConfig(seed=d.seed, batch_size=batch_size, num_workers=d.num_workers,
                             max_skip_fraction=getattr(d, "max_skip_fraction", 0.5),
                             min_attempts=getattr(d, "min_attempts", 32))
    image = (d.image_tokens, dit.image_dim) if dit.image_dim is not None else None
    if d.source == "synthetic":
        st, sh, sw = d.vae_stride
        chunk = (raw.chunk_frames - 1) // st + 1
        shape = (d.latent_channels, d.synthetic_history + chunk, raw.height // sh, raw.width // sw)
        fn = SyntheticSample(shape, d.synthetic_history, (d.text_len, dit.text_dim), image)
        return pl.build(SYNTHETIC_ITEMS, fn, loader, shard_index, shard_count)
    if d.source == "latents":
        from yume_jax.data import latents
        return latents.latent_dataset(path, loader, raw.speed_prob, shard_index, shard_count).map(
            LatentBatch(image is not None))
    if d.source != "sandbox":
        raise ValueError(f"unknown data source {d.source!r}")
    data = sekai.read(path, d.layout)
    if not data.clips:
        raise ValueError(f"no usable clips in {path}: {data.report()}")
    enc = StandInEncoder(d.latent_channels, d.vae_stride, dit.text_dim, d.text_len, dit.image_dim, d.image_tokens)
    raw_ds = pl.raw_dataset(data, raw, loader, shard_index, shard_count)
    return raw_ds.map(EncodeBatch(enc, image is not None))


def history_bucket(num_history: int, buckets: tuple[int, ...]) -> int:
    """History latent frames to keep: the largest bucket <= num_history (0 if none); all if no buckets."""
    if not buckets:
        return num_history
    return max((b for b in buckets if b <= num_history), default=0)


def trim_history(batch: dict, keep: int) -> dict:
    """Drop the oldest history latent frames so ``keep`` remain (the chunk stays at the end)."""
    nh = int(batch["num_history"][0])
    if keep > nh:
        raise ValueError(f"cannot keep {keep} history frames of {nh}")
    out = dict(batch)
    out["latents"] = batch["latents"][:, :, nh - keep:]
    out["num_history"] = np.full_like(batch["num_history"], keep)
    return out
