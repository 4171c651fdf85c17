"""The latent dataset: raw-clip samples encoded once by the VAE and the text encoder, stored as ArrayRecord
through a TensorFlow Datasets builder (no TensorFlow needed: Tensor / Text / Scalar features only,
spec/sekai.md "Tooling facts"), and read back by a Grain pipeline with the raw pipeline's guarantees.

Each example is one raw sample (:class:`yume_jax.data.pipeline.RawSample`; clip ``i`` gives samples
``i * K .. i * K + K - 1`` with randomness seeded by (seed, sample id)):

- ``latents`` (z, t, h, w): the VAE latents of the whole 4n+1-frame video [history | chunk], encoded
  in one call; ``num_history_latents`` = history frames / 4, so the last (chunk_frames - 1) / 4 + 1
  latent frames are the chunk (as in Yume's training code, which encodes the full video);
- ``text`` / ``text_speed`` (L, D): the text encoder's output for the prompt without / with the speed
  sentence, trailing all-zero rows removed (restored to ``text_len`` rows on read), so the reader can
  draw the speed sentence with p = 0.65 per epoch; ``prompt`` / ``prompt_speed``: the texts;
- ``image`` (N, D), only when built with an image encoder: CLIP features of the sample's LAST history frame
  (the I2V image for an image sample; frame 0 without history), the image cross-attention input of Wan/Yume
  I2V models, as the public sampler computes it (spec/yume.md "The public sampler's pipeline");
- ``gray`` (z, t_chunk, h, w), only when built with ``gray`` (default: with an image encoder): the I2V
  channels' continuation on the chunk's latent frames (:func:`yume_jax.models.conditioning.i2v_channels`),
  the VAE latents of gray frames (0 in [-1, 1]) continuing the conditioning frames' pixels through the
  causal encoder (n = max(history latents, 1) conditioning frames, their 1 + 4 (n - 1) pixel frames kept,
  every later frame gray; :func:`gray_continuation`). Chunk-shaped, so history trimming keeps it valid;
- ``action``, ``i2v``, ``speed`` (3,), ``clip`` (name), ``start``, ``sample_id``.

The I2V variant is drawn at build time (it changes the video the VAE sees). Encoding is resumable:
each finished sample is written atomically to ``OUT/_work/`` and skipped when the build is run again;
the ArrayRecord files are written from that cache at the end (``OUT/<name>/<version>/``, by TFDS into a
temporary directory renamed when complete). A finished dataset is never reported for other settings: a
build into an ``OUT`` whose dataset has another fingerprint is refused (:class:`DataError`), one with the
same fingerprint is reused. One build per ``OUT`` at a time (``OUT/.lock``); leftovers of killed builds
(temporary sample files, TFDS' ``incomplete.*`` directories) are removed by the next build.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import grain
import ml_dtypes
import numpy as np

from yume_jax.core import cli
from yume_jax.data import pipeline as pl
from yume_jax.data import sekai
from yume_jax.data.pipeline import DataError

VERSION = "1.0.0"
DTYPES = ("float32", "bfloat16")  # bfloat16 is stored as its uint16 bit pattern
VideoEncoder = Callable[[np.ndarray], np.ndarray]  # (B, 3, T, H, W) in [-1, 1] -> (B, z, t, h, w)
TextEncoderFn = Callable[[list[str]], np.ndarray]  # texts -> (B, text_len, D), rows past each prompt zero
ImageEncoderFn = Callable[[np.ndarray], np.ndarray]  # (B, 3, H, W) in [-1, 1] -> (B, tokens, D)


@dataclasses.dataclass(frozen=True)
class BuildReport:
    path: Path  # the TFDS dataset directory (OUT/<name>/<version>)
    examples: int
    encoded: int  # samples encoded by this run (the rest came from the resume cache)
    skipped: dict
    problems: list
    reused: bool = False  # the finished dataset was already there with the same fingerprint


def _trim(text: np.ndarray) -> np.ndarray:
    """Drop trailing all-zero rows (Wan pads the context with zeros to text_len)."""
    nz = np.flatnonzero(np.any(text != 0, axis=-1))
    return text[: (nz[-1] + 1) if len(nz) else 0]


def _store(x: np.ndarray, dtype: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x if dtype == "float32" else x.astype(ml_dtypes.bfloat16).view(np.uint16)


def _load(x: np.ndarray) -> np.ndarray:
    return x.view(ml_dtypes.bfloat16).astype(np.float32) if x.dtype == np.uint16 else np.asarray(x, np.float32)


def _fingerprint(data: sekai.Dataset, cfg: pl.RawConfig, samples_per_clip: int, seed: int, dtype: str,
                 encoders: str, image_features: bool, gray: bool) -> dict:
    names = [c.name for c in data.clips]
    return _jsonable({"root": str(Path(data.root).resolve()), "layout": data.layout, "clips": len(names),
            "clip_names_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
            "config": dataclasses.asdict(cfg), "samples_per_clip": samples_per_clip, "seed": seed, "dtype": dtype,
            "encoders": encoders, "image_features": image_features, "gray": gray})


def _jsonable(x):
    return json.loads(json.dumps(x))  # tuples -> lists: compares equal to a fingerprint read back from JSON


def _changed(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if k != "skipped" and old.get(k) != new.get(k))


def _finished(out: Path, name: str, fp: dict) -> BuildReport | None:
    """The report of a finished dataset in ``out`` with fingerprint ``fp``; DataError for one with another
    fingerprint (or unreadable); None when there is none."""
    final = out / name / VERSION
    if not (final / "dataset_info.json").is_file():
        return None
    try:
        old = build_info(final)
        n = len(open_source(final))
    except Exception as e:  # noqa: BLE001 - any reader failure means: not a dataset we can vouch for
        raise DataError(f"{final} holds a latent dataset that cannot be read ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); use another --out or delete it") from None
    diff = _changed(old, fp)
    if diff:
        raise DataError(f"{final} holds a finished build with different settings ({', '.join(diff)}); "
                        "use another --out or delete it")
    return BuildReport(final, n, 0, dict(old.get("skipped", {})), [], reused=True)


def _clean_leftovers(out: Path, name: str, work: Path):
    """Remove what killed builds left: temporary sample files and TFDS' incomplete dataset directories."""
    import shutil
    if work.is_dir():
        for p in work.glob(".*.partial-*"):
            p.unlink(missing_ok=True)
    if (out / name).is_dir():
        for p in (out / name).glob(f"incomplete.*_{VERSION}"):
            shutil.rmtree(p, ignore_errors=True)


def encode_dataset(data: sekai.Dataset, out, video_encoder: VideoEncoder, text_encoder: TextEncoderFn,
                   cfg: pl.RawConfig = pl.RawConfig(), samples_per_clip: int = 1, seed: int = 0,
                   dtype: str = "float32", name: str = "yume_latents", encoders: str = "",
                   keep_cache: bool = False, max_samples: int | None = None, progress: bool = True,
                   image_encoder: ImageEncoderFn | None = None, gray: bool | None = None) -> BuildReport:
    """Encode every sample of ``data`` into an ArrayRecord dataset under ``out`` (see module docstring).

    ``video_encoder`` / ``text_encoder`` are plain callables (``yume_jax.load_vae(p).encode`` and
    ``yume_jax.load_text_encoder(p).encode`` in ``python -m train.build_latents``). ``encoders`` names
    them in the build fingerprint: resuming into a work directory built with other settings is refused.
    ``max_samples`` stops after encoding that many samples in this run (the build stays resumable).
    ``image_encoder`` (``yume_jax.load_image_encoder(p)`` for I2V models) adds each sample's ``image`` features.
    ``gray`` adds the ``gray`` continuation latents of the I2V channels (a second VAE encode per sample);
    default: when an image encoder is given.
    """
    gray = image_encoder is not None if gray is None else bool(gray)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if samples_per_clip < 1:
        raise ValueError(f"samples_per_clip must be >= 1, got {samples_per_clip}")
    if not data.clips:
        raise ValueError(f"no clips in {data.root}")
    out = Path(out)
    with cli.DirLock(out, "latent build"):
        return _encode(data, out, video_encoder, text_encoder, cfg, samples_per_clip, seed, dtype, name, encoders,
                       keep_cache, max_samples, progress, image_encoder, gray)


def _encode(data, out: Path, video_encoder, text_encoder, cfg, samples_per_clip, seed, dtype, name, encoders,
            keep_cache, max_samples, progress, image_encoder, gray) -> BuildReport:
    work = out / "_work"
    fp = _fingerprint(data, cfg, samples_per_clip, seed, dtype, encoders, image_encoder is not None, gray)
    _clean_leftovers(out, name, work)
    done = _finished(out, name, fp)
    if done is not None:
        return done
    work.mkdir(parents=True, exist_ok=True)
    plan = work / "plan.json"
    if plan.exists():
        try:
            old = json.loads(plan.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{plan} is corrupt ({e}); delete {work} to start the build again") from None
        if not isinstance(old, dict) or _changed(old, fp):
            diff = _changed(old, fp) if isinstance(old, dict) else ["(not a JSON object)"]
            raise DataError(f"{work} holds a build with different settings ({', '.join(diff)}); "
                            "use another --out or delete it")
    else:
        _atomic_json(plan, fp)
    fn = pl.RawSample(data.clips, cfg)
    total = len(data.clips) * samples_per_clip
    encoded = 0
    todo = [sid for sid in range(total) if not (work / f"{sid:08d}.npz").exists()
            and not (work / f"{sid:08d}.skip.json").exists()]
    it = todo
    if progress:
        from tqdm import tqdm
        it = tqdm(todo, desc="encode latents", initial=total - len(todo), total=total)
    for sid in it:
        if max_samples is not None and encoded >= max_samples:
            break
        s = fn.make(sid // samples_per_clip, np.random.default_rng([seed, sid]))
        if pl.SKIP in s:
            _atomic_json(work / f"{sid:08d}.skip.json", {"reason": s[pl.SKIP], "error": s.get("error", ""),
                                                          "clip": data.clips[sid // samples_per_clip].name})
            continue
        lat = np.asarray(video_encoder(s["video"][None]))
        if lat.ndim != 5 or lat.shape[0] != 1:
            raise ValueError(f"video encoder returned shape {lat.shape}; expected (1, z, t, h, w)")
        t_chunk = (cfg.chunk_frames - 1) // 4 + 1
        if lat.shape[2] != int(s["num_history"]) // 4 + t_chunk:
            raise ValueError(f"video encoder returned {lat.shape[2]} latent frames for {s['video'].shape[1]} frames; "
                             f"expected {(s['video'].shape[1] - 1) // 4 + 1} (Wan's causal 4x temporal stride)")
        plain, with_speed = fn.prompts(s)
        txt = np.asarray(text_encoder([plain, with_speed]))
        if txt.ndim != 3 or txt.shape[0] != 2:
            raise ValueError(f"text encoder returned shape {txt.shape}; expected (2, text_len, dim)")
        extra = {}
        if gray:
            extra["gray"] = _store(gray_continuation(video_encoder, s["video"], int(s["num_history"]) // 4)[0], dtype)
        if image_encoder is not None:
            img = np.asarray(image_encoder(s["video"][None, :, max(int(s["num_history"]) - 1, 0)]))
            if img.ndim != 3 or img.shape[0] != 1:
                raise ValueError(f"image encoder returned shape {img.shape}; expected (1, tokens, dim)")
            extra["image"] = _store(img[0], dtype)
        _atomic_npz(work / f"{sid:08d}.npz", **extra, latents=_store(lat[0], dtype),
                    num_history_latents=np.int32(int(s["num_history"]) // 4),
                    text=_store(_trim(txt[0]), dtype), text_speed=_store(_trim(txt[1]), dtype),
                    text_len=np.int32(txt.shape[1]), prompt=np.array(plain), prompt_speed=np.array(with_speed),
                    action=s["action"], i2v=s["i2v"], speed=s["speed"], start=s["start"],
                    clip=np.array(data.clips[sid // samples_per_clip].name), sample_id=np.int64(sid))
        encoded += 1
    remaining = [sid for sid in range(total) if not (work / f"{sid:08d}.npz").exists()
                 and not (work / f"{sid:08d}.skip.json").exists()]
    if remaining:
        return BuildReport(out / name / VERSION, 0, encoded, {}, [f"{len(remaining)} samples left to encode"])
    skipped, problems = {}, []
    for p in sorted(work.glob("*.skip.json")):
        try:
            r = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{p} is corrupt ({e}); delete it to encode that sample again") from None
        skipped[r["reason"]] = skipped.get(r["reason"], 0) + 1
        problems.append(f"{r['reason']}: {r['clip']}: {r['error']}")
    done = sorted(work.glob("[0-9]*.npz"))
    if not done:
        raise DataError(f"no sample could be encoded ({skipped}); first problems: {'; '.join(problems[:3])}")
    path = _write_tfds(out, name, done, fp, skipped)
    if not keep_cache:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    return BuildReport(path, len(done), encoded, skipped, problems)


def gray_continuation(video_encoder: VideoEncoder, video: np.ndarray, num_history_latents: int) -> np.ndarray:
    """(1, z, t - num_history_latents, h, w): the chunk's latent frames of ``video_encoder([the conditioning
    frames' 1 + 4 (n - 1) pixel frames, gray frames for the rest])``, n = max(num_history_latents, 1)
    conditioning frames (``video`` (3, T, H, W) in [-1, 1]; spec/yume.md "The public sampler's pipeline").
    Without history the chunk's frame 0 is the conditioning image (the I2V channels do not read it there)."""
    n = max(int(num_history_latents), 1)
    keep = 1 + 4 * (n - 1)
    x = np.asarray(video, np.float32).copy()
    x[:, keep:] = 0.0
    return np.asarray(video_encoder(x[None]))[:, :, int(num_history_latents):]


def _atomic_npz(path: Path, **arrays):
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _atomic_json(path: Path, obj):
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _write_tfds(out: Path, name: str, files: list[Path], fp: dict, skipped: dict) -> Path:
    import tensorflow_datasets as tfds

    with np.load(files[0]) as z:
        dt = z["latents"].dtype
        dim = z["text"].shape[-1] if z["text"].shape[0] else z["text_speed"].shape[-1]
        image = z["image"].shape if "image" in z.files else None
        gray = z["gray"].shape if "gray" in z.files else None
    T = tfds.features.Tensor
    spec = {
        "latents": T(shape=(None, None, None, None), dtype=dt, encoding=tfds.features.Encoding.BYTES),
        "num_history_latents": tfds.features.Scalar(dtype=np.int32),
        "text": T(shape=(None, dim), dtype=dt), "text_speed": T(shape=(None, dim), dtype=dt),
        "text_len": tfds.features.Scalar(dtype=np.int32),
        "prompt": tfds.features.Text(), "prompt_speed": tfds.features.Text(),
        "action": tfds.features.Scalar(dtype=np.int32), "i2v": tfds.features.Scalar(dtype=np.bool_),
        "speed": T(shape=(3,), dtype=np.float64), "start": tfds.features.Scalar(dtype=np.int32),
        "clip": tfds.features.Text(), "sample_id": tfds.features.Scalar(dtype=np.int64),
    }
    if image is not None:
        spec["image"] = T(shape=image, dtype=dt)
    if gray is not None:
        spec["gray"] = T(shape=(None, None, None, None), dtype=dt, encoding=tfds.features.Encoding.BYTES)
    features = tfds.features.FeaturesDict(spec)
    meta = dict(fp, skipped=skipped)

    class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(VERSION)
        code_path = None  # no checksums file next to the code (TFDS would otherwise look for one)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True,
                                         metadata=tfds.core.MetadataDict(build=json.dumps(meta)),
                                         description="Yume training samples as VAE latents and text embeddings")

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for p in files:
                with np.load(p) as z:
                    ex = {k: z[k] for k in z.files}
                for k in ("prompt", "prompt_speed", "clip"):
                    ex[k] = str(ex[k])
                yield int(ex["sample_id"]), ex

    _Builder.name = name
    builder = _Builder(data_dir=str(out), file_format="array_record")
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress to stdout
        builder.download_and_prepare()
    downloads = out / "downloads"  # TFDS creates an empty download tree; nothing is downloaded
    if downloads.is_dir() and not any(p.is_file() for p in downloads.rglob("*")):
        for d in sorted(downloads.rglob("*"), reverse=True):
            d.rmdir()
        downloads.rmdir()
    return Path(builder.data_dir)

# ----------------------------------------------------------------------------------------- reading


def open_source(path):
    """The ArrayRecord data source of a latent dataset directory (OUT/<name>/<version>)."""
    import tensorflow_datasets as tfds
    return tfds.builder_from_directory(str(path)).as_data_source(split="train")


def build_info(path) -> dict:
    """The build fingerprint and skip counts stored with the dataset."""
    import tensorflow_datasets as tfds
    return json.loads(tfds.builder_from_directory(str(path)).info.metadata["build"])


class LatentSample:
    """``random_map`` function for the latent dataset: picks the speed-sentence variant with p = speed_prob."""

    def __init__(self, path, speed_prob: float = 0.65):
        self.path, self.speed_prob = str(path), speed_prob
        self._src = None  # opened lazily (in each worker process)

    def __getstate__(self):
        return {"path": self.path, "speed_prob": self.speed_prob, "_src": None}

    def __call__(self, index, rng: np.random.Generator) -> dict:
        if self._src is None:
            self._src = open_source(self.path)
        try:
            ex = self._src[int(index)]
            for k in ("latents", "text", "text_speed", "text_len", "num_history_latents"):
                ex[k]
        except Exception as e:  # noqa: BLE001 - a record that does not decode is skipped and counted
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return {pl.SKIP: "bad_record", "clip": int(index),
                    "error": f"{self.path}: example {int(index)}: {type(e).__name__}: {msg}"[:300]}
        with_speed = bool(rng.random() < self.speed_prob)
        text = _load(ex["text_speed"] if with_speed else ex["text"])
        n = int(ex["text_len"])
        full = np.zeros((n, text.shape[-1]), np.float32)
        full[: len(text)] = text
        txt = ex["prompt_speed"] if with_speed else ex["prompt"]
        out = {"latents": np.ascontiguousarray(_load(ex["latents"])),
               "num_history_latents": np.int32(ex["num_history_latents"]), "text": full,
               "prompt": txt.decode() if isinstance(txt, bytes) else str(txt), "with_speed": np.bool_(with_speed),
               "action": np.int32(ex["action"]), "i2v": np.bool_(ex["i2v"]), "sample_id": np.int64(ex["sample_id"])}
        if "image" in ex:
            out["image"] = _load(ex["image"])
        if "gray" in ex:
            out["gray"] = np.ascontiguousarray(_load(ex["gray"]))
        return out


def _collate_latents(items):
    return pl.collate(items, video_key="latents", history_key="num_history_latents")


def latent_dataset(path, loader: pl.LoaderConfig = pl.LoaderConfig(), speed_prob: float = 0.65,
                   shard_index: int | None = None, shard_count: int | None = None) -> grain.IterDataset:
    """Training batches from a latent dataset: the raw pipeline's shards, shuffling, state and prefetch.

    Batch keys: ``latents`` (B, z, t, h, w) float32, ``num_history_latents``, ``text`` (B, text_len, D),
    ``image`` (B, tokens, D) when built with an image encoder, ``gray`` (B, z, chunk, h, w) when built with
    gray continuations, ``prompt``, ``with_speed``, ``action``, ``i2v``,
    ``sample_id``."""
    n = len(open_source(path))
    return pl.build(n, LatentSample(path, speed_prob), loader, shard_index, shard_count, collate_fn=_collate_latents)


def stand_in_encoders(z_dim: int = 16, text_dim: int = 32, text_len: int = 512,
                      spatial: int = 8) -> tuple[VideoEncoder, TextEncoderFn]:
    """Deterministic stand-ins with the real interfaces (no weights): the video 'encoder' average-pools
    Wan's causal latent grid (first frame alone, then groups of 4 frames; ``spatial`` x ``spatial``
    pixels) and mixes the 3 channels into ``z_dim`` with a fixed matrix; the text 'encoder' embeds UTF-8
    bytes with a fixed table and zero-pads to ``text_len`` rows. For tests and pipeline benchmarks."""
    mix = np.random.default_rng(1234).normal(size=(z_dim, 3)).astype(np.float32)
    table = np.random.default_rng(4321).normal(size=(256, text_dim)).astype(np.float32)

    def video(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        b, c, t, h, w = x.shape
        if (t - 1) % 4 or h % spatial or w % spatial:
            raise ValueError(f"stand-in VAE needs T = 4n+1 and H, W multiples of {spatial}; got {x.shape}")
        groups = [x[:, :, :1]] + [x[:, :, 1 + 4 * i: 5 + 4 * i] for i in range((t - 1) // 4)]
        pooled = np.stack([g.mean(2) for g in groups], 2)  # (b, c, t', h, w)
        pooled = pooled.reshape(b, c, -1, h // spatial, spatial, w // spatial, spatial).mean((4, 6))
        return np.einsum("zc,bcthw->bzthw", mix, pooled)

    def text(texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), text_len, text_dim), np.float32)
        for i, s in enumerate(texts):
            ids = np.frombuffer(s.encode()[:text_len], np.uint8)
            out[i, : len(ids)] = table[ids] + 0.01 * np.arange(len(ids))[:, None]
        return out

    return video, text
