"""Building blocks of the Wan VAE in channels-last layout (B, T, H, W, C) (spec/wan.md "VAE").

Causality is carried explicitly. A :class:`Cache` holds, in call order, the feature frames each
temporal layer needs from the previous chunk: the last two input frames of every 3x3x3 causal
convolution (zeros before the first chunk, which is exactly Wan's left zero padding of 2 frames),
the last frame before a temporal downsample, and the last two inputs of a temporal upsample.
The first chunk differs only where the reference differs: a temporal resample skips its time
convolution and the decoder's duplicate-upsample shortcut drops its leading frames.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

CACHE_T = 2  # frames a 3x3x3 causal convolution keeps (spec: "2-frame feature cache")


class Cache:
    """The causal state of one chunk step: ``prev`` (None before the first chunk) in, ``next`` out.

    Layers read their slot with :meth:`take` and append their new state with :meth:`put`, both in
    call order, so ``next`` has the same structure as ``prev`` and the chunk step compiles once.
    """

    def __init__(self, prev: tuple | list | None):
        self.prev = None if prev is None else tuple(prev)
        self.next: list[jax.Array] = []

    @property
    def first(self) -> bool:
        return self.prev is None

    def take(self) -> jax.Array | None:
        if self.prev is None:
            return None
        if len(self.next) >= len(self.prev):
            raise ValueError(f"cache has {len(self.prev)} entries; the model needs more (wrong cache?)")
        return self.prev[len(self.next)]

    def put(self, x: jax.Array) -> None:
        self.next.append(x)


def _normal(rngs: nnx.Rngs, shape, fan_in: int):
    return jax.random.normal(rngs.params(), shape, jnp.float32) * fan_in ** -0.5


TAPS_ENV = "YUME_JAX_VAE_CONV_TAPS"  # "1": causal convolutions as 2D taps (opt-in; see temporal_taps_conv)


def temporal_taps_conv(x: jax.Array, k: jax.Array, stride, spatial_padding) -> jax.Array:
    """A 3D convolution (no temporal padding) as the sum over its temporal taps of 2D convolutions of the frames
    each tap reads: y[t] = sum_d conv2d(x[st*t + d], k[d]). The same sum in another order. Opt-in
    (``YUME_JAX_VAE_CONV_TAPS=1``, read when a program is traced): on XLA's CPU backend the 3D convolution is up
    to 5x slower than this at the VAE's full-resolution widths (16 channels at 96x160: 52 ms against 9.5 ms;
    ``bench/vae_stream_widths.py`` for the whole decode), but three convolutions per layer compile slower, which
    made the tiny-VAE tests (compile-bound) slower; not yet the default (docs/default_model.md)."""
    kt = k.shape[0]
    st = stride[0]
    b, t = x.shape[:2]
    t_out = (t - kt) // st + 1
    y = None
    for d in range(kt):
        frames = x[:, d:d + st * (t_out - 1) + 1:st].reshape(b * t_out, *x.shape[2:])
        yd = jax.lax.conv_general_dilated(frames, k[d], tuple(stride[1:]), spatial_padding,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = yd if y is None else y + yd
    return y.reshape(b, t_out, *y.shape[1:])


class CausalConv3d(nnx.Module):
    """Wan's CausalConv3d: temporal padding 2*p on the left only (here: the cached frames), spatial 'same'."""

    def __init__(self, cin: int, cout: int, kernel=(3, 3, 3), stride=(1, 1, 1), *, rngs: nnx.Rngs):
        self.kernel_size, self.stride = tuple(kernel), tuple(stride)
        self.kernel = nnx.Param(_normal(rngs, (*self.kernel_size, cin, cout), cin * kernel[0] * kernel[1] * kernel[2]))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

    def conv(self, x: jax.Array) -> jax.Array:
        """The convolution alone (no temporal padding): T_out = (T - kt) // st + 1."""
        k = self.kernel[...]
        if self.kernel_size == (1, 1, 1):
            return jnp.einsum("bthwc,co->bthwo", x, k[0, 0, 0]) + self.bias[...]
        kh, kw = self.kernel_size[1:]
        spatial = ((kh // 2, kh // 2), (kw // 2, kw // 2))
        if self.kernel_size[0] > 1 and os.environ.get(TAPS_ENV, "0") == "1":
            return temporal_taps_conv(x, k, self.stride, spatial) + self.bias[...]
        y = jax.lax.conv_general_dilated(x, k, self.stride, ((0, 0), *spatial),
                                         dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        return y + self.bias[...]

    def __call__(self, x: jax.Array, cache: Cache | None = None) -> jax.Array:
        pad = self.kernel_size[0] - 1
        if pad:
            prev = cache.take() if cache is not None else None
            if prev is None:
                prev = jnp.zeros((x.shape[0], pad, *x.shape[2:]), x.dtype)
            x = jnp.concatenate([prev.astype(x.dtype), x], axis=1)
            if cache is not None:
                cache.put(x[:, -pad:])
        return self.conv(x)


class Conv2d(nnx.Module):
    """Per-frame 2D convolution (the spatial part of Wan's Resample)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, padding=((1, 1), (1, 1)), *, rngs: nnx.Rngs):
        self.stride, self.padding = stride, tuple(padding)
        self.kernel = nnx.Param(_normal(rngs, (3, 3, cin, cout), 9 * cin))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t = x.shape[:2]
        y = jax.lax.conv_general_dilated(x.reshape(b * t, *x.shape[2:]), self.kernel[...], (self.stride,) * 2,
                                         self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = y + self.bias[...]
        return y.reshape(b, t, *y.shape[1:])


class Dense(nnx.Module):
    """A 1x1 Conv2d (the attention's to_qkv / proj): kernel [in, out]."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_normal(rngs, (cin, cout), cin))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x @ self.kernel[...] + self.bias[...]


class RMSNorm(nnx.Module):
    """Wan RMS_norm: L2-normalise over channels (in float32), times sqrt(C), times gamma."""

    def __init__(self, dim: int):
        self.scale = dim ** 0.5
        self.gamma = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        n = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
        y = xf / jnp.maximum(n, 1e-12)  # F.normalize(x, dim=channels), eps 1e-12
        return (y * self.scale * self.gamma[...].astype(jnp.float32)).astype(x.dtype)


class ResidualBlock(nnx.Module):
    """RMS -> SiLU -> causal conv -> RMS -> SiLU -> causal conv, plus a 1x1x1 shortcut when widths differ."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cin)
        self.conv1 = CausalConv3d(cin, cout, rngs=rngs)
        self.norm2 = RMSNorm(cout)
        self.conv2 = CausalConv3d(cout, cout, rngs=rngs)
        self.conv_shortcut = CausalConv3d(cin, cout, (1, 1, 1), rngs=rngs) if cin != cout else None

    def __call__(self, x: jax.Array, cache: Cache) -> jax.Array:
        h = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        x = self.conv1(jax.nn.silu(self.norm1(x)), cache)
        x = self.conv2(jax.nn.silu(self.norm2(x)), cache)
        return x + h


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the pixels of each frame (no temporal mixing, no cache)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim)
        self.to_qkv = Dense(dim, 3 * dim, rngs=rngs)
        self.proj = Dense(dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        q, k, v = jnp.split(self.to_qkv(self.norm(x)).reshape(b * t, h * w, 3 * c), 3, axis=-1)
        logits = jnp.einsum("nqc,nkc->nqk", q, k, preferred_element_type=jnp.float32) * c ** -0.5
        p = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        o = jnp.einsum("nqk,nkc->nqc", p, v).reshape(b, t, h, w, c)
        return self.proj(o) + x


class MidBlock(nnx.Module):
    """res -> attention -> res (spec: 'middle = res, single-head per-frame attention, res')."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(dim, dim, rngs=rngs), ResidualBlock(dim, dim, rngs=rngs)])
        self.attentions = nnx.List([AttentionBlock(dim, rngs=rngs)])

    def __call__(self, x: jax.Array, cache: Cache) -> jax.Array:
        x = self.resnets[0](x, cache)
        return self.resnets[1](self.attentions[0](x), cache)


def upsample_nearest2x(x: jax.Array) -> jax.Array:
    """nearest-exact x2 on H and W (each pixel repeated twice)."""
    b, t, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, :, None, :, None, :], (b, t, h, 2, w, 2, c))
    return x.reshape(b, t, 2 * h, 2 * w, c)


class Resample(nnx.Module):
    """Wan's Resample: 'downsample2d' / 'downsample3d' / 'upsample2d' / 'upsample3d'."""

    def __init__(self, dim: int, mode: str, out_dim: int | None = None, *, rngs: nnx.Rngs):
        self.mode = mode
        if mode.startswith("up"):
            self.resample = Conv2d(dim, out_dim or dim, rngs=rngs)
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), rngs=rngs) if mode == "upsample3d" else None
        elif mode.startswith("down"):
            self.resample = Conv2d(dim, dim, stride=2, padding=((0, 1), (0, 1)), rngs=rngs)  # ZeroPad2d((0,1,0,1))
            self.time_conv = (CausalConv3d(dim, dim, (3, 1, 1), (2, 1, 1), rngs=rngs)
                              if mode == "downsample3d" else None)
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

    def __call__(self, x: jax.Array, cache: Cache) -> jax.Array:
        if self.mode == "upsample2d":
            return self.resample(upsample_nearest2x(x))
        if self.mode == "upsample3d":
            if cache.first:  # the first chunk skips the time conv; its input is not kept ("Rep")
                cache.put(jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype))
            else:
                y = self.time_conv(x, cache)  # (B, T, H, W, 2C): frame 2t+j = channels [jC:(j+1)C] of t
                b, t, h, w, c2 = y.shape
                x = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c2 // 2)
            return self.resample(upsample_nearest2x(x))
        x = self.resample(x)
        if self.mode == "downsample3d":
            prev = cache.take()
            cache.put(x[:, -1:])
            if prev is not None:  # the first chunk passes through; later ones see the previous last frame
                x = self.time_conv.conv(jnp.concatenate([prev.astype(x.dtype), x], axis=1))
        return x


def avg_down(x: jax.Array, cout: int, ft: int, fs: int) -> jax.Array:
    """Wan 2.2 AvgDown3D shortcut: space/time-to-channels then mean over channel groups (zero-pads T in front)."""
    b, t, h, w, c = x.shape
    pad = (-t) % ft
    if pad:
        x = jnp.concatenate([jnp.zeros((b, pad, h, w, c), x.dtype), x], axis=1)
        t += pad
    x = x.reshape(b, t // ft, ft, h // fs, fs, w // fs, fs, c).transpose(0, 1, 3, 5, 7, 2, 4, 6)
    x = x.reshape(b, t // ft, h // fs, w // fs, cout, c * ft * fs * fs // cout)
    return jnp.mean(x.astype(jnp.float32), axis=-1).astype(x.dtype)


def dup_up(x: jax.Array, cout: int, ft: int, fs: int, first: bool) -> jax.Array:
    """Wan 2.2 DupUp3D shortcut: repeat channels then channels-to-space/time; the first chunk drops ft-1 frames."""
    b, t, h, w, c = x.shape
    x = jnp.repeat(x, cout * ft * fs * fs // c, axis=-1).reshape(b, t, h, w, cout, ft, fs, fs)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t * ft, h * fs, w * fs, cout)
    return x[:, ft - 1:] if first else x
