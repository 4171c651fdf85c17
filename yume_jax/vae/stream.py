"""Running the Wan VAE: chunked, causal, streaming encode/decode with optional spatial tiling.

The reference (spec/wan.md "VAE"; diffusers ``AutoencoderKLWan._encode/_decode``) encodes frame
chunks of 1, 4, 4, ... and decodes one latent frame at a time, threading a feature cache through
the chunks. Here that cache is an explicit value: each chunk is one call of a jit-compiled step
``(params, cache, chunk) -> (out, cache')`` (compiled once per chunk shape: the first chunk and the
steady state), and a :class:`StreamState` carries it between calls, so a long video is encoded or
decoded piece by piece in memory bounded by the chunk, and an explorer decodes only the latent
frames it has not decoded yet. Pieces give the same numbers as one call (the same steps run).

Spatial split over devices (:meth:`WanVAE.with_mesh`, a mesh with a ``context`` axis of n devices): the
parameters are replicated, each step's input is split along the image width over ``context`` and the encoder's
and decoder's activations are constrained to stay so (yume_jax/vae/model.py; logical axis ``act_width``), so
GSPMD partitions every convolution spatially, exchanging the halo columns between neighbouring devices, and
the causal caches stay split too. It pays where the width divides n (544x960: 120 latent / 960 pixel columns,
30 / 240 per device on 4; every later layer's width is a multiple): each device runs 1/n of the convolutions,
the per-layer halo traffic being 2 columns out of W/n. A width n does not divide runs replicated (correct,
no speed-up). Outputs come back to this process's first device (the sampler's and encoders' home).

Tiling (``tiling=Tiling()``) follows diffusers' ``tiled_encode`` / ``tiled_decode`` geometry and
seam blending (linear ramps over the overlap, row-major, already-blended neighbours), each tile
with its own cache; tiles of equal shape share one compiled step.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

from yume_jax import sharding
from yume_jax.vae.config import VAEConfig
from yume_jax.vae.layers import Cache
from yume_jax.vae.params import cast_state, graphdef, to_state

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
RANGE_SLACK = 1e-3  # encode accepts |x| <= 1 + RANGE_SLACK


@dataclass(frozen=True)
class Tiling:
    """Spatial tiles in pixels (diffusers' ``enable_tiling`` parameters and defaults)."""

    tile_sample_min_height: int = 256
    tile_sample_min_width: int = 256
    tile_sample_stride_height: int = 192
    tile_sample_stride_width: int = 192


@dataclass(frozen=True)
class _Axis:
    spans: tuple[tuple[int, int], ...]  # input [start, end) of each tile, in the step's input units
    blend: int  # overlap blended between neighbours, output units
    stride: int  # output kept per tile
    total: int  # output size


@dataclass(frozen=True)
class _Grid:
    h: _Axis
    w: _Axis

    @property
    def n(self) -> int:
        return len(self.h.spans) * len(self.w.spans)


def _patchify(x: jax.Array, p: int) -> jax.Array:
    """(B, T, H, W, C) -> (B, T, H/p, W/p, C*p*p), channel = (c*p + dw)*p + dh (diffusers ``patchify``)."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def _unpatchify(x: jax.Array, p: int) -> jax.Array:
    if p == 1:
        return x
    b, t, h, w, cpp = x.shape
    x = x.reshape(b, t, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, cpp // (p * p))


def _blend(a: jax.Array, b: jax.Array, extent: int, axis: int) -> jax.Array:
    """diffusers blend_v / blend_h: the first ``extent`` rows of b ramp from a's last rows to b's own."""
    e = min(a.shape[axis], b.shape[axis], extent)
    if e <= 0:
        return b
    y = np.arange(e) / e
    shape = [1] * b.ndim
    shape[axis] = e
    wa = jnp.asarray((1 - y).astype(np.float32).reshape(shape))
    wb = jnp.asarray(y.astype(np.float32).reshape(shape))
    head = jax.lax.slice_in_dim(a, a.shape[axis] - e, a.shape[axis], axis=axis) * wa + \
        jax.lax.slice_in_dim(b, 0, e, axis=axis) * wb
    return jnp.concatenate([head, jax.lax.slice_in_dim(b, e, b.shape[axis], axis=axis)], axis=axis)


def _assemble(tiles: tuple, grid: _Grid) -> jax.Array:
    """Blend tiles (row-major lists of (B, T, h, w, C)) into one frame stack, cropping to the grid."""
    nw = len(grid.w.spans)
    rows = [list(tiles[r * nw:(r + 1) * nw]) for r in range(len(grid.h.spans))]
    out_rows = []
    for i, row in enumerate(rows):
        for j in range(nw):
            t = row[j].astype(jnp.float32)
            if i > 0:
                t = _blend(rows[i - 1][j], t, grid.h.blend, 2)
            if j > 0:
                t = _blend(row[j - 1], t, grid.w.blend, 3)
            row[j] = t
        out_rows.append(jnp.concatenate([t[:, :, :grid.h.stride, :grid.w.stride] for t in row], axis=3))
    return jnp.concatenate(out_rows, axis=2)[:, :, :grid.h.total, :grid.w.total]


@dataclass
class StreamState:
    """Where an encode or decode stream stands: frames consumed and the causal caches (one per tile).

    Passing a state to :meth:`WanVAE.stream_encode` / ``stream_decode`` consumes it (its buffers are
    donated to the next step); use :meth:`copy` to keep one to continue from more than once.
    """

    kind: str  # "encode" | "decode"
    frames: int = 0  # input frames consumed: video frames (encode) or latent frames (decode)
    shape: tuple[int, int, int] | None = None  # (B, H, W) of the input, fixed by the first chunk
    caches: tuple | None = None  # per tile, row-major: a tuple of arrays
    grid: tuple | None = None  # the tile layout the caches belong to (spans per axis)
    config: dict | None = None  # the VAEConfig (as a dict) of the VAE that made the caches
    consumed: bool = False

    def copy(self) -> "StreamState":
        self._check_live()
        return dataclasses.replace(self, caches=jax.tree.map(jnp.copy, self.caches))

    def _check_live(self):
        if self.consumed:
            raise ValueError("this StreamState was consumed by a previous call; continue from the state that call "
                             "returned (or keep a state.copy() to branch)")

    def save(self, path: str | Path) -> None:
        """Write the state to an ``.npz`` (caches as arrays, the rest as JSON)."""
        self._check_live()
        leaves = jax.tree.leaves(self.caches) if self.caches is not None else []
        meta = {"kind": self.kind, "frames": self.frames, "shape": self.shape, "grid": self.grid, "config": self.config,
                "lengths": None if self.caches is None else [len(c) for c in self.caches],
                "dtype": str(leaves[0].dtype) if leaves else None}
        arrays = {f"c{i}": np.asarray(a.astype(jnp.float32)) for i, a in enumerate(leaves)}
        np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "StreamState":
        with np.load(path) as f:
            meta = json.loads(bytes(f["__meta__"]).decode())
            caches, i = None, 0
            if meta["lengths"] is not None:
                dt = DTYPES[meta["dtype"]]
                caches = []
                for n in meta["lengths"]:
                    caches.append(tuple(jnp.asarray(f[f"c{k}"], dt) for k in range(i, i + n)))
                    i += n
                caches = tuple(caches)
        grid = None if meta["grid"] is None else tuple(tuple(tuple(s) for s in ax) for ax in meta["grid"])
        return cls(meta["kind"], meta["frames"], None if meta["shape"] is None else tuple(meta["shape"]),
                   caches, grid, meta["config"])


class WanVAE:
    """The Wan 2.1 / 2.2 VAE with the public API of issue 4 (see :func:`yume_jax.vae.load_vae`).

    ``encode(video)``: (B, 3, T, H, W) in [-1, 1], T = 4n + 1 -> latents (B, z, n + 1, H/s, W/s), float32.
    ``decode(latents)``: -> video (B, 3, 4(t-1) + 1, H, W) clamped to [-1, 1], float32.
    ``normalize=True`` applies the per-channel latent statistics, (z - mean) / std, on the way out of
    the encoder and its inverse on the way into the decoder; with ``normalize=False`` the outputs are
    diffusers' ``encode(x).latent_dist.mode()`` and ``decode(z).sample``.
    ``dtype`` is the compute dtype (RMS norms and the attention softmax run in float32 regardless).
    ``latents_per_step``: latent frames per compiled step after the first (1 = the reference chunking).
    ``mesh``: split every step spatially over the mesh's ``context`` axis (module docstring; :meth:`with_mesh`).
    """

    def __init__(self, cfg: VAEConfig, params: dict, dtype: str = "float32", tiling: Tiling | None = None,
                 latents_per_step: int = 1, *, source: str | None = None, mesh=None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        if latents_per_step < 1:
            raise ValueError(f"latents_per_step must be >= 1, not {latents_per_step}")
        self.cfg, self.dtype, self.tiling, self.latents_per_step = cfg, DTYPES[dtype], tiling, latents_per_step
        self._graphdef = graphdef(cfg)
        self.params = params if isinstance(params, nnx.State) else to_state(cfg, params, self.dtype, file=source)
        self.params = cast_state(self.params, self.dtype)
        self.source, self.mesh = source, mesh
        if mesh is not None:  # replicated over the mesh; inputs placed split, outputs brought home (_run)
            self.params = jax.device_put(self.params, NamedSharding(mesh, PartitionSpec()))
            self._home = SingleDeviceSharding(jax.local_devices()[0])
        self._mean = jnp.asarray(cfg.latents_mean, jnp.float32)
        self._std = jnp.asarray(cfg.latents_std, jnp.float32)
        self.traces = {"encode": 0, "decode": 0, "assemble": 0}  # compilations (a test asserts one per shape)
        self._stats = {True: (self._mean, self._std), False: (jnp.zeros_like(self._mean), jnp.ones_like(self._std))}
        statics = ("first", "finish")
        self._enc = jax.jit(self._encode_step, static_argnames=statics, donate_argnames=("cache",))
        self._dec = jax.jit(self._decode_step, static_argnames=statics, donate_argnames=("cache",))
        self._asm = jax.jit(self._assemble_step, static_argnames=("grid", "kind"))

    def with_mesh(self, mesh) -> "WanVAE":
        """This VAE split spatially over ``mesh``'s ``context`` axis (None: one device): a new VAE sharing the
        parameters' values, with its own compiled steps. Its streams (StreamState caches) live on the mesh."""
        if mesh is self.mesh:
            return self
        dtype = next(k for k, v in DTYPES.items() if v == self.dtype)
        params = self.params if mesh is not None else jax.device_put(self.params, jax.local_devices()[0])
        return WanVAE(self.cfg, params, dtype, self.tiling, self.latents_per_step, source=self.source, mesh=mesh)

    def _placement(self, shape) -> NamedSharding:
        """A step input (B, C, T, H, W) split along W over ``context`` (the logical axis table decides; a width
        the axis does not divide stays replicated)."""
        return NamedSharding(self.mesh, sharding.spec(("batch", None, None, None, "act_width"), shape, self.mesh))

    # ---- the compiled steps ---------------------------------------------------------------------

    def _encode_step(self, params, cache, x, stats, *, first: bool, finish: bool):
        self.traces["encode"] += 1
        model = nnx.merge(self._graphdef, params)
        c = Cache(None if first else cache)
        with sharding.use_mesh(self.mesh):
            x = _patchify(jnp.transpose(x, (0, 2, 3, 4, 1)).astype(self.dtype), self.cfg.patch)
            mu = model.encode_chunk(x, c).astype(jnp.float32)
        return (self._finish_latents(mu, stats) if finish else mu), tuple(c.next)

    def _decode_step(self, params, cache, z, stats, *, first: bool, finish: bool):
        self.traces["decode"] += 1
        model = nnx.merge(self._graphdef, params)
        c = Cache(None if first else cache)
        with sharding.use_mesh(self.mesh):
            z = jnp.transpose(z, (0, 2, 3, 4, 1)).astype(jnp.float32) * stats[1] + stats[0]  # identity: exact
            y = model.decode_chunk(z.astype(self.dtype), c)
        return (self._finish_video(y) if finish else y), tuple(c.next)

    def _assemble_step(self, tiles, stats, *, grid: _Grid, kind: str):
        self.traces["assemble"] += 1
        x = _assemble(tiles, grid)
        return self._finish_latents(x, stats) if kind == "encode" else self._finish_video(x)

    @staticmethod
    def _finish_latents(mu, stats):
        """(mu - mean) / std; with normalize=False the stats are (0, 1), which is exact."""
        return jnp.transpose((mu - stats[0]) / stats[1], (0, 4, 1, 2, 3))

    def _finish_video(self, y):
        y = jnp.clip(_unpatchify(y, self.cfg.patch).astype(jnp.float32), -1.0, 1.0)
        return jnp.transpose(y, (0, 4, 1, 2, 3))

    # ---- geometry -------------------------------------------------------------------------------

    def _grid(self, kind: str, h: int, w: int) -> _Grid | None:
        """Tiles for an input of h x w (pixels for encode, latents for decode), or None (untiled)."""
        t, cfg = self.tiling, self.cfg
        if t is None:
            return None
        r, p = cfg.scale_factor_spatial, cfg.patch
        mins, strides = (t.tile_sample_min_height, t.tile_sample_min_width), \
            (t.tile_sample_stride_height, t.tile_sample_stride_width)
        if kind == "encode":
            if not (w > mins[1] or h > mins[0]):
                return None
            er = r // p
            axes = []
            for n, mn, st in zip((h // p, w // p), mins, strides):
                axes.append(_Axis(tuple((i, min(i + mn, n)) for i in range(0, n, st)), mn // er - st // er,
                                  st // er, n // er))
        else:
            if not (w > mins[1] // r or h > mins[0] // r):
                return None
            axes = []
            for n, mn, st in zip((h, w), mins, strides):
                lm, ls = mn // r, st // r
                axes.append(_Axis(tuple((i, min(i + lm, n)) for i in range(0, n, ls)), mn // p - st // p,
                                  st // p, n * r // p))
        return _Grid(*axes)

    def _check_tiling(self):
        t, r = self.tiling, self.cfg.scale_factor_spatial
        if t is None:
            return
        for mn, st in ((t.tile_sample_min_height, t.tile_sample_stride_height),
                       (t.tile_sample_min_width, t.tile_sample_stride_width)):
            if st < r or mn < st or mn % r or st % r:
                raise ValueError(f"tiling: tile {mn} / stride {st} must be multiples of the spatial stride {r} "
                                 f"with stride <= tile")

    # ---- input checks ---------------------------------------------------------------------------

    def _check_video(self, video, state: StreamState, check_range: bool = True):
        cfg = self.cfg
        if video.ndim != 5:
            raise ValueError(f"video must be (B, C, T, H, W), got shape {tuple(video.shape)}")
        b, c, t, h, w = video.shape
        if c != cfg.video_channels:
            raise ValueError(f"video has {c} channels, the VAE expects {cfg.video_channels} (B, C, T, H, W order)")
        s = cfg.spatial_stride
        if h % s or w % s:
            raise ValueError(f"video height and width ({h}, {w}) must be multiples of {s}")
        step = cfg.temporal_stride
        if state.frames == 0 and t % step != 1:
            raise ValueError(f"video has T={t} frames; the first chunk needs T = {step}n + 1")
        if state.frames > 0 and (t == 0 or t % step):
            raise ValueError(f"a continuation chunk needs a multiple of {step} frames, got T={t}")
        if not jnp.issubdtype(video.dtype, jnp.floating):
            raise ValueError(f"video must be floating point in [-1, 1], got dtype {video.dtype}")
        lo, hi = (float(jnp.min(video)), float(jnp.max(video))) if check_range else (-1.0, 1.0)
        if not (lo >= -1 - RANGE_SLACK and hi <= 1 + RANGE_SLACK):
            raise ValueError(f"video values must lie in [-1, 1]; found [{lo:.4g}, {hi:.4g}] "
                             f"(uint8 frames: x / 127.5 - 1)")
        if state.shape is not None and (b, h, w) != state.shape:
            raise ValueError(f"chunk has (B, H, W) = {(b, h, w)} but the stream started with {state.shape}")

    def _check_latents(self, z, state: StreamState):
        if z.ndim != 5:
            raise ValueError(f"latents must be (B, z, T, h, w), got shape {tuple(z.shape)}")
        b, c, t, h, w = z.shape
        if c != self.cfg.z_dim:
            raise ValueError(f"latents have {c} channels, the VAE expects z_dim={self.cfg.z_dim}")
        if t == 0:
            raise ValueError("latents have no frames (T=0)")
        if not jnp.issubdtype(z.dtype, jnp.floating):
            raise ValueError(f"latents must be floating point, got dtype {z.dtype}")
        if state.shape is not None and (b, h, w) != state.shape:
            raise ValueError(f"latents have (B, h, w) = {(b, h, w)} but the stream started with {state.shape}")

    # ---- the public API -------------------------------------------------------------------------

    def encode(self, video, normalize: bool = True, progress: bool = False) -> jax.Array:
        return self.stream_encode(video, None, normalize, progress)[0]

    def decode(self, latents, normalize: bool = True, progress: bool = False) -> jax.Array:
        return self.stream_decode(latents, None, normalize, progress)[0]

    def stream_encode(self, video, state: StreamState | None = None, normalize: bool = True,
                      progress: bool = False, *, check_range: bool = True) -> tuple[jax.Array, StreamState]:
        """Encode the next frames of a video: T = 4n + 1 for the first chunk, 4n after. ``check_range``: verify
        the values lie in [-1, 1] (a device-to-host sync, which waits for every computation queued before;
        False for pixels the pipeline made itself, e.g. this VAE's clamped decode, so the encode is queued
        asynchronously behind them)."""
        return self._run("encode", video, state, normalize, progress, check_range)

    def stream_decode(self, latents, state: StreamState | None = None, normalize: bool = True,
                      progress: bool = False) -> tuple[jax.Array, StreamState]:
        """Decode the next latent frames: 1 + 4(t - 1) video frames for the first call, 4t after."""
        return self._run("decode", latents, state, normalize, progress)

    def _run(self, kind, x, state, normalize, progress, check_range: bool = True):
        state = StreamState(kind) if state is None else state
        state._check_live()
        if state.kind != kind:
            raise ValueError(f"a {state.kind} state cannot continue a {kind} stream")
        if state.config is not None and state.config != self.cfg.to_dict():
            raise ValueError("this StreamState was made by a VAE with a different config")
        x = x if isinstance(x, jax.Array) else jnp.asarray(x)
        if kind == "encode":
            self._check_video(x, state, check_range)
        else:
            self._check_latents(x, state)
        if self.mesh is not None:
            x = jax.device_put(x, self._placement(x.shape))
        self._check_tiling()
        b, _, t, h, w = x.shape
        grid = self._grid(kind, h, w)
        key = None if grid is None else (grid.h.spans, grid.w.spans)
        if state.frames and key != state.grid:
            raise ValueError("the tiling changed since this stream started")
        unit = self.cfg.temporal_stride if kind == "encode" else 1
        # chunk boundaries along T, in input frames: the first step takes 1 frame, later ones up to k units
        bounds, start = [], 0
        if state.frames == 0:
            bounds.append((0, 1))
            start = 1
        while start < t:
            end = min(start + unit * self.latents_per_step, t)
            bounds.append((start, end))
            start = end
        step = self._enc if kind == "encode" else self._dec
        p = self.cfg.patch if kind == "encode" else 1
        caches = list(state.caches) if state.caches is not None else [None] * (1 if grid is None else grid.n)
        stats = self._stats[bool(normalize)]
        outs = []
        it = bounds
        if progress:
            from tqdm import tqdm
            it = tqdm(bounds, desc=f"vae {kind}", unit="step", leave=False)
        for t0, t1 in it:
            first = state.frames == 0 and t0 == 0
            xt = x[:, :, t0:t1]
            if grid is None:
                y, caches[0] = step(self.params, caches[0], xt, stats, first=first, finish=True)
            else:
                tiles, n = [], 0
                for h0, h1 in grid.h.spans:
                    for w0, w1 in grid.w.spans:
                        yt, caches[n] = step(self.params, caches[n], xt[:, :, :, h0 * p:h1 * p, w0 * p:w1 * p],
                                             stats, first=first, finish=False)
                        tiles.append(yt)
                        n += 1
                y = self._asm(tuple(tiles), stats, grid=grid, kind=kind)
            outs.append(y)
        state.consumed = True
        new = StreamState(kind, state.frames + t, (b, h, w), tuple(caches), key, self.cfg.to_dict())
        out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=2)
        if self.mesh is not None:  # home, committed: every VAE output meets the sampler's there
            out = jax.device_put(out, self._home)
        return out, new
