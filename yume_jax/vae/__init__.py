"""The Wan 2.1 / 2.2 video VAE (spec/wan.md "VAE"): ``vae = yume_jax.load_vae(path)``.

``vae.encode(video)`` / ``vae.decode(latents)`` for whole clips; ``vae.stream_encode`` /
``vae.stream_decode`` to continue from a :class:`StreamState` (e.g. an explorer decoding only the
new latent frames of each chunk). See :class:`yume_jax.vae.stream.WanVAE`. Presets: :mod:`yume_jax.presets`.
"""
from __future__ import annotations

import os

from yume_jax.vae.config import VAEConfig  # noqa: F401
from yume_jax.vae.stream import StreamState, Tiling, WanVAE  # noqa: F401


def load_vae(path: str | os.PathLike, dtype: str = "float32", tiling: Tiling | None = None,
             latents_per_step: int = 1) -> WanVAE:
    """A VAE from a converted yume_jax checkpoint, or directly from ``Wan2.x_VAE.pth`` / a diffusers
    ``AutoencoderKLWan`` directory (converted in memory, tensor by tensor)."""
    from yume_jax.core.plan import check_plan
    from yume_jax.core.tensors import ConversionError, open_source
    from yume_jax.vae import names

    src = open_source(path)
    if src.meta is not None:
        fam = src.meta.get("family")
        if fam != "vae":
            raise ConversionError(f"not a VAE checkpoint (family {fam!r})", file=path)
        try:
            cfg = VAEConfig.from_dict(src.meta["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise ConversionError(f"bad VAE config in yume_jax.json ({e})", file=path) from None
        params = {k: src.read(k) for k in src.keys()}
    else:
        naming = names.detect(src)
        if naming is None:
            keys = src.keys()
            raise ConversionError(f"not a Wan VAE checkpoint ({len(keys)} keys, e.g. {keys[:3]})", file=path)
        plan = names.plan_to_jax(src, naming)
        check_plan(src, plan)
        params = {op.out: op.fn([src.read(k) for k in op.ins]) for op in plan.ops}
        cfg = VAEConfig.from_dict(plan.config)
    return WanVAE(cfg, params, dtype=dtype, tiling=tiling, latents_per_step=latents_per_step, source=str(path))


__all__ = ["load_vae", "WanVAE", "StreamState", "Tiling", "VAEConfig"]
