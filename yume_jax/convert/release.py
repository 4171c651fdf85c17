"""An official Yume release directory -> a yume_jax pipeline directory (spec/yume.md "The public sampler's
pipeline": official release layouts; "Models and checkpoints").

    python -m yume_jax.convert --pipeline RELEASE_DIR OUT_DIR

Layouts recognised (:func:`detect`):

- ``yume-i2v-540p`` (Yume-I2V-540P, Wan 2.1 I2V files): ``Yume-Dit/`` (the DiT, original Wan names, one
  safetensors file or shards with an index.json), ``Wan2.1_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``,
  ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` and the tokenizer folder ``google/umt5-xxl/``.
- ``yume-5b-720p`` (Yume-5B-720P, the Wan 2.2 TI2V 5B layout that the public ``wan23.Yume`` loads):
  ``diffusion_pytorch_model.safetensors`` (or shards with an index.json) and ``config.json`` at the top
  (or in ``Yume-Dit/``), ``Wan2.2_VAE.pth``, ``models_t5_umt5-xxl-enc-bf16.pth``, ``google/umt5-xxl/``;
  no CLIP.

The output holds ``dit/``, ``vae/``, ``text_encoder/`` (with ``tokenizer/`` copied from the release's
tokenizer folder), ``image_encoder/`` for I2V, and ``pipeline.json`` with the release's sampling defaults
(:data:`DEFAULTS`: size, new latent frames per chunk, steps, CFG, history mode). Each part goes through
:func:`yume_jax.convert.driver.convert`; the directory appears atomically (built under a temporary name).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from yume_jax.convert.driver import convert
from yume_jax.core.checkpoint import atomic_dir, atomic_write_text, check_replaceable
from yume_jax.core.tensors import JAX_META, ConversionError

DIT_DIR = "Yume-Dit"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
TOKENIZER_DIR = "google/umt5-xxl"
VAE_FILES = {"yume-i2v-540p": "Wan2.1_VAE.pth", "yume-5b-720p": "Wan2.2_VAE.pth"}

# pipeline.json defaults of each release (spec/yume.md "Sampling" and "The public sampler's pipeline":
# 544x960, 8 new latents per chunk, 50 Euler steps, CFG 5, re-noised history for Yume 1.0 14B; the public
# 5B script: 704x1280, 8 new latents, 4 Euler steps on the conditional prediction only, clean history)
DEFAULTS = {
    "yume-i2v-540p": {"height": 544, "width": 960, "chunk_frames": 8, "steps": 50, "cfg": 5.0,
                      "history_mode": "renoise"},
    "yume-5b-720p": {"height": 704, "width": 1280, "chunk_frames": 8, "steps": 4, "cfg": 1.0,
                     "history_mode": "clean"},
}


@dataclass(frozen=True)
class Release:
    """The files of one release directory."""

    kind: str  # a key of DEFAULTS
    dit: Path  # a safetensors file or a directory (shards + index.json, or one file + config.json)
    vae: Path
    text_encoder: Path
    tokenizer: Path | None
    image_encoder: Path | None


def _dit_source(root: Path) -> Path | None:
    for d in (root / DIT_DIR, root):
        if d.is_dir() and (any(d.glob("*.safetensors.index.json")) or any(d.glob("*.safetensors"))):
            return d
    return None


def detect(root) -> Release:
    """The release layout of ``root``; ConversionError naming what is missing."""
    root = Path(root)
    if not root.is_dir():
        raise ConversionError("not a release directory", file=root)
    kinds = [k for k, f in VAE_FILES.items() if (root / f).is_file()]
    if len(kinds) != 1:
        raise ConversionError(f"not a Yume release directory: expected exactly one of {sorted(VAE_FILES.values())}",
                              file=root)
    kind = kinds[0]
    dit = _dit_source(root)
    if dit is None:
        raise ConversionError(f"no DiT: expected {DIT_DIR}/ or diffusion_pytorch_model*.safetensors", file=root)
    if not (root / T5_FILE).is_file():
        raise ConversionError(f"missing the text encoder {T5_FILE}", file=root)
    clip = root / CLIP_FILE
    if kind == "yume-i2v-540p" and not clip.is_file():
        raise ConversionError(f"missing the image encoder {CLIP_FILE} (Yume-I2V-540P is image-to-video)", file=root)
    tok = root / TOKENIZER_DIR
    return Release(kind, dit, root / VAE_FILES[kind], root / T5_FILE, tok if tok.is_dir() else None,
                   clip if clip.is_file() else None)


def _is_release_pipeline(out: Path) -> bool:
    """A pipeline directory :func:`build_pipeline` wrote: its pipeline.json names the release."""
    try:
        meta = json.loads((out / "pipeline.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "release" in meta


def build_pipeline(release_dir, out_dir, *, dtype: str | None = None, num_heads: int | None = None,
                   force: bool = False, progress: bool = True) -> Path:
    """Convert the release at ``release_dir`` into the pipeline directory ``out_dir`` (see the module doc).

    ``num_heads``: DiT attention heads when the release has no config.json saying so (default dim / 128,
    right for both releases). The text encoder uses the umT5 tokenizer when the release has its folder."""
    rel = detect(release_dir)
    out = Path(out_dir)
    if out.exists():
        if not force:
            raise ConversionError("destination exists (pass --force to replace it)", file=out)
        check_replaceable(out, [release_dir], _is_release_pipeline,
                          "pipeline directory built from a release (pipeline.json naming one)")
    with atomic_dir(out) as tmp:
        opts = {"num_heads": num_heads} if num_heads is not None else {}
        convert(rel.dit, tmp / "dit", family="dit", dtype=dtype, progress=progress, **opts)
        convert(rel.vae, tmp / "vae", family="vae", dtype=dtype, progress=progress)
        t5_opts = {"tokenizer": "umt5"} if rel.tokenizer is not None else {}
        convert(rel.text_encoder, tmp / "text_encoder", family="t5", dtype=dtype, progress=progress, **t5_opts)
        if rel.tokenizer is not None:
            shutil.copytree(rel.tokenizer, tmp / "text_encoder" / "tokenizer")
        dit_cfg = json.loads((tmp / "dit" / JAX_META).read_text())["config"]
        if dit_cfg.get("image_dim") is not None:
            if rel.image_encoder is None:
                raise ConversionError(f"the DiT has image cross-attention but the release has no {CLIP_FILE}",
                                      file=release_dir)
            convert(rel.image_encoder, tmp / "image_encoder", family="clip", dtype=dtype, progress=progress)
        defaults = dict(DEFAULTS[rel.kind], release=rel.kind, source=str(Path(release_dir).resolve()))
        atomic_write_text(tmp / "pipeline.json", json.dumps(defaults, indent=1))
    return out
