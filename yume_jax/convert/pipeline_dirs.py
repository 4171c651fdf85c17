"""What ``--checkpoint`` may name, resolved to a pipeline directory (dit/, vae/, text_encoder/,
[image_encoder/], pipeline.json; :func:`yume_jax.pipeline.load_pipeline`).

- a pipeline directory: itself;
- an official release directory (Yume-I2V-540P, Yume-5B-720P): converted once by
  :func:`yume_jax.convert.release.build_pipeline` into ``<cache>/<name>-<hash of its path>``;
- a training workdir (``config.json`` + ``checkpoints/``, written by ``python -m train.train``): the latest
  complete checkpoint's EMA parameters (else its parameters) as ``dit/``, plus the VAE and encoders the run
  was trained with. Those are read from the run's config.json: with ``data.source=latents`` the latent
  dataset records the VAE, umT5 and CLIP it was encoded with (``python -m train.build_latents``); runs on
  stand-in encoders (``sandbox``, ``synthetic``) have none, and ``encoders=`` (a pipeline directory) must name
  the ones to use. Written to ``<workdir>/pipeline/step_<N>`` (reused when complete).

Reads the run's config.json as plain JSON (no ``configs`` import: this floor sits below it).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

PIPELINE_JSON = "pipeline.json"


def kind(path) -> str:
    """``pipeline`` | ``release`` | ``workdir`` | ``unknown``."""
    from yume_jax.convert import release
    from yume_jax.core.tensors import ConversionError

    p = Path(path)
    if (p / "dit").is_dir():
        return "pipeline"
    if (p / "config.json").is_file() and (p / "checkpoints").is_dir():
        return "workdir"
    try:
        release.detect(p)
        return "release"
    except ConversionError:
        return "unknown"


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "yume_jax" / "pipelines"


def resolve(path, *, encoders=None, cache=None, step: int | None = None, progress: bool = False) -> Path:
    """The pipeline directory for ``path`` (see the module doc); FileNotFoundError / ValueError otherwise."""
    p = Path(path)
    k = kind(p)
    if k == "pipeline":
        return p
    if k == "release":
        from yume_jax.convert.release import build_pipeline

        from yume_jax.core.tensors import CheckpointError

        out = Path(cache or default_cache()) / f"{p.resolve().name}-{_digest(p.resolve())}"
        if not (out / PIPELINE_JSON).is_file():
            try:
                build_pipeline(p, out, force=True, progress=progress)
            except CheckpointError as e:
                raise ValueError(str(e)) from None
        return out
    if k == "workdir":
        return from_workdir(p, encoders=encoders, step=step)
    raise FileNotFoundError(f"{p}: neither a pipeline directory (dit/, vae/, text_encoder/), an official release "
                            "directory (python -m yume_jax.convert --pipeline) nor a training workdir "
                            "(config.json + checkpoints/)")


def _digest(p: Path) -> str:
    return hashlib.sha256(str(p).encode()).hexdigest()[:12]


def trained_encoders(cfg: dict) -> dict[str, str | None] | None:
    """{"vae", "text_encoder", "image_encoder"} (paths) the run of config ``cfg`` was trained with,
    None for stand-in encoders."""
    d = cfg.get("data", {})
    if d.get("source") == "pool":  # encoded per batch by the frozen components of the pipeline at data.path
        p = Path(d["path"])
        return {"vae": str(p / "vae"), "text_encoder": str(p / "text_encoder"),
                "image_encoder": str(p / "image_encoder") if (p / "image_encoder").is_dir() else None}
    if d.get("source") != "latents":
        return None
    from yume_jax.data import latents

    enc = latents.build_info(d["path"]).get("encoders")
    enc = json.loads(enc) if isinstance(enc, str) else enc
    if not isinstance(enc, dict) or not enc.get("vae") or not enc.get("text_encoder"):
        raise ValueError(f"the latent dataset {d['path']} does not record the encoders it was built with")
    return {"vae": enc["vae"], "text_encoder": enc["text_encoder"], "image_encoder": enc.get("image_encoder")}


def _dit_config(cfg: dict):
    from yume_jax.presets import dit

    over = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["model"].get("dit", {}).items()}
    return dit(cfg["model"]["preset"], **over)


def _place(src, dst: Path, family: str) -> None:
    """A component at ``dst``: a link to a converted checkpoint, else converted from ``src``."""
    from yume_jax.convert.driver import convert
    from yume_jax.core.tensors import JAX_META

    src = Path(src)
    if (src / JAX_META).is_file():
        os.symlink(src.resolve(), dst, target_is_directory=True)
    else:
        convert(src, dst, family=family, progress=False)


def _trained_size(cfg: dict) -> dict:
    """height, width and new latent frames per chunk of the run's samples (the latent dataset's when it
    has one, else the raw-clip overrides in the config)."""
    d = cfg.get("data", {})
    raw = dict(d.get("raw", {}))
    if d.get("source") == "latents":
        from yume_jax.data import latents

        raw = latents.build_info(d["path"])["config"]
    out = {k: raw[k] for k in ("height", "width") if k in raw}
    if "chunk_frames" in raw:
        out["chunk_frames"] = (int(raw["chunk_frames"]) - 1) // int(d.get("vae_stride", [4])[0]) + 1
    return out


def student_defaults(cfg: dict) -> dict:
    """pipeline.json sampler defaults of a distillation run (``task: distill``): the student's Euler steps at the
    exact sigmas it was trained at, without guidance; {} for other runs."""
    if cfg.get("task") != "distill":
        return {}
    from yume_jax.sampling.schedules import explicit_sigmas, shifted_sigmas

    d = cfg.get("distill", {})
    sig = explicit_sigmas(d["sigmas"]) if d.get("sigmas") else shifted_sigmas(d.get("student_steps", 4),
                                                                               d.get("shift", 3.0))
    return {"sampler": "euler", "steps": len(sig) - 1, "sigmas": [float(x) for x in sig], "cfg": 1.0}


def from_workdir(workdir, *, encoders=None, step: int | None = None) -> Path:
    """``<workdir>/pipeline/step_<N>`` from the training run at ``workdir`` (see the module doc)."""
    from yume_jax.core import params as P
    from yume_jax.core.checkpoint import atomic_dir, write_checkpoint
    from yume_jax.train.checkpoint import read_state

    workdir = Path(workdir)
    cfg = json.loads((workdir / "config.json").read_text())
    enc = trained_encoders(cfg)
    if encoders is not None:
        e = Path(encoders)
        if not (e / "vae").is_dir() or not (e / "text_encoder").is_dir():
            raise FileNotFoundError(f"--encoders {e}: not a pipeline directory (vae/, text_encoder/)")
        enc = {"vae": str(e / "vae"), "text_encoder": str(e / "text_encoder"),
               "image_encoder": str(e / "image_encoder") if (e / "image_encoder").is_dir() else None}
    if enc is None:
        raise ValueError(f"{workdir} was trained on stand-in encoders (--data.source={cfg.get('data', {}).get('source')}); "
                         "name a pipeline directory whose VAE and encoders to explore with (--encoders DIR)")
    n, state = read_state(workdir / "checkpoints", step)
    out = workdir / "pipeline" / f"step_{n}"
    if (out / PIPELINE_JSON).is_file() and encoders is None:
        return out
    dcfg = _dit_config(cfg)
    entry = state["student"] if "student" in state else state["dit"]  # a distillation run: its student
    tree = entry["ema"] if entry.get("ema") else entry["params"]
    flat = {k: np.asarray(v) for k, v in P.flatten(tree).items()}
    with atomic_dir(out) as tmp:
        write_checkpoint(tmp / "dit", "dit", dcfg.to_dict(), P.to_checkpoint(flat))
        _place(enc["vae"], tmp / "vae", "vae")
        _place(enc["text_encoder"], tmp / "text_encoder", "t5")
        if dcfg.image_dim is not None:
            if not enc.get("image_encoder"):
                raise ValueError(f"{workdir}: the model has image cross-attention but no image encoder is recorded")
            _place(enc["image_encoder"], tmp / "image_encoder", "clip")
        defaults = {"history_mode": "clean" if cfg.get("objective", {}).get("history") == "clean" else "renoise",
                    "source": str(workdir.resolve()), "step": n, "weights": "ema" if entry.get("ema") else "params"}
        defaults.update(_trained_size(cfg))
        defaults.update(student_defaults(cfg))
        (tmp / PIPELINE_JSON).write_text(json.dumps(defaults, indent=1))
    return out
