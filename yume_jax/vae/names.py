"""Key names of the Wan VAE: original Wan (``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth``) <-> diffusers
``AutoencoderKLWan`` <-> yume_jax (spec/wan.md "VAE"; the map of diffusers' convert_wan_to_diffusers.py,
derived here from the module structure so it holds for any depth / width).

Our names are diffusers' with ``weight`` -> ``kernel`` and ``resample.1`` -> ``resample``. Layouts:
Conv3d [out, in, t, h, w] <-> [t, h, w, in, out]; the resample Conv2d [out, in, h, w] <-> [h, w, in, out];
the attention's 1x1 Conv2d [out, in, 1, 1] <-> [in, out]; RMS gammas [C, 1, 1(, 1)] <-> [C].

This is the VAE's own knowledge (``load_vae`` reads a PyTorch checkpoint with it directly); the converter's
``VAEFamily`` (:mod:`yume_jax.convert.vae`) wraps it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from yume_jax.core.plan import Op, Plan, identity
from yume_jax.core.tensors import ConversionError, TensorSource
from yume_jax.vae.config import LATENT_STATS, VAEConfig

RES = {"norm1": ("residual", "0"), "conv1": ("residual", "2"), "norm2": ("residual", "3"),
       "conv2": ("residual", "6"), "conv_shortcut": ("shortcut",)}
LEAF = {"kernel": "weight", "bias": "bias", "gamma": "gamma"}


@dataclass(frozen=True)
class Entry:
    jax: str
    wan: str
    diffusers: str
    kind: str  # conv3d | conv2d | dense | gamma3 | gamma2 | same
    jax_shape: tuple[int, ...]

    def name(self, naming: str) -> str:
        return self.wan if naming == "wan" else self.diffusers

    @property
    def torch_shape(self) -> tuple[int, ...]:
        s = self.jax_shape
        if self.kind == "conv3d":
            return (s[4], s[3], s[0], s[1], s[2])
        if self.kind == "conv2d":
            return (s[3], s[2], s[0], s[1])
        if self.kind == "dense":
            return (s[1], s[0], 1, 1)
        if self.kind == "gamma3":
            return (s[0], 1, 1, 1)
        if self.kind == "gamma2":
            return (s[0], 1, 1)
        return s


def to_jax(kind: str):
    if kind == "conv3d":
        return lambda xs: np.ascontiguousarray(xs[0].transpose(2, 3, 4, 1, 0))
    if kind == "conv2d":
        return lambda xs: np.ascontiguousarray(xs[0].transpose(2, 3, 1, 0))
    if kind == "dense":
        return lambda xs: np.ascontiguousarray(xs[0][:, :, 0, 0].T)
    if kind in ("gamma3", "gamma2"):
        return lambda xs: xs[0].reshape(xs[0].shape[0])
    return identity


def to_torch(kind: str, torch_shape: tuple[int, ...]):
    if kind == "conv3d":
        return lambda xs: np.ascontiguousarray(xs[0].transpose(4, 3, 0, 1, 2))
    if kind == "conv2d":
        return lambda xs: np.ascontiguousarray(xs[0].transpose(3, 2, 0, 1))
    if kind == "dense":
        return lambda xs: np.ascontiguousarray(xs[0].T)[:, :, None, None]
    if kind in ("gamma3", "gamma2"):
        return lambda xs: xs[0].reshape(torch_shape)
    return identity


def _inner(rest: list[str]) -> list[str]:
    """Names inside a block: residual members get Wan's Sequential indices, resample's conv is index 1."""
    if rest and rest[0] in RES:
        return [*RES[rest[0]], *rest[1:]]
    if rest and rest[0] == "resample":
        return ["resample", "1", *rest[1:]]
    return rest


def wan_parts(parts: list[str], cfg: VAEConfig) -> list[str]:
    """Our module path (without the leaf) -> the original Wan module path."""
    if parts[0] == "quant_conv":
        return ["conv1"]
    if parts[0] == "post_quant_conv":
        return ["conv2"]
    side, q = parts[0], parts[1:]
    nrb = cfg.num_res_blocks
    if q[0] == "conv_in":
        return [side, "conv1"]
    if q[0] == "norm_out":
        return [side, "head", "0"]
    if q[0] == "conv_out":
        return [side, "head", "2"]
    if q[0] == "mid_block":
        idx = {("resnets", "0"): "0", ("attentions", "0"): "1", ("resnets", "1"): "2"}[(q[1], q[2])]
        return [side, "middle", idx, *_inner(q[3:])]
    if q[0] == "down_blocks":
        if not cfg.is_residual:  # Wan 2.1: one flat list, same indices as diffusers
            return [side, "downsamples", q[1], *_inner(q[2:])]
        if q[2] == "resnets":
            return [side, "downsamples", q[1], "downsamples", q[3], *_inner(q[4:])]
        return [side, "downsamples", q[1], "downsamples", str(nrb), *_inner(q[3:])]  # downsampler
    if q[0] == "up_blocks":
        i = int(q[1])
        if cfg.is_residual:
            if q[2] == "resnets":
                return [side, "upsamples", q[1], "upsamples", q[3], *_inner(q[4:])]
            return [side, "upsamples", q[1], "upsamples", str(nrb + 1), *_inner(q[3:])]  # upsampler
        base = i * (nrb + 2)  # Wan 2.1: each level is nrb+1 res blocks and one Resample in one flat list
        if q[2] == "resnets":
            return [side, "upsamples", str(base + int(q[3])), *_inner(q[4:])]
        return [side, "upsamples", str(base + nrb + 1), *_inner(q[4:])]  # upsamplers.0
    raise ConversionError(f"internal: no Wan name for {'.'.join(parts)}")


@lru_cache(maxsize=16)
def entries(cfg: VAEConfig) -> tuple[Entry, ...]:
    """Every tensor of a VAE with ``cfg`` (read off the Flax module tree, so it cannot drift from it)."""
    from yume_jax.vae.params import abstract_params

    out = []
    for path, shape in abstract_params(cfg).items():
        parts = path.split(".")
        leaf, mod = parts[-1], parts[:-1]
        if leaf == "kernel":
            kind = {5: "conv3d", 4: "conv2d", 2: "dense"}[len(shape)]
        elif leaf == "gamma":
            kind = "gamma2" if mod[-1] == "norm" else "gamma3"  # the attention norm is an 'images' RMS_norm
        else:
            kind = "same"
        dif = ".".join([*mod[:-1], "resample", "1"] if mod[-1] == "resample" else mod)
        out.append(Entry(path, ".".join([*wan_parts(mod, cfg), LEAF[leaf]]), f"{dif}.{LEAF[leaf]}", kind, shape))
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# config inference


def _levels_flat(s: dict, prefix: str, res_key: str) -> list[tuple[list[str], bool]]:
    """Wan 2.1 flat encoder list -> per level: (res block key prefixes, temporal downsample?)."""
    levels, cur, n = [], [], 0
    while True:
        p = f"{prefix}.{n}"
        if f"{p}.{res_key}" in s:
            cur.append(p)
        elif f"{p}.resample.1.weight" in s:
            levels.append((cur, f"{p}.time_conv.weight" in s))
            cur = []
        else:
            break
        n += 1
    levels.append((cur, False))
    return levels


def infer_config(src: TensorSource, naming: str) -> VAEConfig:
    """The architecture from a diffusers config.json when present, else from tensor shapes."""
    if naming == "diffusers" and src.hf_config is not None:
        try:
            return VAEConfig.from_diffusers(src.hf_config)
        except (TypeError, ValueError) as e:
            raise ConversionError(f"config.json: {e}", file=src.path) from None
    s = src.shapes()
    w = naming == "wan"

    def shape(key):
        if key not in s:
            raise ConversionError("missing key (needed to infer the config)", file=src.path, key=key)
        return s[key]

    enc = "encoder.downsamples" if w else "encoder.down_blocks"
    conv1 = "residual.2.weight" if w else "conv1.weight"
    base, in_ch = shape("encoder.conv1.weight" if w else "encoder.conv_in.weight")[:2]
    z = shape("conv2.weight" if w else "post_quant_conv.weight")[0]
    out_ch, dec_top = shape("decoder.head.2.weight" if w else "decoder.conv_out.weight")[:2]
    residual = f"{enc}.0.{'downsamples' if w else 'resnets'}.0.{conv1}" in s
    if residual:
        inner = "downsamples" if w else "resnets"
        n_lvl = len({m.group(1) for k in s if (m := re.match(rf"{re.escape(enc)}\.(\d+)\.", k))})
        nrb = len({m.group(1) for k in s if (m := re.match(rf"{re.escape(enc)}\.0\.{inner}\.(\d+)\.{conv1}", k))})
        firsts = [f"{enc}.{i}.{inner}.0.{conv1}" for i in range(n_lvl)]
        ds = (lambda i: f"{enc}.{i}.downsamples.{nrb}.time_conv.weight") if w else \
             (lambda i: f"{enc}.{i}.downsampler.time_conv.weight")
        temporal = [ds(i) in s for i in range(n_lvl - 1)]
    else:
        levels = _levels_flat(s, enc, conv1)
        n_lvl, nrb = len(levels), len(levels[0][0])
        firsts = [f"{lv[0][0]}.{conv1}" if lv[0] else "" for lv in levels]
        temporal = [t for _, t in levels[:-1]]
    mult = []
    for k in firsts:
        c = shape(k)[0] if k else 0
        if not k or c % base:
            raise ConversionError(f"cannot read the level widths (encoder level {len(mult)})", file=src.path, key=k)
        mult.append(c // base)
    if dec_top % mult[0]:
        raise ConversionError(f"decoder width {dec_top} is not a multiple of {mult[0]}", file=src.path)
    dec = dec_top // mult[0]
    if in_ch not in (3, 12):
        raise ConversionError(f"encoder input has {in_ch} channels; expected 3 (Wan 2.1) or 12 (Wan 2.2, 2x2 patches)",
                              file=src.path)
    patch = 2 if in_ch == 12 else None
    if z not in LATENT_STATS:
        raise ConversionError(f"z_dim {z} has no known latent mean/std (16: Wan 2.1, 48: Wan 2.2)", file=src.path)
    mean, std = LATENT_STATS[z]
    try:
        return VAEConfig(base_dim=base, decoder_base_dim=None if dec == base else dec, z_dim=z, dim_mult=tuple(mult),
                         num_res_blocks=nrb, temporal_downsample=tuple(temporal), is_residual=residual,
                         in_channels=in_ch, out_channels=out_ch, patch_size=patch, latents_mean=mean, latents_std=std,
                         scale_factor_temporal=2 ** sum(temporal), scale_factor_spatial=2 ** (n_lvl - 1) * (patch or 1))
    except ValueError as e:
        raise ConversionError(f"inconsistent VAE checkpoint: {e}", file=src.path) from None


NAMINGS = ("wan", "diffusers")


def detect(src: TensorSource) -> str | None:
    """The naming of ``src`` if it is a Wan VAE checkpoint, else None."""
    keys = set(src.keys())
    if "decoder.middle.0.residual.0.gamma" in keys and "encoder.conv1.weight" in keys:
        return "wan"
    if "decoder.mid_block.resnets.0.norm1.gamma" in keys and "post_quant_conv.weight" in keys:
        return "diffusers"
    return None


def plan_to_jax(src: TensorSource, naming: str) -> Plan:
    if naming not in NAMINGS:
        raise ConversionError(f"naming {naming!r} not known for the VAE; use one of {NAMINGS}")
    cfg = infer_config(src, naming)
    ops = [Op(e.jax, (e.name(naming),), e.jax_shape, to_jax(e.kind), (e.torch_shape,)) for e in entries(cfg)]
    return Plan(ops, cfg.to_dict())


def plan_to_torch(src: TensorSource, naming: str) -> Plan:
    try:
        cfg = VAEConfig.from_dict(src.meta["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConversionError(f"bad VAE config in yume_jax.json ({e})", file=src.path) from None
    ops = [Op(e.name(naming), (e.jax,), e.torch_shape, to_torch(e.kind, e.torch_shape), (e.jax_shape,))
           for e in entries(cfg)]
    if naming == "diffusers":
        return Plan(ops, cfg.to_dict(), hf_config=cfg.to_diffusers(),
                    filename="diffusion_pytorch_model.safetensors")
    return Plan(ops, cfg.to_dict(), filename="Wan2.2_VAE.safetensors" if cfg.is_residual
                else "Wan2.1_VAE.safetensors")
