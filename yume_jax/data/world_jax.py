"""The sandbox world (:mod:`yume_jax.data.world`, the stand-in for Sekai, spec/sekai.md) rendered by JAX.

The same ray caster as :func:`yume_jax.data.world.render`, as one jit-compiled float32 program vmapped over
frames, so that clips render at accelerator speed. The NumPy module stays the reference and defines the
dataset; this one renders the *same* scenes (:func:`~yume_jax.data.world.make_scene`) along the *same*
poses (:func:`~yume_jax.data.world.simulate`), equal up to float rounding (tests/test_world_jax.py).

Exactly equivalent formulations where the NumPy renderer saves work on the CPU:

- per-object screen-space culling of primary rays -> every ray against every object, with masks (the
  NumPy culling is exact, so the nearest hit is the same; ties go, as there, to the ground, then spheres,
  boxes, cylinders, and within a kind to the lowest index);
- light-space candidate lists for shadow rays -> every shadow ray against every object (the NumPy
  candidate test is a necessary condition for a hit);
- the distance cull of :func:`~yume_jax.data.world._cull` -> a per-frame object mask;
- a Scene of any size -> :class:`SceneArrays`, fixed-size padded arrays with validity masks, so one
  compiled program serves every scene of a config (capacity: :func:`capacity`).

Dot products are written out as sums of products (no matmul unit, no TF32 on GPUs), the texture hash in
uint32 like the NumPy one. Measured agreement (tests/test_world_jax.py): ~0.01% of pixels differ, almost
all by 1 level; a grazing ray within one rounding of a silhouette can flip a subsample (~1 pixel in 10^5).

A pure renderer of arrays: it never imports :mod:`yume_jax.data.world` (which plans clips and calls this
module, one way). Scenes are taken by their fields (:class:`SceneLike`, a ``world.Scene``), configs by
theirs (:class:`RenderConfig`, a ``world.WorldConfig``, whose ``ray_directions()`` are the camera rays);
``_EPS`` is world's (tests/test_world_jax.py checks they agree).

Use: :func:`render_walks` (N scenes along N planned walks -> uint8 (N, T, H, W, 3)), :func:`render_frames`
(one scene along poses), :func:`render_poses` (padded scenes per frame); planning and clips live in
:mod:`yume_jax.data.world`: ``world.render_clips(seeds, ..., backend="jax")`` (N seeds -> frames with poses,
actions, scripts and scenes), ``world.make_clip(..., backend="jax")`` and
``python -m yume_jax.data.world --backend jax``. Throughput: bench/world_render.py.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-3  # yume_jax.data.world._EPS: the smallest ray distance that counts as a hit
_f32 = jnp.float32
_u32 = jnp.uint32

# ----------------------------------------------------------------------------------------- inputs


class RenderConfig(Protocol):
    """What the renderer reads of a :class:`yume_jax.data.world.WorldConfig` (frozen, hashable)."""

    height: int
    width: int
    fps: int
    walk_speed: float
    objects_min: int
    objects_per_m: float
    fog_distance: float
    shadows: bool
    supersample: int

    def intrinsics(self) -> np.ndarray: ...

    def ray_directions(self) -> np.ndarray: ...


class SceneLike(Protocol):
    """What the renderer reads of a :class:`yume_jax.data.world.Scene`: its object and look arrays."""

    sph_c: np.ndarray
    sph_r: np.ndarray
    sph_col: np.ndarray
    sph_pat: np.ndarray
    box_lo: np.ndarray
    box_hi: np.ndarray
    box_col: np.ndarray
    box_pat: np.ndarray
    cyl_c: np.ndarray
    cyl_r: np.ndarray
    cyl_top: np.ndarray
    cyl_col: np.ndarray
    cyl_pat: np.ndarray
    sun: np.ndarray
    seed: int
    ground_cols: np.ndarray
    sky_cols: np.ndarray
    mountain: np.ndarray

# ----------------------------------------------------------------------------------------- scene arrays


class SceneArrays(NamedTuple):
    """A :class:`~yume_jax.data.world.Scene` as fixed-size arrays: each object kind padded to a capacity,
    ``*_ok`` marks the real objects. A leading batch axis (one scene per frame) is allowed."""

    sph_c: np.ndarray  # (S, 3)
    sph_r: np.ndarray  # (S,)
    sph_col: np.ndarray  # (S, 3)
    sph_pat: np.ndarray  # (S,) int32
    sph_ok: np.ndarray  # (S,) bool
    box_lo: np.ndarray  # (B, 3)
    box_hi: np.ndarray
    box_col: np.ndarray
    box_pat: np.ndarray
    box_ok: np.ndarray
    cyl_c: np.ndarray  # (C, 2)
    cyl_r: np.ndarray
    cyl_top: np.ndarray
    cyl_col: np.ndarray
    cyl_pat: np.ndarray
    cyl_ok: np.ndarray
    sun: np.ndarray  # (3,)
    seed: np.ndarray  # () uint32
    ground_cols: np.ndarray  # (2, 3)
    sky_cols: np.ndarray  # (3, 3)
    mountain: np.ndarray  # (3, 2)


def capacity(cfg: RenderConfig, num_frames: int, max_speed: float = 1.4) -> int:
    """Objects per kind that any :func:`~yume_jax.data.world.make_scene` along a ``num_frames`` walk at speed
    factors up to ``max_speed`` (random scripts: 1.4) can hold, rounded up to a multiple of 16: the
    scene places at most ``objects_min + objects_per_m * path length`` objects, each adding at most one of
    a kind."""
    length = (num_frames - 1) * cfg.walk_speed / cfg.fps * max_speed
    n = int(cfg.objects_min + cfg.objects_per_m * length)
    return -(-n // 16) * 16


def tight_capacity(scenes: Sequence[SceneLike], multiple: int = 16) -> tuple[int, int, int]:
    """Per-kind capacities (spheres, boxes, cylinders): the largest counts among ``scenes`` rounded up to
    ``multiple``. About 3x less padded work than :func:`capacity` for dataset-length clips (110 objects:
    typically <= 48 / 36 / 61 of a kind against 112 each), at the price of a compile per new rounded size
    (for batches of many clips, a few in all)."""
    counts = np.array([[len(s.sph_r), len(s.box_lo), len(s.cyl_r)] for s in scenes]).reshape(-1, 3)
    top = np.maximum(counts.max(0, initial=0), 1)
    return tuple(int(-(-n // multiple) * multiple) for n in top)


def scene_arrays(scene: SceneLike, cap: int | tuple[int, int, int]) -> SceneArrays:
    """Pad a scene's objects to ``cap`` per kind, or to (spheres, boxes, cylinders) capacities (float32,
    padding marked invalid)."""
    caps = (cap, cap, cap) if isinstance(cap, (int, np.integer)) else tuple(cap)

    def pad(x, k, fill=0.0, dtype=np.float32):
        x = np.asarray(x, dtype)
        if len(x) > caps[k]:
            raise ValueError(f"scene has {len(x)} objects of a kind, more than the capacity {caps[k]}")
        out = np.full((caps[k],) + x.shape[1:], fill, dtype)
        out[:len(x)] = x
        return out

    def ok(k, n):
        return np.arange(caps[k]) < n

    return SceneArrays(
        sph_c=pad(scene.sph_c.reshape(-1, 3), 0), sph_r=pad(scene.sph_r, 0, 1.0),
        sph_col=pad(scene.sph_col.reshape(-1, 3), 0), sph_pat=pad(scene.sph_pat, 0, 0, np.int32),
        sph_ok=ok(0, len(scene.sph_r)),
        box_lo=pad(scene.box_lo.reshape(-1, 3), 1), box_hi=pad(scene.box_hi.reshape(-1, 3), 1, 1.0),
        box_col=pad(scene.box_col.reshape(-1, 3), 1), box_pat=pad(scene.box_pat, 1, 0, np.int32),
        box_ok=ok(1, len(scene.box_lo)),
        cyl_c=pad(scene.cyl_c.reshape(-1, 2), 2), cyl_r=pad(scene.cyl_r, 2, 1.0), cyl_top=pad(scene.cyl_top, 2, -1.0),
        cyl_col=pad(scene.cyl_col.reshape(-1, 3), 2), cyl_pat=pad(scene.cyl_pat, 2, 0, np.int32),
        cyl_ok=ok(2, len(scene.cyl_r)),
        sun=np.asarray(scene.sun, np.float32), seed=np.uint32(scene.seed & 0xFFFFFFFF),
        ground_cols=np.asarray(scene.ground_cols, np.float32), sky_cols=np.asarray(scene.sky_cols, np.float32),
        mountain=np.asarray(scene.mountain, np.float32))


def _stack(items: Sequence[SceneArrays]) -> SceneArrays:
    return SceneArrays(*[np.stack(x) for x in zip(*items)])

# ----------------------------------------------------------------------------------------- textures


def _hash(ix, iz, seed):
    """:func:`yume_jax.data.world._hash` in uint32: int32 lattice coordinates wrap like NumPy's int64 masked
    to 32 bits (exact while |coordinate| < 2^31; the renderer's stay below 2^25)."""
    h = ix.astype(_u32) * _u32(0x8DA6B343)
    h ^= iz.astype(_u32) * _u32(0xD8163841)
    h ^= seed.astype(_u32) * _u32(0x9E3779B9)
    h ^= h >> _u32(15)
    h *= _u32(0x2C1B3C6D)
    h ^= h >> _u32(12)
    h *= _u32(0x297A2D39)
    h ^= h >> _u32(15)
    return h.astype(_f32) * _f32(2.0 ** -32)


def _noise(x, z, seed):
    fx, fz = jnp.floor(x), jnp.floor(z)
    ix, iz = fx.astype(jnp.int32), fz.astype(jnp.int32)
    u, v = x - fx, z - fz
    u, v = u * u * (3 - 2 * u), v * v * (3 - 2 * v)
    a, b = _hash(ix, iz, seed), _hash(ix + 1, iz, seed)
    c, d = _hash(ix, iz + 1, seed), _hash(ix + 1, iz + 1, seed)
    return (a + (b - a) * u) * (1 - v) + (c + (d - c) * u) * v


def _fbm(x, z, seed, octaves=3):
    out, amp, norm = 0.0, 1.0, 0.0
    for o in range(octaves):
        out = out + amp * _noise(x, z, seed + _u32(101 * o))
        norm += amp
        x, z, amp = x * 2.03, z * 2.03, amp * 0.5
    return out / norm


def _pulse(u, lo: float, hi: float, width):
    def integral(x):
        f = jnp.floor(x)
        return f * (hi - lo) + jnp.clip(x - f - lo, 0.0, hi - lo)
    w = jnp.maximum(width, 1e-4)
    return (integral(u + w / 2) - integral(u - w / 2)) / w


def _smoothstep(a, b, x):
    t = jnp.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _dot3(a, b):
    """Sum of products over the last axis of 3, in the order NumPy's float32 matmul gives for 3 terms."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]

# ----------------------------------------------------------------------------------------- ray casting


def _hit_spheres(o, d, c, r, ok):
    """Ray-sphere distances (P, S) (inf: miss, padding or culled); o (P, 3) or (3,), d (P, 3) or (3,)."""
    oc = o[..., None, :] - c  # (P, S, 3)
    b = _dot3(d[..., None, :], oc)
    cc = (oc[..., 0] * oc[..., 0] + oc[..., 1] * oc[..., 1] + oc[..., 2] * oc[..., 2]) - r * r
    disc = b * b - cc
    sq = jnp.sqrt(jnp.maximum(disc, 0))
    t = -b - sq
    t = jnp.where(t > _EPS, t, -b + sq)
    t = jnp.where((disc > 0) & (t > _EPS) & ok, t, jnp.inf)
    return t


def _hit_boxes(o, d, lo, hi, ok):
    inv = 1.0 / jnp.where(jnp.abs(d) < 1e-9, 1e-9, d)
    t1 = (lo - o[..., None, :]) * inv[..., None, :]
    t2 = (hi - o[..., None, :]) * inv[..., None, :]
    tn = jnp.max(jnp.minimum(t1, t2), -1)
    tf = jnp.min(jnp.maximum(t1, t2), -1)
    t = jnp.where(tn > _EPS, tn, tf)
    return jnp.where((tn <= tf) & (t > _EPS) & ok, t, jnp.inf)


def _hit_cylinders(o, d, c, r, top, ok):
    ox, oz = o[..., None, 0] - c[:, 0], o[..., None, 2] - c[:, 1]
    dx, dz = d[..., None, 0], d[..., None, 2]
    a = jnp.maximum(dx * dx + dz * dz, 1e-12)
    b = ox * dx + oz * dz
    cc = ox * ox + oz * oz - r * r
    disc = b * b - a * cc
    sq = jnp.sqrt(jnp.maximum(disc, 0))
    t = (-b - sq) / a
    t = jnp.where(t > _EPS, t, (-b + sq) / a)
    y = o[..., None, 1] + t * d[..., None, 1]
    t = jnp.where((disc > 0) & (t > _EPS) & (y >= top) & (y <= 0), t, jnp.inf)
    dy = d[..., None, 1]
    tc = (top - o[..., None, 1]) / jnp.where(jnp.abs(dy) < 1e-9, 1e-9, dy)
    cx, cz = ox + tc * dx, oz + tc * dz
    tc = jnp.where((tc > _EPS) & (cx * cx + cz * cz <= r * r), tc, jnp.inf)
    return jnp.where(ok, jnp.minimum(t, tc), jnp.inf)


def _cull_masks(sa: SceneArrays, cam, radius: float):
    """:func:`yume_jax.data.world._cull` as masks: objects within ``radius`` of the camera in xz."""
    def near(x, z, ext):
        return jnp.hypot(x - cam[0], z - cam[2]) < radius + ext
    s = near(sa.sph_c[:, 0], sa.sph_c[:, 2], sa.sph_r)
    bc = (sa.box_lo + sa.box_hi) / 2
    b = near(bc[:, 0], bc[:, 2], jnp.max(sa.box_hi - sa.box_lo, 1))
    c = near(sa.cyl_c[:, 0], sa.cyl_c[:, 1], sa.cyl_r)
    return sa.sph_ok & s, sa.box_ok & b, sa.cyl_ok & c


def _min_argmin(t):
    """Minimum over the last axis and its first index, in one reduction (no (rays, objects) temporary)."""
    def pick(a, b):
        (va, ia), (vb, ib) = a, b
        take_b = (vb < va) | ((vb == va) & (ib < ia))
        return jnp.where(take_b, vb, va), jnp.where(take_b, ib, ia)
    idx = jax.lax.broadcasted_iota(jnp.int32, t.shape, t.ndim - 1)
    return jax.lax.reduce((t, idx), (jnp.array(jnp.inf, t.dtype), jnp.int32(0)), pick, (t.ndim - 1,))


def _trace(sa: SceneArrays, masks, o, d):
    """Primary rays: t (P,), kind (-1 sky, 0 ground, 1 sphere, 2 box, 3 cylinder), object index (P,)."""
    ms, mb, mc = masks
    t = jnp.where(d[:, 1] > 1e-6, -o[1] / jnp.maximum(d[:, 1], 1e-6), jnp.inf)
    kind = jnp.where(jnp.isfinite(t), 0, -1)
    obj = jnp.zeros(t.shape, jnp.int32)
    for kd, tk in ((1, _hit_spheres(o, d, sa.sph_c, sa.sph_r, ms)),
                   (2, _hit_boxes(o, d, sa.box_lo, sa.box_hi, mb)),
                   (3, _hit_cylinders(o, d, sa.cyl_c, sa.cyl_r, sa.cyl_top, mc))):
        tk, ik = _min_argmin(tk)
        closer = tk < t
        t, kind, obj = jnp.where(closer, tk, t), jnp.where(closer, kd, kind), jnp.where(closer, ik, obj)
    return t, kind, obj


def _shadowed(sa: SceneArrays, masks, pts):
    """Whether each point's ray toward the sun hits any object."""
    ms, mb, mc = masks
    sun = sa.sun
    hit = jnp.any(jnp.isfinite(_hit_spheres(pts, sun, sa.sph_c, sa.sph_r, ms)), 1)
    hit |= jnp.any(jnp.isfinite(_hit_boxes(pts, sun, sa.box_lo, sa.box_hi, mb)), 1)
    hit |= jnp.any(jnp.isfinite(_hit_cylinders(pts, sun, sa.cyl_c, sa.cyl_r, sa.cyl_top, mc)), 1)
    return hit


def _sky(sa: SceneArrays, d, o):
    horizon, zenith, mount = sa.sky_cols[0], sa.sky_cols[1], sa.sky_cols[2]
    up = -d[:, 1]
    col = horizon + (zenith - horizon) * jnp.clip(up, 0, 1)[:, None] ** 0.6
    t = 60.0 / jnp.maximum(up, 0.02)
    px, pz = o[0] + t * d[:, 0], o[2] + t * d[:, 2]
    cover = _smoothstep(0.5, 0.75, _fbm(px / 40.0, pz / 40.0, sa.seed + _u32(7), 4)) * jnp.clip(up * 6 - 0.1, 0, 1)
    col = col + (_f32(0.97) - col) * (0.85 * cover)[:, None]
    az = jnp.arctan2(d[:, 0], d[:, 2])
    skyline = 0
    for k in range(3):
        a, p = sa.mountain[k, 0], sa.mountain[k, 1]
        skyline = skyline + 0.025 * a * (1 + jnp.sin((k + 1) * 2 * az + p))
    skyline = 0.03 + skyline
    skyline = skyline + 0.008 * (_noise(az * 12.0, 0.0 * az, sa.seed + _u32(3)) - 0.5)
    elev = jnp.arcsin(jnp.clip(up, -1, 1))
    m = (elev < skyline)[:, None]
    mcol = mount + (horizon - mount) * jnp.clip(1 - elev / 0.12, 0, 1)[:, None] * 0.5
    col = jnp.where(m, mcol, col)
    cs = _dot3(d, sa.sun)
    col = col + _f32(0.35) * jnp.clip(cs, 0, 1)[:, None] ** 48.0 + jnp.where(cs > 0.9993, 1.5, 0.0)[:, None]
    return col


def _shade_ground(sa, p, foot, d):
    fg = foot / jnp.maximum(d[:, 1], 0.05)
    x, z = p[:, 0], p[:, 2]
    grassy = _smoothstep(0.45, 0.6, _fbm(x / 9.0, z / 9.0, sa.seed + _u32(1)))
    tile = _hash(jnp.floor(x / 1.2).astype(jnp.int32), jnp.floor(z / 1.2).astype(jnp.int32), sa.seed)
    grout = _pulse(x / 1.2, 0.0, 0.06, fg / 1.2) + _pulse(z / 1.2, 0.0, 0.06, fg / 1.2)
    aa = jnp.clip(1 - fg / 0.6, 0, 1)
    gc = sa.ground_cols
    pav = gc[0] * (1 + (0.25 * (tile - 0.5) * aa))[:, None] * (1 - 0.45 * jnp.clip(grout, 0, 1))[:, None]
    gn = _fbm(x * 1.7, z * 1.7, sa.seed + _u32(2), 2)
    grs = gc[1] * (0.75 + 0.5 * (0.5 + (gn - 0.5) * jnp.clip(1 - fg / 0.4, 0.2, 1)))[:, None]
    alb = pav + (grs - pav) * grassy[:, None]
    n = jnp.broadcast_to(jnp.array([0.0, -1.0, 0.0], _f32), p.shape)
    return n, alb


def _shade_sphere(sa, p, foot, i):
    c, r, pat, col = sa.sph_c[i], sa.sph_r[i], sa.sph_pat[i], sa.sph_col[i]
    nn = (p - c) / r[:, None]
    fs = foot / r
    lat = jnp.arcsin(jnp.clip(nn[:, 1], -1, 1)) / math.pi * 4
    lon = (jnp.arctan2(nn[:, 0], nn[:, 2]) / math.pi + 1) * 4
    stripe = _pulse(lat, 0, 0.5, fs * 1.3)
    checker = jnp.abs(_pulse(lat, 0, 0.5, fs * 1.3) - _pulse(lon, 0, 0.5, fs * 1.3))
    m = jnp.where(pat == 1, stripe, jnp.where(pat == 2, checker, 0.0))
    q = p
    leaves = 0.8 + 0.4 * (_noise(q[:, 0] * 3 + q[:, 1] * 2, q[:, 2] * 3 - q[:, 1], sa.seed + _u32(9)) - 0.5) * jnp.clip(
        1 - fs * 2, 0.2, 1) + 0.2
    m = jnp.where(pat == 0, 0.0, m)
    alb = col * (1 - 0.55 * m)[:, None] + _f32(0.9) * (0.55 * m)[:, None]
    alb = alb * jnp.where(pat == 0, leaves, 1.0)[:, None]
    return nn, alb


def _shade_box(sa, p, foot, i):
    lo, hi, pat, base = sa.box_lo[i], sa.box_hi[i], sa.box_pat[i], sa.box_col[i]
    dist = jnp.concatenate([jnp.abs(p - lo), jnp.abs(p - hi)], 1)  # (P, 6)
    face = jnp.argmin(dist, 1)
    ax, side = face % 3, face // 3
    nn = jnp.where(jnp.arange(3) == ax[:, None], jnp.where(side == 1, 1.0, -1.0)[:, None], 0.0).astype(_f32)
    uu = jnp.where(ax == 0, p[:, 2], p[:, 0])
    vv = jnp.where(ax == 1, p[:, 2], p[:, 1])
    fb = foot
    win = _pulse(uu / 1.3, 0.25, 0.75, fb / 1.3) * _pulse(vv / 1.6, 0.3, 0.8, fb / 1.6) * (ax != 1)
    win = win * (vv < -0.8)
    plank = _pulse(vv / 0.25, 0, 0.12, fb / 0.25)
    chk = jnp.abs(_pulse(uu / 0.5, 0, 0.5, fb / 0.5) - _pulse(vv / 0.5, 0, 0.5, fb / 0.5))
    glass = jnp.array([0.18, 0.24, 0.32], _f32)
    m = jnp.where(pat == 3, 0.0, jnp.where(pat == 1, 0.35 * plank, 0.3 * chk))
    alb = base * (1 - m)[:, None]
    alb = jnp.where((pat == 3)[:, None], alb + (glass - alb) * win[:, None], alb)
    return nn, alb


def _shade_cylinder(sa, p, foot, i):
    cc, r, top, pat, col = sa.cyl_c[i], sa.cyl_r[i], sa.cyl_top[i], sa.cyl_pat[i], sa.cyl_col[i]
    capped = jnp.abs(p[:, 1] - top) < 1e-3
    rx, rz = p[:, 0] - cc[:, 0], p[:, 2] - cc[:, 1]
    norm = jnp.sqrt(rx * rx + jnp.zeros_like(rx) + rz * rz)
    norm = jnp.maximum(norm, 1e-6)
    radial = jnp.stack([rx / norm, jnp.zeros_like(rx), rz / norm], 1)
    nn = jnp.where(capped[:, None], jnp.array([0, -1, 0], _f32), radial)
    fc = foot
    rings = _pulse(p[:, 1] / 0.5, 0, 0.5, fc / 0.5)
    ang = jnp.arctan2(radial[:, 0], radial[:, 2]) * r
    bark = _pulse(ang / 0.08 + 0.3 * _noise(p[:, 1] * 4, ang * 10, sa.seed), 0, 0.4, fc / 0.08)
    m = jnp.where(pat == 1, 0.5 * rings, 0.3 * bark)
    alb = col * (1 - m)[:, None] + jnp.where(pat == 1, 0.45 * m, 0)[:, None]
    return nn, alb


@dataclasses.dataclass(frozen=True)
class _Static:
    """What of a WorldConfig the compiled program depends on."""

    height: int
    width: int
    k: int
    pix: float
    fog_distance: float
    shadows: bool
    ray_chunk: int | None

    @staticmethod
    def of(cfg: RenderConfig, ray_chunk: int | None = None) -> "_Static":
        k = max(1, int(cfg.supersample))
        return _Static(cfg.height, cfg.width, k, float(np.float32(k / cfg.intrinsics()[0, 0])),
                       float(cfg.fog_distance), bool(cfg.shadows), ray_chunk)


def _shade_rays(sa: SceneArrays, masks, o, d, fog_color, st: _Static):
    """Linear-light colours (P, 3) after fog and gamma of rays from o along d: the body of
    :func:`yume_jax.data.world.render`."""
    t, kind, obj = _trace(sa, masks, o, d)
    p = o + t[:, None] * d
    foot = t * _f32(st.pix)
    S, B, C = len(sa.sph_r), len(sa.box_lo), len(sa.cyl_r)
    shaded = [_shade_ground(sa, p, foot, d), _shade_sphere(sa, p, foot, jnp.clip(obj, 0, S - 1)),
              _shade_box(sa, p, foot, jnp.clip(obj, 0, B - 1)), _shade_cylinder(sa, p, foot, jnp.clip(obj, 0, C - 1))]
    n = jnp.zeros_like(d)
    alb = jnp.zeros_like(d)
    for kd, (nk, ak) in enumerate(shaded):
        sel = (kind == kd)[:, None]
        n, alb = jnp.where(sel, nk, n), jnp.where(sel, ak, alb)
    hit = kind >= 0
    lam = jnp.clip(_dot3(n, sa.sun), 0, 1)
    if st.shadows:
        sh = _shadowed(sa, masks, p + n * 2e-3) & (lam > 0) & hit
        lam = jnp.where(sh, 0.0, lam)
    ambient = 0.42 + 0.18 * (-n[:, 1])
    shade = ambient[:, None] * jnp.array([0.85, 0.9, 1.05], _f32) + lam[:, None] * jnp.array(
        [1.0, 0.95, 0.85], _f32) * 0.75
    col = jnp.where(hit[:, None], alb * shade, _sky(sa, d, o))
    fogc = sa.sky_cols[0] if fog_color is None else fog_color
    fog = jnp.where(hit, 1 - jnp.exp(-t / st.fog_distance) ** 1.5, 0.0)[:, None]
    col = col + (fogc - col) * fog
    return jnp.clip(col, 0, 1) ** (1 / 1.1)


def _render_one(sa: SceneArrays, R, o, dc, fog_color, st: _Static):
    """One frame, uint8 (H, W, 3): :func:`yume_jax.data.world.render` for a pose's R (3, 3) and centre o (3,).
    Rays go in chunks of ``st.ray_chunk`` (a loop) when set: the (rays, objects) temporaries stay small."""
    d = jnp.stack([_dot3(dc, R[0]), _dot3(dc, R[1]), _dot3(dc, R[2])], 1)  # dc @ R.T
    masks = _cull_masks(sa, o, 3.5 * st.fog_distance)
    P = d.shape[0]
    if st.ray_chunk and st.ray_chunk < P:
        n = -(-P // st.ray_chunk)
        dp = jnp.concatenate([d, jnp.broadcast_to(d[:1], (n * st.ray_chunk - P, 3))]).reshape(n, st.ray_chunk, 3)
        col = jax.lax.map(lambda dd: _shade_rays(sa, masks, o, dd, fog_color, st), dp).reshape(-1, 3)[:P]
    else:
        col = _shade_rays(sa, masks, o, d, fog_color, st)
    k = st.k
    img = col.reshape(st.height * k, st.width * k, 3)
    if k > 1:
        img = img.reshape(st.height, k, st.width, k, 3).mean((1, 3))
    # floor first: XLA's CPU fusions may lower float -> uint8 as round-to-nearest instead of truncation
    return jnp.floor(img * 255 + 0.5).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("st",))
def _render_batch(sa: SceneArrays, R, o, dc, fog_color, st: _Static):
    """Frames (F, H, W, 3) for per-frame scenes (leading axis F), rotations (F, 3, 3) and centres (F, 3)."""
    return jax.vmap(_render_one, in_axes=(0, 0, 0, None, None, None))(sa, R, o, dc, fog_color, st)

# ----------------------------------------------------------------------------------------- public API


def default_frames_per_call(cfg: RenderConfig) -> int:
    """Frames per compiled call: about 2^21 rays (2^16 on CPU)."""
    k = max(1, int(cfg.supersample))
    budget = 1 << (16 if jax.default_backend() == "cpu" else 21)
    return max(1, budget // (cfg.height * cfg.width * k * k))


def default_ray_chunk() -> int | None:
    """Rays per step of a frame's loop: 2^14 on CPU (whose (rays, objects) temporaries are not fused away),
    none on accelerators."""
    return 1 << 14 if jax.default_backend() == "cpu" else None


@functools.lru_cache(maxsize=8)
def _directions(cfg: RenderConfig):
    """Camera-space ray directions on the device: ``cfg.ray_directions()`` (world's, bit for bit)."""
    return jnp.asarray(cfg.ray_directions())


def render_poses(scenes: Sequence[SceneArrays], c2w: np.ndarray, cfg: RenderConfig,
                 frames_per_call: int | None = None, fog_color=None, ray_chunk: int | None = -1) -> np.ndarray:
    """uint8 (F, H, W, 3): frame i shows ``scenes[i]`` (padded arrays of one capacity) from ``c2w[i]``.

    Frames go through one compiled program in calls of ``frames_per_call`` (the last call padded), all
    dispatched before any result is read back. ``ray_chunk``: rays per step within a frame (-1: the
    platform default, :func:`default_ray_chunk`; None: all at once)."""
    c2w = np.asarray(c2w, np.float64).reshape(-1, 4, 4)
    F = len(c2w)
    if len(scenes) != F:
        raise ValueError(f"{len(scenes)} scenes for {F} poses")
    fpc = frames_per_call or default_frames_per_call(cfg)
    fpc = min(fpc, 1 << max(0, F - 1).bit_length())  # few frames: a power of two >= F (few compiled sizes)
    st = _Static.of(cfg, default_ray_chunk() if ray_chunk == -1 else ray_chunk)
    dc = _directions(cfg)
    fog = None if fog_color is None else jnp.asarray(fog_color, _f32)
    R = c2w[:, :3, :3].astype(np.float32)
    o = c2w[:, :3, 3].astype(np.float32)
    outs = []
    for s in range(0, F, fpc):
        idx = np.minimum(np.arange(s, s + fpc), F - 1)  # pad the last call by repeating its last frame
        sa = _stack([scenes[i] for i in idx])
        outs.append((_render_batch(sa, R[idx], o[idx], dc, fog, st), min(fpc, F - s)))
    return np.concatenate([np.asarray(x)[:n] for x, n in outs]) if outs else np.zeros(
        (0, cfg.height, cfg.width, 3), np.uint8)


def render_frames(scene: SceneLike, c2w: np.ndarray, cfg: RenderConfig,
                  cap: int | tuple[int, int, int] | None = None,
                  frames_per_call: int | None = None, fog_color=None, ray_chunk: int | None = -1) -> np.ndarray:
    """uint8 (N, H, W, 3): :func:`yume_jax.data.world.render` of one scene along poses (N, 4, 4). The
    default capacity is :func:`capacity` for N frames (or the scene's own size if it is larger)."""
    c2w = np.asarray(c2w, np.float64).reshape(-1, 4, 4)
    cap = cap or _cap_for(cfg, len(c2w), [scene])
    sa = scene_arrays(scene, cap)
    return render_poses([sa] * len(c2w), c2w, cfg, frames_per_call, fog_color, ray_chunk)


def render(scene: SceneLike, c2w: np.ndarray, cfg: RenderConfig, fog_color=None) -> np.ndarray:
    """One frame, uint8 (H, W, 3), like :func:`yume_jax.data.world.render`."""
    return render_frames(scene, c2w, cfg, frames_per_call=1, fog_color=fog_color)[0]


def _count(scene: SceneLike) -> int:
    return max(len(scene.sph_r), len(scene.box_lo), len(scene.cyl_r))


def _cap_for(cfg: RenderConfig, num_frames: int, scenes: Sequence[SceneLike]) -> int:
    n = max([capacity(cfg, num_frames)] + [_count(s) for s in scenes])
    return -(-n // 16) * 16


def render_walks(scenes: Sequence[SceneLike], c2w: np.ndarray, cfg: RenderConfig,
                 cap: int | tuple[int, int, int] | str | None = None,
                 frames_per_call: int | None = None, ray_chunk: int | None = -1) -> np.ndarray:
    """uint8 (N, T, H, W, 3): ``scenes[i]`` along the walk ``c2w[i]`` (N, T, 4, 4), every walk in one compiled
    program (the frames of :func:`yume_jax.data.world.render_clips` with ``backend="jax"``).

    Scenes are padded to ``cap`` objects per kind (default :func:`capacity` for T frames, raised to a
    multiple of 16 above the largest scene if needed), or per kind; ``cap="tight"``: :func:`tight_capacity`
    of these scenes (less work, a compile per new size)."""
    c2w = np.asarray(c2w, np.float64)
    N, T = c2w.shape[:2]
    if len(scenes) != N:
        raise ValueError(f"{len(scenes)} scenes for {N} walks")
    cap = tight_capacity(scenes) if cap == "tight" else cap or _cap_for(cfg, T, scenes)
    arrays = [scene_arrays(s, cap) for s in scenes]
    frames = render_poses([a for a in arrays for _ in range(T)], c2w.reshape(-1, 4, 4), cfg,
                          frames_per_call, ray_chunk=ray_chunk)
    return frames.reshape(N, T, cfg.height, cfg.width, 3)
