"""The Wan 2.1 / 2.2 VAE as Flax NNX modules, one causal chunk at a time (spec/wan.md "VAE").

Module and parameter names mirror diffusers' ``AutoencoderKLWan`` (``encoder.down_blocks.3.conv1``,
``decoder.up_blocks.1.upsamplers.0.time_conv``), so the checkpoint map is a rename plus layout
change. Every call takes and fills a :class:`~yume_jax.vae.layers.Cache`; the chunking itself
(1, 4, 4, ... frames to encode, one latent frame to decode) lives in :mod:`yume_jax.vae.stream`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from yume_jax import sharding
from yume_jax.vae.config import VAEConfig
from yume_jax.vae.layers import (Cache, CausalConv3d, MidBlock, Resample, ResidualBlock, RMSNorm,
                                 avg_down, dup_up)


class ResidualDownBlock(nnx.Module):
    """Wan 2.2: res blocks (+ downsample) plus the parameter-free AvgDown3D shortcut."""

    def __init__(self, cin: int, cout: int, n_res: int, temporal: bool, down: bool, *, rngs: nnx.Rngs):
        self.cout, self.ft, self.fs = cout, 2 if temporal else 1, 2 if down else 1
        self.resnets = nnx.List([ResidualBlock(cin if i == 0 else cout, cout, rngs=rngs) for i in range(n_res)])
        self.downsampler = (Resample(cout, "downsample3d" if temporal else "downsample2d", rngs=rngs)
                            if down else None)

    def __call__(self, x: jax.Array, cache: Cache) -> jax.Array:
        short = avg_down(x, self.cout, self.ft, self.fs)
        for r in self.resnets:
            x = r(x, cache)
        if self.downsampler is not None:
            x = self.downsampler(x, cache)
        return x + short


class UpBlock(nnx.Module):
    """Wan 2.1: n_res + 1 res blocks, then an optional upsample (to half the width)."""

    def __init__(self, cin: int, cout: int, n_res: int, mode: str | None, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(cin if i == 0 else cout, cout, rngs=rngs) for i in range(n_res + 1)])
        self.upsamplers = nnx.List([Resample(cout, mode, cout // 2, rngs=rngs)]) if mode else None

    def __call__(self, x: jax.Array, cache: Cache) -> jax.Array:
        for r in self.resnets:
            x = r(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache)
        return x


class ResidualUpBlock(nnx.Module):
    """Wan 2.2: n_res + 1 res blocks (+ upsample) plus the parameter-free DupUp3D shortcut."""

    def __init__(self, cin: int, cout: int, n_res: int, temporal: bool, up: bool, *, rngs: nnx.Rngs):
        self.cout, self.ft, self.up = cout, 2 if temporal else 1, up
        self.resnets = nnx.List([ResidualBlock(cin if i == 0 else cout, cout, rngs=rngs) for i in range(n_res + 1)])
        self.upsampler = Resample(cout, "upsample3d" if temporal else "upsample2d", cout, rngs=rngs) if up else None

    def __call__(self, x: jax.Array, cache: Cache) -> jax.Array:
        first = cache.first
        short = dup_up(x, self.cout, self.ft, 2, first) if self.up else None
        for r in self.resnets:
            x = r(x, cache)
        if self.upsampler is not None:
            x = self.upsampler(x, cache)
        return x if short is None else x + short


WIDTH = ("batch", None, None, "act_width", None)  # (B, T, H, W, C): the spatial split over "context"


def _split(x: jax.Array) -> jax.Array:
    """Activations split over the mesh's width axis (a no-op without a mesh, replicated where the width does not
    divide): GSPMD partitions each convolution spatially and exchanges the 1-pixel halos between neighbours."""
    return sharding.constrain(x, WIDTH)


class Encoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], rngs=rngs)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            temporal = cfg.temporal_downsample[i] if i != last else False
            if cfg.is_residual:
                blocks.append(ResidualDownBlock(cin, cout, cfg.num_res_blocks, temporal, i != last, rngs=rngs))
                continue
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout, rngs=rngs))
                cin = cout
            if i != last:
                blocks.append(Resample(cout, "downsample3d" if temporal else "downsample2d", rngs=rngs))
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], rngs=rngs)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, rngs=rngs)

    def __call__(self, x: jax.Array, cache: Cache) -> jax.Array:
        x = _split(self.conv_in(_split(x), cache))
        for blk in self.down_blocks:
            x = _split(blk(x, cache))
        x = _split(self.mid_block(x, cache))
        return _split(self.conv_out(jax.nn.silu(self.norm_out(x)), cache))


class Decoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        d = cfg.dec_dim
        dims = [d * m for m in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        last = len(cfg.dim_mult) - 1
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], rngs=rngs)
        self.mid_block = MidBlock(dims[0], rngs=rngs)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            up = i != last
            temporal = cfg.temporal_upsample[i] if up else False
            if cfg.is_residual:
                blocks.append(ResidualUpBlock(cin, cout, cfg.num_res_blocks, temporal, up, rngs=rngs))
            else:  # Wan 2.1: every upsample halves the width, so later levels start at cin // 2
                mode = ("upsample3d" if temporal else "upsample2d") if up else None
                blocks.append(UpBlock(cin // 2 if i > 0 else cin, cout, cfg.num_res_blocks, mode, rngs=rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, rngs=rngs)

    def __call__(self, x: jax.Array, cache: Cache) -> jax.Array:
        x = _split(self.conv_in(_split(x), cache))
        x = _split(self.mid_block(x, cache))
        for blk in self.up_blocks:
            x = _split(blk(x, cache))
        return _split(self.conv_out(jax.nn.silu(self.norm_out(x)), cache))


class WanVAEModel(nnx.Module):
    """Encoder + quant_conv (posterior moments) and post_quant_conv + decoder; channels-last chunks."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.encoder = Encoder(cfg, rngs=rngs)
        self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1), rngs=rngs)
        self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, (1, 1, 1), rngs=rngs)
        self.decoder = Decoder(cfg, rngs=rngs)

    def encode_chunk(self, x: jax.Array, cache: Cache) -> jax.Array:
        """Patchified pixels (B, T, H, W, in_channels) -> posterior mean (B, T', h, w, z) (the 'mode')."""
        h = self.encoder(x, cache)
        z = self.cfg.z_dim
        k = self.quant_conv.kernel[...][0, 0, 0, :, :z]  # only the mean half of the moments is used
        return jnp.einsum("bthwc,co->bthwo", h, k) + self.quant_conv.bias[...][:z]

    def decode_chunk(self, z: jax.Array, cache: Cache) -> jax.Array:
        """Latents (B, t, h, w, z) -> patchified pixels before clamping (B, T, H, W, out_channels)."""
        return self.decoder(self.post_quant_conv(z), cache)
