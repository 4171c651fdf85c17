"""Tiny self-contained pipelines: random weights, real architectures (tests, CPU demos, the explorer's
default model until a trained one ships).

The only place of the inference side that touches model presets (:mod:`yume_jax.presets`) and checkpoint
writing (:mod:`yume_jax.core.checkpoint`).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import jax
from flax import nnx

from yume_jax.pipeline import PIPELINE_JSON, Pipeline


@contextlib.contextmanager
def quick_init():
    """XLA's optimisations off while tiny random weights are drawn. Each parameter shape is its own small
    program, eagerly compiled: about 100 of them took 18 s optimised and 2 s not (the tests build these
    fixtures many times). The draws are integer hashing plus a multiply-add, so the weights equal the
    optimised ones up to float32 rounding (DiT and VAE bit-identical; encoder weights within 3e-8)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


@quick_init()
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


@quick_init()
def tiny_ti2v_components(seed: int = 0):
    """Random tiny Yume-5B layout (Wan 2.2 TI2V): DiT with 48 input channels = the Wan 2.2 VAE's z (no I2V
    channels, no image cross-attention: an image start is pseudo-history only), Wan 2.2 VAE, umT5."""
    from yume_jax.encoders import TextEncoder
    from yume_jax.models.loader import build
    from yume_jax.models.yume import add_yume_extras
    from yume_jax.presets import VAE as VAE_PRESETS
    from yume_jax.presets import dit as get
    from yume_jax.presets import encoder as enc_get
    from yume_jax.vae.params import init_params

    te_cfg = enc_get("tiny-umt5")
    vae_cfg = VAE_PRESETS["tiny-2.2"]
    dit = add_yume_extras(build(get("tiny-ti2v", text_dim=te_cfg.dim), seed=seed), seed=seed)
    return dict(dit=dit, vae=(vae_cfg, init_params(vae_cfg, seed)), text_encoder=TextEncoder.random(te_cfg, seed=seed))


# pipeline.json of the Yume-5B layout: the public 5B sampler's clean history (t = 0 on it) and 4 Euler steps
TI2V_DEFAULTS = {"height": 32, "width": 64, "chunk_frames": 2, "history_mode": "clean", "steps": 4,
                 "sampler": "euler"}


def save_tiny_pipeline(path, seed: int = 0, defaults: dict | None = None, kind: str = "i2v") -> Path:
    """Write a tiny random pipeline directory (dit/, vae/, text_encoder/, [image_encoder/], pipeline.json):
    ``kind`` "i2v" (Yume-I2V-540P layout: Wan 2.1 VAE, CLIP) or "ti2v" (Yume-5B layout: Wan 2.2 VAE)."""
    from yume_jax.core.checkpoint import save_module, write_checkpoint

    if kind not in ("i2v", "ti2v"):
        raise ValueError(f"kind must be i2v or ti2v, not {kind!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    comps = tiny_components(seed) if kind == "i2v" else tiny_ti2v_components(seed)
    save_module(path / "dit", "dit", comps["dit"].cfg.to_dict(), comps["dit"])
    vae_cfg, vae_params = comps["vae"]
    write_checkpoint(path / "vae", "vae", vae_cfg.to_dict(), vae_params)
    te = comps["text_encoder"]
    save_module(path / "text_encoder", "t5", te.config.to_dict(), nnx.merge(te.graphdef, te.params))
    if "image_encoder" in comps:
        ie = comps["image_encoder"]
        save_module(path / "image_encoder", "clip", ie.config.to_dict(), nnx.merge(ie.graphdef, ie.params))
    if defaults is None:
        defaults = {"height": 96, "width": 160, "chunk_frames": 2} if kind == "i2v" else TI2V_DEFAULTS
    (path / PIPELINE_JSON).write_text(json.dumps(defaults, indent=1))
    return path


def tiny_t2v_pipeline(seed: int = 1) -> Pipeline:
    """An in-memory tiny text-to-video Yume pipeline (no image cross-attention, no I2V channels)."""
    from yume_jax.presets import dit as get
    from yume_jax.encoders import TextEncoder
    from yume_jax.presets import encoder as enc_get
    from yume_jax.models.loader import DiT, build
    from yume_jax.models.yume import add_yume_extras
    from yume_jax.presets import VAE as PRESETS
    from yume_jax.vae import WanVAE
    from yume_jax.vae.params import init_params

    te = TextEncoder.random(enc_get("tiny-umt5"), seed=seed)
    dit = DiT(add_yume_extras(build(get("tiny-t2v", text_dim=te.config.dim), seed=seed)))
    cfg = PRESETS["tiny-2.1"]
    pipe = Pipeline(dit=dit, vae=WanVAE(cfg, init_params(cfg, seed)), text_encoder=te)
    pipe.check()
    return pipe
