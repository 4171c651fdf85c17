"""Compressed history memory (Yume Eq. 3, FramePack-style; spec/yume.md "History memory").

The model input is [history latents | current chunk]. History frames are patch-embedded with
coarser spatial kernels the older they are (temporal kernel 1; zero padding of H and W up to a
multiple of the kernel). With H history frames (index 0 = oldest) the frames are partitioned into
groups, oldest first:

    H <= 6     [0] base | [1, H-1) 2x | [H-1, H) base
    H <= 22    [0] base | [1, H-5) 4x | [H-5, H-3) 2x | [H-3, H) base
    H <= 86    [0] base | [1, H-21) 8x | [H-21, H-5) 4x | [H-5, H-3) 2x | [H-3, H) base
    H <= 342   [0] 2x   | [1, H-85) 16x | [H-85, H-21) 8x | ... as above
    H <= 1366  [0] 2x   | [1, H-341) 2x_f then 16x | [H-341, H-85) 16x | [H-85, H-21) 8x | ...

(base = the model's (1,2,2) patch, 2x = (1,4,4), 4x = (1,8,8), 8x = (1,16,16), 16x = (1,32,32);
2x_f is a channel-preserving (1,4,4) pre-downsample.) Edge cases, defined here: the groups are
half-open index ranges that partition [0, H); an empty range contributes no tokens (the public code
instead re-embeds a boundary frame). Histories longer than 1366 frames keep frame 0 (the anchor,
usually the input image) and the newest 1365 frames; older frames are dropped.

Tokens are ordered [groups in the order above, then the current chunk], frame-major inside a
group. RoPE: the frame index runs on across groups (each group's frames take the next indices, the
chunk continues after the history); height and width indices come from each group's own grid.

Bounded shapes (issue 17): every history length is a new model input shape, so an exploration whose history
grows compiles a new program per chunk. :func:`bucket_frames` picks the frames fed to the model from a
longer history: the anchor (frame 0) and the newest ``b - 1`` frames, ``b`` the largest length of a small
bucket set not above the history length. Lengths in the set are exact (all frames); between buckets the
oldest non-anchor frames, those in the most compressed tier, are left out of that chunk's input (they stay
in the session's history). :data:`BUCKETS` holds 1..6 (every H of the first regime) and then lengths on a
~sqrt(2) ladder that includes each regime's upper bound (22, 86, 342, 1366): at most 22 shapes ever.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from yume_jax.models import rope as rope_lib
from yume_jax.models.layers import matmul

MAX_HISTORY = 1366
KERNEL = {"base": 2, "2x": 4, "4x": 8, "8x": 16, "16x": 32, "2x_f+16x": 128}


@dataclass(frozen=True)
class Group:
    start: int
    stop: int
    tier: str  # "base", "2x", "4x", "8x", "16x", "2x_f+16x"

    @property
    def frames(self) -> int:
        return self.stop - self.start


def schedule(h: int) -> list[Group]:
    """The non-empty groups for ``h`` history frames (after dropping frames beyond MAX_HISTORY)."""
    if h < 0:
        raise ValueError(f"history length must be >= 0, got {h}")
    h = min(h, MAX_HISTORY)
    if h == 0:
        return []
    if h <= 6:
        spec = [(0, 1, "base"), (1, h - 1, "2x"), (max(1, h - 1), h, "base")]
    elif h <= 22:
        spec = [(0, 1, "base"), (1, h - 5, "4x"), (h - 5, h - 3, "2x"), (h - 3, h, "base")]
    elif h <= 86:
        spec = [(0, 1, "base"), (1, h - 21, "8x"), (h - 21, h - 5, "4x"), (h - 5, h - 3, "2x"), (h - 3, h, "base")]
    elif h <= 342:
        spec = [(0, 1, "2x"), (1, h - 85, "16x"), (h - 85, h - 21, "8x"), (h - 21, h - 5, "4x"),
                (h - 5, h - 3, "2x"), (h - 3, h, "base")]
    else:
        spec = [(0, 1, "2x"), (1, h - 341, "2x_f+16x"), (h - 341, h - 85, "16x"), (h - 85, h - 21, "8x"),
                (h - 21, h - 5, "4x"), (h - 5, h - 3, "2x"), (h - 3, h, "base")]
    return [Group(a, b, t) for a, b, t in spec if b > a]


def select_frames(h: int) -> np.ndarray:
    """Indices of the history frames that are kept (all, or frame 0 + the newest MAX_HISTORY-1)."""
    if h <= MAX_HISTORY:
        return np.arange(h)
    return np.concatenate([[0], np.arange(h - MAX_HISTORY + 1, h)])


BUCKETS = (1, 2, 3, 4, 5, 6, 9, 14, 22, 32, 45, 64, 86, 128, 181, 256, 342, 512, 724, 1024, 1366)


def check_buckets(buckets) -> tuple[int, ...]:
    """``buckets`` as a strictly increasing tuple of ints in [1, MAX_HISTORY]; ValueError otherwise."""
    b = tuple(int(x) for x in buckets)
    if not b or any(x < 1 or x > MAX_HISTORY for x in b) or any(x >= y for x, y in zip(b, b[1:])):
        raise ValueError(f"history buckets must be increasing lengths in [1, {MAX_HISTORY}], got {buckets!r}")
    return b


def bucket_length(h: int, buckets) -> int:
    """The history length fed to the model for ``h`` frames: the largest bucket <= h (h itself below the
    smallest bucket, so a short history is never padded or dropped)."""
    fit = [b for b in buckets if b <= h]
    return max(fit) if fit else h


def bucket_frames(h: int, buckets) -> np.ndarray:
    """Indices of the frames of an ``h``-frame history fed to the model under ``buckets``: frame 0 (the
    anchor) and the newest ``bucket_length(h) - 1`` frames (all frames when ``h`` is a bucket)."""
    n = bucket_length(h, buckets)
    if n >= h:
        return np.arange(h)
    return np.concatenate([[0], np.arange(h - n + 1, h)]).astype(int)


def grid_after(tier: str, hh: int, ww: int, patch: int = 2) -> tuple[int, int]:
    k = KERNEL[tier] if tier != "base" else patch
    return math.ceil(hh / k), math.ceil(ww / k)


def token_counts(h: int, hh: int, ww: int, chunk: int) -> dict[str, int]:
    """Tokens per tier (history) plus the chunk's, for latent frames of size hh x ww."""
    out: dict[str, int] = {}
    for g in schedule(h):
        gh, gw = grid_after(g.tier, hh, ww)
        out[g.tier] = out.get(g.tier, 0) + g.frames * gh * gw
    out["chunk"] = chunk * (hh // 2) * (ww // 2)
    return out


def _pad_to(x: jax.Array, k: int) -> jax.Array:
    """Zero-pad (B, C, F, H, W) on H and W up to multiples of k."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % k, (-w) % k
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, ph), (0, pw)))
    return x


def conv_patch(x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype) -> tuple[jax.Array, tuple[int, int, int]]:
    """Conv3d with kernel = stride (1, k, k) after zero padding; kernel (1, k, k, C_in, C_out).

    Returns tokens (B, F*h'*w', C_out) float32 and the grid (F, h', w')."""
    k = kernel.shape[1]
    x = _pad_to(x, k)
    b, c, f, h, w = x.shape
    g = (f, h // k, w // k)
    x = x.reshape(b, c, f, g[1], k, g[2], k).transpose(0, 2, 3, 5, 4, 6, 1).reshape(b, f * g[1] * g[2], k * k * c)
    kk = kernel.reshape(-1, kernel.shape[-1])
    y = matmul(x, kk, dtype) + bias.astype(jnp.float32)
    return y, g


def to_grid(tokens: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
    """(B, F*h*w, C) -> (B, C, F, h, w)."""
    b, _, c = tokens.shape
    return tokens.reshape(b, *grid, c).transpose(0, 4, 1, 2, 3)


def embed_history(model, hist: jax.Array, dtype) -> tuple[jax.Array | None, np.ndarray]:
    """Tokens (B, N, dim) float32 and static RoPE positions (N, 3) for history latents (B, C, H, h, w)."""
    h = hist.shape[2]
    hist = hist[:, :, select_frames(h)] if h > MAX_HISTORY else hist
    tokens, positions, f0 = [], [], 0
    for g in schedule(hist.shape[2]):
        x = hist[:, :, g.start:g.stop]
        if g.tier == "base":
            pe = model.patch_embedding
            y, grid = conv_patch(x, pe.kernel[...], pe.bias[...], dtype)
        elif g.tier == "2x_f+16x":
            pre = model.history_embedding["x2x_f"]
            y, grid = conv_patch(x, pre.kernel[...], pre.bias[...], dtype)
            emb = model.history_embedding["x16x"]
            y, grid = conv_patch(to_grid(y, grid), emb.kernel[...], emb.bias[...], dtype)
        else:
            emb = model.history_embedding[f"x{g.tier}"]
            y, grid = conv_patch(x, emb.kernel[...], emb.bias[...], dtype)
        tokens.append(y)
        positions.append(rope_lib.grid_positions(*grid, f0=f0))
        f0 += grid[0]
    if not tokens:
        return None, np.zeros((0, 3), np.int64)
    return jnp.concatenate(tokens, axis=1), np.concatenate(positions, axis=0)


# ----------------------------------------------------------------------------------------------
# initialisation of history embeddings from the base patch embedding


def trilinear_resize(w: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """torch.nn.functional.interpolate(w, size, mode="trilinear", align_corners=False), float32.

    w: (O, I, T, H, W). Same index/weight rule and summation order as PyTorch's CPU kernel
    (separable, outer axis first; on each axis x0*w0 + x1*w1 as one fused multiply-add)."""
    w = np.asarray(w, np.float32)
    out = w
    # evaluate as torch does: nested over (t, h, w) with the innermost axis summed first
    idx, lam = [], []
    for axis, n_out in enumerate(size):
        n_in = w.shape[2 + axis]
        scale = np.float32(n_in) / np.float32(n_out)
        src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        src = np.maximum(src, np.float32(0))
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
        i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
        idx.append((i0, i1))
        lam.append((np.float32(1) - l1, l1))
    (t0, t1), (h0, h1), (w0, w1) = idx
    (lt0, lt1), (lh0, lh1), (lw0, lw1) = lam

    def comb(a, wa, b, wb):
        # torch's kernel computes a*wa + b*wb contracted to fma(a, wa, round(b*wb)); float64 holds the
        # exact product of two float32s, so this emulates the fused multiply-add
        bw = (b * wb).astype(np.float32).astype(np.float64)
        return (a.astype(np.float64) * wa.astype(np.float64) + bw).astype(np.float32)

    def along_w(x):  # x: (..., W_in) -> (..., W_out)
        return comb(x[..., w0], lw0, x[..., w1], lw1)

    def along_h(x):  # x: (..., H_in, W_in)
        return comb(along_w(x[..., h0, :]), lh0[:, None], along_w(x[..., h1, :]), lh1[:, None])

    def along_t(x):
        return comb(along_h(x[:, :, t0]), lt0[:, None, None], along_h(x[:, :, t1]), lt1[:, None, None])

    out = along_t(w)
    return out.astype(np.float32)


def init_history_from_base(base_kernel: np.ndarray, base_bias: np.ndarray, tier: str):
    """(kernel (1,k,k,C_in,D), bias (D,)) for a history tier from the base embedding (torch layout inside).

    Tiers other than 2x_f: trilinear interpolation of the base kernel to (1, k, k), bias copied
    (spec/yume.md). 2x_f is channel-preserving (C_in -> C_in), so it cannot come from the base
    kernel: it starts as a 4x4 average pool (each channel to itself), bias zero.
    """
    base_kernel = np.asarray(base_kernel, np.float32)
    if tier == "2x_f":
        c = base_kernel.shape[3]
        k = np.zeros((1, 4, 4, c, c), np.float32)
        k[0, :, :, np.arange(c), np.arange(c)] = 1.0 / 16
        return k, np.zeros((c,), np.float32)
    kk = KERNEL[tier]
    torch_w = base_kernel.transpose(4, 3, 0, 1, 2)  # (D, C, 1, 2, 2)
    up = trilinear_resize(torch_w, (1, kk, kk))
    return np.ascontiguousarray(up.transpose(2, 3, 4, 1, 0)), np.asarray(base_bias, np.float32).copy()
