"""The sandbox world: the project's stand-in for Sekai (spec/sekai.md), rendered by vectorised NumPy ray casting.

A procedural outdoor scene (tiled and grassy ground, sky with sun, clouds and a mountain skyline,
buildings with windows, trees, striped pillars and coloured spheres, sun shadows, Lambert shading and
distance fog) seen by a walking camera at a fixed eye height. The camera is driven by an action script
(one :class:`~yume_jax.camera.Action` per frame pair, covering every key and mouse label), so every
frame pair has a known ground-truth action, and the poses are exact OpenCV c2w matrices (+x right,
+y down, +z forward) with a pinhole intrinsic matrix. World frame: y points down, the ground is y = 0,
the camera stays at y = -eye_height.

``python -m yume_jax.data.world --out DIR --clips N --seed S --layout sekai|yume`` writes MP4s and pose
files in exactly the official Sekai layout or Yume's ``Keys_*_Mouse_*`` layout (see
:mod:`yume_jax.data.sekai`), deterministically by seed; ``--backend jax`` renders the same frames with the
jit-compiled port :mod:`yume_jax.data.world_jax` (GPU speed; this module stays the reference). The
dependency goes one way: this module plans clips (scripts, poses, scenes) and hands arrays to the port,
which never imports it; :func:`render_clips` renders many clips at once with either backend.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import numpy as np

from yume_jax.camera import ALL_ACTIONS, KEYS, MOUSE, Action, parse_keys

# ----------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    height: int = 96
    width: int = 160
    fps: int = 16
    hfov_deg: float = 75.0  # horizontal field of view
    eye_height: float = 1.6
    walk_speed: float = 1.4  # world units (metres) per second at speed factor 1
    turn_speed_deg: float = 30.0  # yaw rate, degrees per second
    tilt_speed_deg: float = 10.0  # pitch rate, degrees per second
    max_pitch_deg: float = 30.0
    objects_min: int = 48  # objects scattered around the path: objects_min + objects_per_m * path length
    objects_per_m: float = 3.0
    fog_distance: float = 55.0  # exponential fog scale
    shadows: bool = True
    supersample: int = 1  # render at k x k samples per pixel and average

    def replace(self, **kw) -> "WorldConfig":
        return dataclasses.replace(self, **kw)

    def intrinsics(self) -> np.ndarray:
        """Pinhole K (pixel centres at integer coordinates, OpenCV convention)."""
        f = (self.width / 2) / math.tan(math.radians(self.hfov_deg) / 2)
        return np.array([[f, 0, (self.width - 1) / 2], [0, f, (self.height - 1) / 2], [0, 0, 1]], np.float64)

    def ray_directions(self) -> np.ndarray:
        """Unit camera-space ray directions (H*W, 3) through the pixel centres of :meth:`intrinsics` (scaled
        by ``supersample``), row-major over pixels, float64 (float32 grid over the float64 focal length): the
        rays of :func:`camera_rays`, and those the JAX port (:mod:`yume_jax.data.world_jax`) takes from the
        config (as float32)."""
        k = max(1, int(self.supersample))
        H, W = self.height * k, self.width * k
        f = self.intrinsics()[0, 0] * k
        v, u = np.mgrid[0:H, 0:W].astype(np.float32)
        dc = np.stack([(u - (W - 1) / 2) / f, (v - (H - 1) / 2) / f, np.ones_like(u)], -1).reshape(-1, 3)
        dc /= np.linalg.norm(dc, axis=-1, keepdims=True)
        return dc


PRESETS = {
    "default": WorldConfig(),
    "tiny": WorldConfig(height=48, width=80),
    "480p": WorldConfig(height=272, width=480),
    "540p": WorldConfig(height=544, width=960),
}

# ----------------------------------------------------------------------------------------- scripts


@dataclasses.dataclass(frozen=True)
class Step:
    """``pairs`` consecutive frame pairs with one action at a speed factor."""

    action: Action
    pairs: int
    speed: float = 1.0


_KEY_DIR = {"W": (0, 1), "S": (0, -1), "D": (1, 0), "A": (-1, 0)}  # (right, forward)


def _vertical(mouse: str) -> int:
    return 1 if "↑" in mouse else -1 if "↓" in mouse else 0


def _flip_vertical(mouse: str) -> str:
    return mouse.replace("↑", "x").replace("↓", "↑").replace("x", "↓")


def random_script(rng: np.random.Generator, num_pairs: int, cfg: WorldConfig = WorldConfig(),
                  min_pairs: int = 16, max_pairs: int = 48, pitch: float = 0.0) -> list[Step]:
    """Segments of random actions (uniform over the 81 combinations) and durations, at speed factors in
    [0.6, 1.4]; a tilt that would leave the pitch range is turned the other way (the script stays exact)."""
    steps, left = [], num_pairs
    tilt = math.radians(cfg.tilt_speed_deg) / cfg.fps
    lim = math.radians(cfg.max_pitch_deg)
    while left > 0:
        n = int(min(left, rng.integers(min_pairs, max_pairs + 1)))
        a = ALL_ACTIONS[int(rng.integers(len(ALL_ACTIONS)))]
        sp = float(rng.uniform(0.6, 1.4))
        v = _vertical(a.mouse)
        if v and abs(pitch + v * tilt * sp * n) > lim:
            a = Action(a.keys, _flip_vertical(a.mouse))
            v = -v
            if abs(pitch + v * tilt * sp * n) > lim:  # still too far: shorten
                n = max(1, int((lim - abs(pitch)) / (tilt * sp)) - 1) if abs(pitch) < lim else 0
                if n == 0:
                    continue
        pitch += v * tilt * sp * n
        steps.append(Step(a, n, sp))
        left -= n
    return steps


def coverage_script(pairs_per_action: int = 8) -> list[Step]:
    """All 81 combinations, keys-major, with the mouse order arranged so tilts up and down alternate
    and the pitch returns to zero after every key group."""
    order = ("·", "→", "↑", "←", "↓", "↑→", "↓←", "↑←", "↓→")
    assert sorted(order) == sorted(MOUSE)
    return [Step(Action(k, m), pairs_per_action) for k in KEYS for m in order]


def script_from_keys(text: str, pairs_per_step: int = 1) -> list[Step]:
    """A keyboard-grammar script ("W*16, W+→*8") as steps of ``pairs_per_step`` pairs each."""
    return [Step(a, pairs_per_step) for a in parse_keys(text)]


def expand(script: list[Step]) -> list[Action]:
    return [s.action for s in script for _ in range(s.pairs)]

# ----------------------------------------------------------------------------------------- motion


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def simulate(script: list[Step], cfg: WorldConfig = WorldConfig(), yaw: float = 0.0,
             pitch: float = 0.0) -> np.ndarray:
    """Camera-to-world poses (N, 4, 4), N = pairs + 1, starting at the origin at eye height.

    R = R_y(yaw) R_x(pitch): yaw > 0 turns toward +x (right), pitch > 0 looks up (-y). Between frames i
    and i+1 the camera moves along the heading of frame i (so the motion in frame i's camera frame has
    no sideways part for W/S) and then turns: the action of pair i is exactly the scripted one.
    """
    step_len = cfg.walk_speed / cfg.fps
    turn, tilt = math.radians(cfg.turn_speed_deg) / cfg.fps, math.radians(cfg.tilt_speed_deg) / cfg.fps
    lim = math.radians(cfg.max_pitch_deg) + 1e-9
    pos = np.array([0.0, -cfg.eye_height, 0.0])
    poses = []

    def pose():
        T = np.eye(4)
        T[:3, :3] = _rot_y(yaw) @ _rot_x(pitch)
        T[:3, 3] = pos
        return T

    poses.append(pose())
    for s in script:
        if s.pairs < 0 or not s.speed > 0:
            raise ValueError(f"bad script step {s}")
        rx = sum(_KEY_DIR[k][0] for k in s.action.keys.split("+") if k in _KEY_DIR)
        fz = sum(_KEY_DIR[k][1] for k in s.action.keys.split("+") if k in _KEY_DIR)
        norm = math.hypot(rx, fz) or 1.0
        dyaw = (1 if "→" in s.action.mouse else -1 if "←" in s.action.mouse else 0) * turn * s.speed
        dpitch = _vertical(s.action.mouse) * tilt * s.speed
        for _ in range(s.pairs):
            fwd = np.array([math.sin(yaw), 0.0, math.cos(yaw)])
            right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
            pos = pos + step_len * s.speed * (rx * right + fz * fwd) / norm
            yaw, pitch = yaw + dyaw, pitch + dpitch
            if abs(pitch) > lim:
                raise ValueError(f"script tilts the camera past ±{cfg.max_pitch_deg} degrees "
                                 f"(pitch {math.degrees(pitch):.1f}); balance ↑ and ↓ steps")
            poses.append(pose())
    return np.stack(poses)

# ----------------------------------------------------------------------------------------- textures


def _hash(ix: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Integer lattice -> uniform [0, 1) (a 32-bit integer hash)."""
    h = (ix.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32) * np.uint32(0x8DA6B343)
    h ^= (iz.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32) * np.uint32(0xD8163841)
    h ^= np.uint32((seed * 0x9E3779B9) & 0xFFFFFFFF)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return h.astype(np.float32) * np.float32(2.0 ** -32)


def _noise(x: np.ndarray, z: np.ndarray, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1)."""
    fx, fz = np.floor(x), np.floor(z)
    ix, iz = fx.astype(np.int64), fz.astype(np.int64)
    u, v = x - fx, z - fz
    u, v = u * u * (3 - 2 * u), v * v * (3 - 2 * v)
    a, b = _hash(ix, iz, seed), _hash(ix + 1, iz, seed)
    c, d = _hash(ix, iz + 1, seed), _hash(ix + 1, iz + 1, seed)
    return (a + (b - a) * u) * (1 - v) + (c + (d - c) * u) * v


def _fbm(x, z, seed, octaves=3):
    out, amp, norm = 0.0, 1.0, 0.0
    for o in range(octaves):
        out = out + amp * _noise(x, z, seed + 101 * o)
        norm += amp
        x, z, amp = x * 2.03, z * 2.03, amp * 0.5
    return out / norm


def _pulse(u: np.ndarray, lo: float, hi: float, width: np.ndarray) -> np.ndarray:
    """Box-filtered indicator of frac(u) in [lo, hi) over a footprint ``width`` (anti-aliased pattern)."""
    def integral(x):
        f = np.floor(x)
        return f * (hi - lo) + np.clip(x - f - lo, 0.0, hi - lo)
    w = np.maximum(width, 1e-4)
    return (integral(u + w / 2) - integral(u - w / 2)) / w


def _smoothstep(a, b, x):
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _hsv(h, s, v) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)

# ----------------------------------------------------------------------------------------- scene


@dataclasses.dataclass
class Scene:
    """Objects as arrays (world units; y down). Patterns: 0 plain, 1 stripes, 2 checker, 3 windows, 4 bark."""

    sph_c: np.ndarray  # (S, 3) centres
    sph_r: np.ndarray  # (S,)
    sph_col: np.ndarray  # (S, 3)
    sph_pat: np.ndarray  # (S,)
    box_lo: np.ndarray  # (B, 3)
    box_hi: np.ndarray  # (B, 3)
    box_col: np.ndarray
    box_pat: np.ndarray
    cyl_c: np.ndarray  # (C, 2) x, z
    cyl_r: np.ndarray
    cyl_top: np.ndarray  # y of the top (negative); bottom at y = 0
    cyl_col: np.ndarray
    cyl_pat: np.ndarray
    sun: np.ndarray  # unit vector toward the sun
    seed: int
    ground_cols: np.ndarray  # (2, 3): paving, grass
    sky_cols: np.ndarray  # (3, 3): horizon, zenith, mountains
    mountain: np.ndarray  # (3, 2) skyline harmonics: amplitude, phase

    def scaled(self, s: float) -> "Scene":
        return dataclasses.replace(self, sph_c=self.sph_c * s, sph_r=self.sph_r * s, box_lo=self.box_lo * s,
                                   box_hi=self.box_hi * s, cyl_c=self.cyl_c * s, cyl_r=self.cyl_r * s,
                                   cyl_top=self.cyl_top * s)


def make_scene(rng: np.random.Generator, path_xz: np.ndarray, cfg: WorldConfig = WorldConfig(),
               clearance: float = 1.0) -> Scene:
    """Scatter objects along a camera path (N, 2) so that none comes closer than ``clearance`` to it
    (the camera never walks into an object), denser near the path."""
    path_xz = np.asarray(path_xz, np.float64).reshape(-1, 2)
    length = float(np.sum(np.linalg.norm(np.diff(path_xz, axis=0), axis=1))) if len(path_xz) > 1 else 0.0
    n_target = int(cfg.objects_min + cfg.objects_per_m * length)
    sub = path_xz[:: max(1, len(path_xz) // 400)]
    placed: list[tuple[float, float, float]] = []  # x, z, footprint radius
    spheres, boxes, cyls = [], [], []

    def free(x, z, rad):
        if np.min(np.hypot(sub[:, 0] - x, sub[:, 1] - z)) < rad + clearance:
            return False
        return all(math.hypot(px - x, pz - z) > pr + rad + 0.3 for px, pz, pr in placed)

    tries = 0
    while len(placed) < n_target and tries < n_target * 40:
        tries += 1
        anchor = path_xz[int(rng.integers(len(path_xz)))]
        ang, dist = rng.uniform(0, 2 * math.pi), min(1.5 + rng.exponential(9.0), 45.0)
        x, z = anchor[0] + dist * math.cos(ang), anchor[1] + dist * math.sin(ang)
        kind = rng.choice(["building", "tree", "pillar", "sphere", "crate"], p=[0.3, 0.25, 0.15, 0.15, 0.15])
        if kind == "building":
            hx, hz, h = rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0), rng.uniform(3.0, 12.0)
            rad = math.hypot(hx, hz)
            if not free(x, z, rad):
                continue
            col = _hsv(rng.uniform(0, 1), rng.uniform(0.15, 0.45), rng.uniform(0.55, 0.9))
            boxes.append(((x - hx, -h, z - hz), (x + hx, 0.0, z + hz), col, 3))
        elif kind == "crate":
            hx, h = rng.uniform(0.3, 0.8), rng.uniform(0.5, 1.4)
            rad = hx * math.sqrt(2)
            if not free(x, z, rad):
                continue
            col = _hsv(rng.uniform(0, 1), rng.uniform(0.5, 0.85), rng.uniform(0.55, 0.95))
            boxes.append(((x - hx, -h, z - hx), (x + hx, 0.0, z + hx), col, 1 + int(rng.integers(2))))
        elif kind == "tree":
            r_c = rad = rng.uniform(1.0, 2.2)
            if not free(x, z, r_c):
                continue
            trunk = rng.uniform(1.8, 3.5)
            bark = np.array([0.42, 0.3, 0.2], np.float32)
            cyls.append(((x, z), rng.uniform(0.12, 0.25), -trunk - 0.5 * r_c, bark, 4))
            spheres.append(((x, -trunk - r_c * 0.8, z), r_c,
                            _hsv(rng.uniform(0.22, 0.38), rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.65)), 0))
        elif kind == "pillar":
            r = rad = rng.uniform(0.2, 0.6)
            if not free(x, z, r):
                continue
            cyls.append(((x, z), r, -rng.uniform(1.0, 5.0),
                         _hsv(rng.uniform(0, 1), rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.95)), 1))
        else:
            r = rad = rng.uniform(0.4, 1.3)
            if not free(x, z, r):
                continue
            y = -r if rng.random() < 0.6 else -r - rng.uniform(0.5, 2.5)
            spheres.append(((x, y, z), r, _hsv(rng.uniform(0, 1), rng.uniform(0.6, 0.95), rng.uniform(0.6, 1.0)),
                            int(rng.integers(3))))
        placed.append((x, z, rad))

    def arr(items, i, shape, dtype=np.float32):
        return np.array([it[i] for it in items], dtype).reshape(shape)

    el, az = math.radians(rng.uniform(30, 60)), rng.uniform(0, 2 * math.pi)
    sun = np.array([math.cos(el) * math.sin(az), -math.sin(el), math.cos(el) * math.cos(az)], np.float32)
    grass = _hsv(rng.uniform(0.2, 0.3), rng.uniform(0.45, 0.7), rng.uniform(0.35, 0.55))
    paving = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.05, 0.25), rng.uniform(0.55, 0.75))
    horizon = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.1, 0.25), 0.92)
    zenith = _hsv(rng.uniform(0.57, 0.64), rng.uniform(0.45, 0.7), rng.uniform(0.75, 0.9))
    mount = _hsv(rng.uniform(0.55, 0.7), rng.uniform(0.15, 0.3), rng.uniform(0.5, 0.65))
    return Scene(
        sph_c=arr(spheres, 0, (-1, 3)), sph_r=arr(spheres, 1, (-1,)), sph_col=arr(spheres, 2, (-1, 3)),
        sph_pat=arr(spheres, 3, (-1,), np.int32),
        box_lo=arr(boxes, 0, (-1, 3)), box_hi=arr(boxes, 1, (-1, 3)), box_col=arr(boxes, 2, (-1, 3)),
        box_pat=arr(boxes, 3, (-1,), np.int32),
        cyl_c=arr(cyls, 0, (-1, 2)), cyl_r=arr(cyls, 1, (-1,)), cyl_top=arr(cyls, 2, (-1,)),
        cyl_col=arr(cyls, 3, (-1, 3)), cyl_pat=arr(cyls, 4, (-1,), np.int32),
        sun=sun, seed=int(rng.integers(1 << 30)), ground_cols=np.stack([paving, grass]),
        sky_cols=np.stack([horizon, zenith, mount]),
        mountain=np.stack([rng.uniform(0.2, 1.0, 3), rng.uniform(0, 2 * math.pi, 3)], 1).astype(np.float32))

# ----------------------------------------------------------------------------------------- ray casting

_EPS = 1e-3


def _hit_spheres(o, d, c, r):
    """Nearest positive t per ray (P,) and object index; o (P,3) or (1,3), d (P,3)."""
    if len(c) == 0:
        return np.full(len(d), np.inf, np.float32), np.zeros(len(d), np.int64)
    oc = o[:, None, :] - c[None]  # (P|1, S, 3)
    b = np.einsum("pk,psk->ps", d, oc) if len(o) > 1 else d @ oc[0].T
    cc = np.sum(oc * oc, -1) - r * r
    disc = b * b - cc
    sq = np.sqrt(np.maximum(disc, 0))
    t = -b - sq
    t = np.where(t > _EPS, t, -b + sq)  # from inside (shadow rays leaving a surface)
    t = np.where((disc > 0) & (t > _EPS), t, np.inf)
    i = np.argmin(t, 1)
    return np.take_along_axis(t, i[:, None], 1)[:, 0], i


def _hit_boxes(o, d, lo, hi):
    if len(lo) == 0:
        return np.full(len(d), np.inf, np.float32), np.zeros(len(d), np.int64)
    inv = 1.0 / np.where(np.abs(d) < 1e-9, 1e-9, d)
    t1 = (lo[None] - o[:, None]) * inv[:, None]
    t2 = (hi[None] - o[:, None]) * inv[:, None]
    tn = np.max(np.minimum(t1, t2), -1)
    tf = np.min(np.maximum(t1, t2), -1)
    t = np.where(tn > _EPS, tn, tf)
    t = np.where((tn <= tf) & (t > _EPS), t, np.inf)
    i = np.argmin(t, 1)
    return np.take_along_axis(t, i[:, None], 1)[:, 0], i


def _hit_cylinders(o, d, c, r, top):
    if len(c) == 0:
        return np.full(len(d), np.inf, np.float32), np.zeros(len(d), np.int64)
    ox, oz = o[:, None, 0] - c[None, :, 0], o[:, None, 2] - c[None, :, 1]
    dx, dz = d[:, None, 0], d[:, None, 2]
    a = np.maximum(dx * dx + dz * dz, 1e-12)
    b = ox * dx + oz * dz
    cc = ox * ox + oz * oz - r * r
    disc = b * b - a * cc
    sq = np.sqrt(np.maximum(disc, 0))
    t = (-b - sq) / a
    t = np.where(t > _EPS, t, (-b + sq) / a)
    y = o[:, None, 1] + t * d[:, None, 1]
    t = np.where((disc > 0) & (t > _EPS) & (y >= top) & (y <= 0), t, np.inf)
    dy = d[:, None, 1]
    tc = (top - o[:, None, 1]) / np.where(np.abs(dy) < 1e-9, 1e-9, dy)  # top cap
    cx, cz = ox + tc * dx, oz + tc * dz
    tc = np.where((tc > _EPS) & (cx * cx + cz * cz <= r * r), tc, np.inf)
    t = np.minimum(t, tc)
    i = np.argmin(t, 1)
    return np.take_along_axis(t, i[:, None], 1)[:, 0], i


def _bounds(sc: Scene):
    """Bounding spheres of all objects: kinds (1 sphere, 2 box, 3 cylinder), indices, centres, radii."""
    cs = [sc.sph_c, (sc.box_lo + sc.box_hi) / 2,
          np.stack([sc.cyl_c[:, 0], sc.cyl_top / 2, sc.cyl_c[:, 1]], 1).reshape(-1, 3)]
    rs = [sc.sph_r, np.linalg.norm(sc.box_hi - sc.box_lo, axis=1) / 2, np.hypot(sc.cyl_r, sc.cyl_top / 2)]
    kinds = np.concatenate([np.full(len(c), k) for k, c in zip((1, 2, 3), cs)]).astype(np.int64)
    idx = np.concatenate([np.arange(len(c)) for c in cs]).astype(np.int64)
    return kinds, idx, np.concatenate(cs).reshape(-1, 3), np.concatenate(rs) * 1.001 + 1e-4


def _hit_one(sc: Scene, kind: int, j: int, o, d) -> np.ndarray:
    sl = slice(j, j + 1)
    if kind == 1:
        return _hit_spheres(o, d, sc.sph_c[sl], sc.sph_r[sl])[0]
    if kind == 2:
        return _hit_boxes(o, d, sc.box_lo[sl], sc.box_hi[sl])[0]
    return _hit_cylinders(o, d, sc.cyl_c[sl], sc.cyl_r[sl], sc.cyl_top[sl])[0]


def _screen_range(a: float, z: float, r: float, f: float, c: float, size: int) -> tuple[int, int]:
    """Pixel range [lo, hi) covering a sphere (camera coordinates a (x or y), z, radius r) on one image axis:
    the tangent planes through the camera centre are at angles atan2(a, z) ± asin(r / hypot(a, z))."""
    d2 = math.hypot(a, z)
    if d2 <= r:
        return 0, size
    th, al = math.atan2(a, z), math.asin(r / d2)
    lo, hi = th - al, th + al
    if hi <= -math.pi / 2 or lo >= math.pi / 2:
        return 0, 0
    p0 = 0 if lo <= -math.pi / 2 else int(math.floor(f * math.tan(lo) + c))
    p1 = size if hi >= math.pi / 2 else int(math.ceil(f * math.tan(hi) + c)) + 1
    return max(p0, 0), min(p1, size)


def _shadowed(sc: Scene, pts: np.ndarray, sun: np.ndarray, bounds) -> np.ndarray:
    """Whether each point sees the sun: rays toward the sun, tested only against objects whose bounding
    sphere covers the point in light space (points sorted along one light-space axis)."""
    out = np.zeros(len(pts), bool)
    if len(pts) == 0:
        return out
    u1 = np.cross(sun, np.array([0.0, 1.0, 0.0], np.float32))
    u1 /= np.linalg.norm(u1)
    u2 = np.cross(sun, u1)
    a, b, h = pts @ u1, pts @ u2, pts @ sun
    order = np.argsort(a)
    a_sorted = a[order]
    dirs = np.broadcast_to(sun, pts.shape)
    for kind, j, c, r in zip(*bounds):
        ca, cb, ch = float(c @ u1), float(c @ u2), float(c @ sun)
        i0, i1 = np.searchsorted(a_sorted, [ca - r, ca + r])
        if i1 <= i0:
            continue
        cand = order[i0:i1]
        cand = cand[(np.abs(b[cand] - cb) <= r) & (h[cand] < ch + r) & ~out[cand]]
        if len(cand):
            out[cand[np.isfinite(_hit_one(sc, kind, j, pts[cand], dirs[cand]))]] = True
    return out


def _cull(sc: Scene, cam: np.ndarray, radius: float) -> Scene:
    """Objects within ``radius`` of the camera (in xz)."""
    def near(xz, ext):
        return np.hypot(xz[:, 0] - cam[0], xz[:, 1] - cam[2]) < radius + ext
    s = near(sc.sph_c[:, [0, 2]], sc.sph_r)
    b = near((sc.box_lo[:, [0, 2]] + sc.box_hi[:, [0, 2]]) / 2, np.max(sc.box_hi - sc.box_lo, 1))
    c = near(sc.cyl_c, sc.cyl_r)
    return dataclasses.replace(sc, sph_c=sc.sph_c[s], sph_r=sc.sph_r[s], sph_col=sc.sph_col[s], sph_pat=sc.sph_pat[s],
                               box_lo=sc.box_lo[b], box_hi=sc.box_hi[b], box_col=sc.box_col[b], box_pat=sc.box_pat[b],
                               cyl_c=sc.cyl_c[c], cyl_r=sc.cyl_r[c], cyl_top=sc.cyl_top[c], cyl_col=sc.cyl_col[c],
                               cyl_pat=sc.cyl_pat[c])


def _sky(d: np.ndarray, o: np.ndarray, sc: Scene) -> np.ndarray:
    horizon, zenith, mount = sc.sky_cols
    up = -d[:, 1]
    col = horizon + (zenith - horizon) * np.clip(up, 0, 1)[:, None] ** 0.6
    # clouds on a plane 60 units up, fading toward the horizon
    t = 60.0 / np.maximum(up, 0.02)
    px, pz = o[0] + t * d[:, 0], o[2] + t * d[:, 2]
    cover = _smoothstep(0.5, 0.75, _fbm(px / 40.0, pz / 40.0, sc.seed + 7, 4)) * np.clip(up * 6 - 0.1, 0, 1)
    col = col + (np.float32(0.97) - col) * (0.85 * cover)[:, None]
    # distant mountains: a skyline over azimuth (infinitely far: only rotation moves them)
    az = np.arctan2(d[:, 0], d[:, 2])
    skyline = 0.03 + sum(0.025 * a * (1 + np.sin((k + 1) * 2 * az + p)) for k, (a, p) in enumerate(sc.mountain))
    skyline = skyline + 0.008 * (_noise(az * 12.0, 0.0 * az, sc.seed + 3) - 0.5)
    elev = np.arcsin(np.clip(up, -1, 1))
    m = (elev < skyline)[:, None]
    mcol = mount + (horizon - mount) * np.clip(1 - elev / 0.12, 0, 1)[:, None] * 0.5
    col = np.where(m, mcol, col)
    cs = d @ sc.sun
    col = col + np.float32(0.35) * np.clip(cs, 0, 1)[:, None] ** 48 + np.where(cs > 0.9993, 1.5, 0.0)[:, None]
    return col


def camera_rays(c2w: np.ndarray, cfg: WorldConfig = WorldConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Camera centre (3,) and unit world-space ray directions (H*W, 3), row-major over pixels, through
    pixel centres at integer coordinates of ``cfg.intrinsics()`` (scaled by ``cfg.supersample``)."""
    R = np.asarray(c2w, np.float64)[:3, :3].astype(np.float32)
    return np.asarray(c2w, np.float64)[:3, 3].astype(np.float32), ray_directions(cfg) @ R.T


def ray_directions(cfg: WorldConfig = WorldConfig()) -> np.ndarray:
    """Unit camera-space ray directions (H*W, 3) of :func:`camera_rays`: ``cfg.ray_directions()``."""
    return cfg.ray_directions()


def trace(scene: Scene, c2w: np.ndarray, cfg: WorldConfig = WorldConfig()):
    """Primary rays: distance t (H*W,), hit kind (-1 sky, 0 ground, 1 sphere, 2 box, 3 cylinder) and object
    index. The ground is intersected everywhere; each object only inside the pixel box its bounding
    sphere projects to (exact tangent-plane bounds), which gives the same result as testing every ray
    against every object at a fraction of the cost."""
    k = max(1, int(cfg.supersample))
    H, W = cfg.height * k, cfg.width * k
    f = cfg.intrinsics()[0, 0] * k
    cx, cy = (W - 1) / 2, (H - 1) / 2
    o, d = camera_rays(c2w, cfg)
    R = np.asarray(c2w, np.float64)[:3, :3].astype(np.float32)
    o1 = o[None]
    t = np.where(d[:, 1] > 1e-6, -o[1] / np.maximum(d[:, 1], 1e-6), np.inf).astype(np.float32)
    kind = np.where(np.isfinite(t), 0, -1)
    obj = np.zeros(len(d), np.int64)
    tb_, kb_, ob_, db_ = t.reshape(H, W), kind.reshape(H, W), obj.reshape(H, W), d.reshape(H, W, 3)
    for kd, j, c, r in zip(*_bounds(scene)):
        pc = (c - o) @ R  # camera coordinates
        if pc[2] < -r:
            continue
        u0, u1 = _screen_range(float(pc[0]), float(pc[2]), float(r), f, cx, W)
        v0, v1 = _screen_range(float(pc[1]), float(pc[2]), float(r), f, cy, H)
        if u1 <= u0 or v1 <= v0:
            continue
        th = _hit_one(scene, kd, j, o1, db_[v0:v1, u0:u1].reshape(-1, 3)).reshape(v1 - v0, u1 - u0)
        closer = th < tb_[v0:v1, u0:u1]
        tb_[v0:v1, u0:u1][closer] = th[closer]
        kb_[v0:v1, u0:u1][closer] = kd
        ob_[v0:v1, u0:u1][closer] = j
    return t, kind, obj


def render(scene: Scene, c2w: np.ndarray, cfg: WorldConfig = WorldConfig(), fog_color=None) -> np.ndarray:
    """One frame, uint8 (H, W, 3), seen from an OpenCV c2w pose with ``cfg.intrinsics()``."""
    k = max(1, int(cfg.supersample))
    H, W = cfg.height * k, cfg.width * k
    pix = np.float32(k / cfg.intrinsics()[0, 0])  # radians per (supersampled) pixel
    o, d = camera_rays(c2w, cfg)
    sc = _cull(scene, o, 3.5 * cfg.fog_distance)
    bounds = _bounds(sc)
    t, kind, obj = trace(sc, c2w, cfg)
    o1 = o[None]
    isph = ibox = icyl = obj
    p = o1 + t[:, None] * d
    n = np.zeros_like(d)
    alb = np.zeros_like(d)
    foot = t * pix  # world size of a pixel footprint (before the incidence factor)

    g = kind == 0
    if g.any():
        pg, fg = p[g], foot[g] / np.maximum(d[g, 1], 0.05)
        n[g] = (0, -1, 0)
        grassy = _smoothstep(0.45, 0.6, _fbm(pg[:, 0] / 9.0, pg[:, 2] / 9.0, sc.seed + 1))
        tile = _hash(np.floor(pg[:, 0] / 1.2).astype(np.int64), np.floor(pg[:, 2] / 1.2).astype(np.int64), sc.seed)
        grout = _pulse(pg[:, 0] / 1.2, 0.0, 0.06, fg / 1.2) + _pulse(pg[:, 2] / 1.2, 0.0, 0.06, fg / 1.2)
        aa = np.clip(1 - fg / 0.6, 0, 1)  # tiles fade to their mean when a pixel covers a whole tile
        pav = sc.ground_cols[0] * (1 + (0.25 * (tile - 0.5) * aa))[:, None] * (1 - 0.45 * np.clip(grout, 0, 1))[:, None]
        gn = _fbm(pg[:, 0] * 1.7, pg[:, 2] * 1.7, sc.seed + 2, 2)
        grs = sc.ground_cols[1] * (0.75 + 0.5 * (0.5 + (gn - 0.5) * np.clip(1 - fg / 0.4, 0.2, 1)))[:, None]
        alb[g] = pav + (grs - pav) * grassy[:, None]

    s = kind == 1
    if s.any():
        i = isph[s]
        nn = (p[s] - sc.sph_c[i]) / sc.sph_r[i][:, None]
        n[s] = nn
        fs = foot[s] / sc.sph_r[i]
        lat = np.arcsin(np.clip(nn[:, 1], -1, 1)) / math.pi * 4
        lon = (np.arctan2(nn[:, 0], nn[:, 2]) / math.pi + 1) * 4
        stripe = _pulse(lat, 0, 0.5, fs * 1.3)
        checker = np.abs(_pulse(lat, 0, 0.5, fs * 1.3) - _pulse(lon, 0, 0.5, fs * 1.3))
        pat = sc.sph_pat[i]
        m = np.where(pat == 1, stripe, np.where(pat == 2, checker, 0.0))
        q = p[s]
        leaves = 0.8 + 0.4 * (_noise(q[:, 0] * 3 + q[:, 1] * 2, q[:, 2] * 3 - q[:, 1], sc.seed + 9) - 0.5) * np.clip(
            1 - fs * 2, 0.2, 1) + 0.2  # speckled crowns (pattern 0), fading with distance
        m = np.where(pat == 0, 0.0, m)
        alb[s] = sc.sph_col[i] * (1 - 0.55 * m)[:, None] + np.float32(0.9) * (0.55 * m)[:, None]
        alb[s] = alb[s] * np.where(pat == 0, leaves, 1.0)[:, None]

    b = kind == 2
    if b.any():
        i = ibox[b]
        pb, lo, hi = p[b], sc.box_lo[i], sc.box_hi[i]
        dist = np.stack([np.abs(pb - lo), np.abs(pb - hi)], 1)  # (n, 2, 3)
        face = np.argmin(dist.reshape(-1, 6), 1)
        ax, side = face % 3, face // 3
        nn = np.zeros_like(pb)
        nn[np.arange(len(pb)), ax] = np.where(side == 1, 1.0, -1.0)
        n[b] = nn
        uu = np.where(ax == 0, pb[:, 2], pb[:, 0])
        vv = np.where(ax == 1, pb[:, 2], pb[:, 1])
        fb = foot[b]
        pat = sc.box_pat[i]
        win = _pulse(uu / 1.3, 0.25, 0.75, fb / 1.3) * _pulse(vv / 1.6, 0.3, 0.8, fb / 1.6) * (ax != 1)
        win = win * (vv < -0.8)  # no windows at street level... and doors are walls
        plank = _pulse(vv / 0.25, 0, 0.12, fb / 0.25)
        chk = np.abs(_pulse(uu / 0.5, 0, 0.5, fb / 0.5) - _pulse(vv / 0.5, 0, 0.5, fb / 0.5))
        base = sc.box_col[i]
        glass = np.array([0.18, 0.24, 0.32], np.float32)
        m = np.where(pat == 3, 0.0, np.where(pat == 1, 0.35 * plank, 0.3 * chk))
        alb[b] = base * (1 - m)[:, None]
        alb[b] = np.where((pat == 3)[:, None], alb[b] + (glass - alb[b]) * win[:, None], alb[b])

    c = kind == 3
    if c.any():
        i = icyl[c]
        pc = p[c]
        capped = np.abs(pc[:, 1] - sc.cyl_top[i]) < 1e-3
        radial = np.stack([pc[:, 0] - sc.cyl_c[i, 0], np.zeros(len(pc), np.float32), pc[:, 2] - sc.cyl_c[i, 1]], 1)
        radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-6)
        n[c] = np.where(capped[:, None], np.array([0, -1, 0], np.float32), radial)
        fc = foot[c]
        pat = sc.cyl_pat[i]
        rings = _pulse(pc[:, 1] / 0.5, 0, 0.5, fc / 0.5)
        ang = np.arctan2(radial[:, 0], radial[:, 2]) * sc.cyl_r[i]
        bark = _pulse(ang / 0.08 + 0.3 * _noise(pc[:, 1] * 4, ang * 10, sc.seed), 0, 0.4, fc / 0.08)
        m = np.where(pat == 1, 0.5 * rings, 0.3 * bark)
        alb[c] = sc.cyl_col[i] * (1 - m)[:, None] + np.where(pat == 1, 0.45 * m, 0)[:, None]

    hit = kind >= 0
    col = np.zeros_like(d)
    if hit.any():
        ph, nh = p[hit], n[hit]
        lam = np.clip(nh @ sc.sun, 0, 1)
        if cfg.shadows:
            lit = lam > 0
            sh = np.zeros(len(ph), bool)
            if lit.any():
                sh[lit] = _shadowed(sc, ph[lit] + nh[lit] * 2e-3, sc.sun, bounds)
            lam = np.where(sh, 0.0, lam)
        ambient = 0.42 + 0.18 * (-nh[:, 1])  # more sky light on upward faces
        shade = ambient[:, None] * np.array([0.85, 0.9, 1.05], np.float32) + lam[:, None] * np.array(
            [1.0, 0.95, 0.85], np.float32) * 0.75
        col[hit] = alb[hit] * shade
    if (~hit).any():
        col[~hit] = _sky(d[~hit], o, sc)
    fogc = sc.sky_cols[0] if fog_color is None else fog_color
    fog = np.where(hit, 1 - np.exp(-t / cfg.fog_distance) ** 1.5, 0.0)[:, None]
    col = col + (fogc - col) * fog
    col = np.clip(col, 0, 1) ** (1 / 1.1)
    img = col.reshape(H, W, 3)
    if k > 1:
        img = img.reshape(cfg.height, k, cfg.width, k, 3).mean((1, 3))
    return (img * 255 + 0.5).astype(np.uint8)

# ----------------------------------------------------------------------------------------- clips


@dataclasses.dataclass
class Clip:
    frames: np.ndarray  # uint8 (N, H, W, 3)
    c2w: np.ndarray  # float64 (N, 4, 4), world units (metres)
    intrinsic: np.ndarray  # (3, 3)
    actions: list[Action]  # per frame pair, N - 1
    script: list[Step]
    scene: Scene


BACKENDS = ("numpy", "jax")


def plan_clip(seed, num_frames: int = 160, cfg: WorldConfig = WorldConfig(), script: list[Step] | None = None):
    """Everything of :func:`make_clip` but the frames: (script, actions, c2w, scene), from the seed's rng."""
    rng = np.random.default_rng(seed)
    if num_frames < 2:
        raise ValueError(f"num_frames must be >= 2, got {num_frames}")
    if script is None:
        script = random_script(rng, num_frames - 1, cfg)
    actions = expand(script)
    if len(actions) != num_frames - 1:
        raise ValueError(f"script has {len(actions)} frame pairs, clip needs {num_frames - 1}")
    yaw = float(rng.uniform(-math.pi, math.pi))
    c2w = simulate(script, cfg, yaw=yaw)
    scene = make_scene(rng, c2w[:, [0, 2], 3], cfg)
    return script, actions, c2w, scene


def render_walk(seed, script: list[Step], cfg: WorldConfig = WorldConfig(),
                frames=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact continuation of a start view along a script, rendering only the frame indices ``frames``
    (default: all): the world, poses and frames are those of ``make_clip(seed, script=script)`` (frame 0 is
    the start view). Returns (frames uint8 (len(frames), H, W, 3), c2w of ALL frames (N, 4, 4), K)."""
    _, _, c2w, scene = plan_clip(seed, len(expand(script)) + 1, cfg, script)
    idx = range(len(c2w)) if frames is None else [int(i) for i in frames]
    for i in idx:
        if not 0 <= i < len(c2w):
            raise ValueError(f"frame {i} outside the walk's {len(c2w)} frames")
    out = np.stack([render(scene, c2w[i], cfg) for i in idx]) if len(idx) else np.zeros(
        (0, cfg.height, cfg.width, 3), np.uint8)
    return out, c2w, cfg.intrinsics()


def make_clip(seed, num_frames: int = 160, cfg: WorldConfig = WorldConfig(), script: list[Step] | None = None,
              progress: bool = False, backend: str = "numpy") -> Clip:
    """A clip: a random (or given) script, its exact trajectory, a world built around it, the frames.

    ``backend="jax"`` renders the same frames with :mod:`yume_jax.data.world_jax` (jit-compiled, equal to
    this module's up to float rounding, see tests/test_world_jax.py)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    script, actions, c2w, scene = plan_clip(seed, num_frames, cfg, script)
    if backend == "jax":
        from yume_jax.data import world_jax
        frames = world_jax.render_frames(scene, c2w, cfg)
        return Clip(frames, c2w, cfg.intrinsics(), actions, script, scene)
    it = range(num_frames)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="render", leave=False)
    frames = np.stack([render(scene, c2w[i], cfg) for i in it])
    return Clip(frames, c2w, cfg.intrinsics(), actions, script, scene)


@dataclasses.dataclass
class Clips:
    """N clips of T frames: the batched :class:`Clip` (:func:`render_clips`)."""

    frames: np.ndarray  # uint8 (N, T, H, W, 3)
    c2w: np.ndarray  # float64 (N, T, 4, 4)
    intrinsic: np.ndarray  # (3, 3)
    actions: list[list[Action]]  # per clip, T - 1
    scripts: list[list[Step]]
    scenes: list[Scene]


def render_clips(seeds, num_frames: int = 160, cfg: WorldConfig = WorldConfig(),
                 scripts: list[list[Step] | None] | None = None, backend: str = "numpy",
                 cap: int | tuple[int, int, int] | str | None = None,
                 frames_per_call: int | None = None, ray_chunk: int | None = -1) -> Clips:
    """Clips ``make_clip(seeds[i], num_frames, cfg, scripts[i])`` together: the same scripts, poses, actions
    and scenes, frames stacked (N, T, H, W, 3).

    ``backend="jax"`` renders every clip in one compiled program on the default JAX device
    (:func:`yume_jax.data.world_jax.render_walks`; frames equal up to float rounding): scenes are padded to
    ``cap`` objects per kind (default :func:`~yume_jax.data.world_jax.capacity` for ``num_frames``, raised
    to a multiple of 16 above the largest scene if needed), or per kind; ``cap="tight"``:
    :func:`~yume_jax.data.world_jax.tight_capacity` of these scenes (less work, a compile per new size).
    ``cap``, ``frames_per_call`` and ``ray_chunk`` (rays per step, -1: the platform default) are the JAX
    renderer's; the NumPy one renders frame by frame."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    seeds = list(seeds)
    scripts = [None] * len(seeds) if scripts is None else list(scripts)
    if len(scripts) != len(seeds):
        raise ValueError(f"{len(scripts)} scripts for {len(seeds)} seeds")
    plans = [plan_clip(s, num_frames, cfg, sc) for s, sc in zip(seeds, scripts)]
    scenes = [p[3] for p in plans]
    c2w = np.stack([p[2] for p in plans]) if plans else np.zeros((0, num_frames, 4, 4))
    if backend == "jax":
        from yume_jax.data import world_jax
        frames = world_jax.render_walks(scenes, c2w, cfg, cap, frames_per_call, ray_chunk)
    else:
        frames = np.stack([np.stack([render(sc, T, cfg) for T in walk]) for sc, walk in zip(scenes, c2w)]) if plans \
            else np.zeros((0, num_frames, cfg.height, cfg.width, 3), np.uint8)
    return Clips(frames, c2w, cfg.intrinsics(), [p[1] for p in plans], [p[0] for p in plans], scenes)


def normalize_poses(c2w: np.ndarray) -> tuple[np.ndarray, float]:
    """Sekai's per-video normalisation: one scale so every translation component is within [-1, 1]."""
    scale = float(np.max(np.abs(c2w[:, :3, 3]))) or 1.0
    out = c2w.copy()
    out[:, :3, 3] /= scale
    return out, scale


_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def source_name(seed, index: int, num_frames: int) -> str:
    """A Sekai-style ``{youtubeId}_{start:07d}_{end:07d}`` (11-character id, end exclusive)."""
    rng = np.random.default_rng([seed, index, 7])
    vid = "".join(_ID_ALPHABET[i] for i in rng.integers(len(_ID_ALPHABET), size=11))
    start = int(rng.integers(0, 90000))
    return f"{vid}_{start:07d}_{start + num_frames:07d}"


def describe(scene: Scene) -> str:
    """A one-sentence caption of a scene (the Sekai CSV's caption column)."""
    n_b = int(np.sum(scene.box_pat == 3))
    return (f"A sunny open plaza with paving and grass, {n_b} buildings, {len(scene.cyl_c)} trees and pillars, "
            f"{len(scene.sph_c)} round objects and crates under a blue sky with clouds and distant mountains.")


def _write_one(job) -> dict:
    from yume_jax.camera import format_keys, segment
    from yume_jax.data import sekai
    out, seed, i, layout, cfg, num_frames, script, min_clip_frames, codec, normalize, backend = job
    clip = make_clip([seed, i], num_frames, cfg, script=script, backend=backend)
    name = source_name(seed, i, num_frames)
    c2w, scale = normalize_poses(clip.c2w) if normalize else (clip.c2w, 1.0)
    if layout == "sekai":
        vf, cf = sekai.write_sekai_clip(out, name, clip.frames, c2w, clip.intrinsic, fps=cfg.fps, codec=codec)
        return {"videoFile": vf, "cameraFile": cf, "caption": describe(clip.scene), "location": "sandbox",
                "scene": "plaza", "crowdDensity": "empty", "weather": "sunny", "timeOfDay": "day",
                "actions": format_keys(clip.actions), "fps": cfg.fps, "poseScale": repr(scale)}
    sekai.write_full_video(out, name, clip.frames, fps=cfg.fps, codec=codec)
    for sg in segment(clip.actions, min_frames=min_clip_frames):
        sekai.write_yume_clip(out, name, sg.start, sg.end, clip.frames[sg.start:sg.end + 1],
                              c2w[sg.start:sg.end + 1], sg.action, fps=cfg.fps, codec=codec)
    return {}


def write_dataset(out, clips: int, seed: int, layout: str = "sekai", cfg: WorldConfig = WorldConfig(),
                  num_frames: int = 161, script: list[Step] | None = None, min_clip_frames: int = 17,
                  codec: str = "h264", normalize: bool = True, workers: int = 1, backend: str = "numpy") -> Path:
    """Render ``clips`` source videos (clip i from seed (seed, i)) into ``out`` in the Sekai or Yume layout.

    Poses are normalised per video like Sekai's (one scale, every translation component in [-1, 1]; the
    scale is the CSV's ``poseScale``) unless ``normalize`` is False. The Sekai CSV also carries the
    scripted per-pair actions (``actions``, keyboard grammar) and the frame rate. Yume layout: each
    constant-action run of at least ``min_clip_frames`` frames becomes a Keys_*_Mouse_* clip. ``backend``:
    "numpy" (this module's renderer) or "jax" (:mod:`yume_jax.data.world_jax`, same frames, GPU speed).
    """
    from yume_jax.data import sekai
    if layout not in ("sekai", "yume"):
        raise ValueError(f"unknown layout {layout!r}; valid: sekai, yume")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "jax" and workers > 1:
        raise ValueError("the jax backend renders in this process on its device: use workers=1")
    jobs = [(out, seed, i, layout, cfg, num_frames, script, min_clip_frames, codec, normalize, backend)
            for i in range(clips)]
    from tqdm import tqdm
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers) as pool:
            rows = list(tqdm(pool.imap(_write_one, jobs), total=clips, desc=f"sandbox {layout}"))
    else:
        rows = [_write_one(j) for j in tqdm(jobs, desc=f"sandbox {layout}")]
    if layout == "sekai":
        sekai.write_sekai_csv(out / "train" / "sekai-sandbox.csv", rows)
    return out


def strip(path, seeds=(3, 1), num_frames: int = 97, every: int = 16, cfg: WorldConfig = WorldConfig()) -> Path:
    """A PNG of frames ``0, every, 2 every, ...`` of one clip per seed (one row each), 2 px gaps."""
    from PIL import Image
    rows = []
    for seed in seeds:
        clip = make_clip(seed, num_frames, cfg)
        tiles = [clip.frames[i] for i in range(0, num_frames, every)]
        gap = np.full((cfg.height, 2, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in tiles for x in (t, gap)][:-1], 1))
    hgap = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    img = np.concatenate([x for r in rows for x in (r, hgap)][:-1], 0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, optimize=True)
    return path


# caps of the command line's numbers (python -m yume_jax.data.world --help)
CLI_LIMITS = {"clips": (1, 100_000), "seed": (0, 2**32 - 1), "frames": (2, 100_000), "height": (8, 8192),
              "width": (8, 8192), "min_clip_frames": (2, 100_000), "workers": (1, 256)}


def _main(argv=None):
    from yume_jax.core import cli
    from yume_jax.core.checkpoint import atomic_dir, output_lock

    ap = argparse.ArgumentParser(prog="python -m yume_jax.data.world", description=__doc__.split("\n\n")[0],
                                 epilog="Numbers: --clips 1..100000, --seed 0..2^32-1, --frames 2..100000, "
                                        "--height/--width 8..8192 (even), --min-clip-frames 2..100000, --workers "
                                        "1..256. --out must not exist (or be empty): the dataset appears complete "
                                        "or not at all. Exit codes: 0 ok, 2 bad input, 130/143 interrupted.")
    ap.add_argument("--out", type=Path, help="dataset directory to write")
    ap.add_argument("--strip", type=Path, help="instead: write a PNG strip of frames of 2 clips (seed, seed+1)")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layout", choices=["sekai", "yume"], default="sekai")
    ap.add_argument("--frames", type=int, default=161, help="frames per source video (16 fps)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--script", default="random",
                    help="'random', 'coverage' (all 81 actions) or a keyboard script such as 'W*40, W+→*40'")
    ap.add_argument("--min-clip-frames", type=int, default=17, help="yume layout: shortest constant-action clip")
    ap.add_argument("--codec", choices=["h264", "hevc"], default="h264")
    ap.add_argument("--no-normalize", action="store_true", help="keep metric translations (Sekai normalises)")
    ap.add_argument("--workers", type=int, default=1, help="render clips in parallel processes")
    ap.add_argument("--backend", choices=BACKENDS, default="numpy",
                    help="renderer: NumPy (reference) or JAX (jit-compiled, same frames; fast on a GPU)")
    args = ap.parse_args(argv)
    for name, (lo, hi) in CLI_LIMITS.items():
        v = getattr(args, name)
        if v is not None:
            cli.integer(v, "--" + name.replace("_", "-"), low=lo, high=hi)
    for name in ("height", "width"):
        if getattr(args, name) is not None and getattr(args, name) % 2:
            raise cli.UserError(f"--{name} must be even (yuv420p video), got {getattr(args, name)}")
    cfg = PRESETS[args.preset]
    cfg = cfg.replace(height=args.height or cfg.height, width=args.width or cfg.width)
    if args.strip is not None:
        print(f"wrote {strip(args.strip, (args.seed, args.seed + 1), cfg=cfg)}")
        return 0
    if args.out is None:
        ap.error("--out is required (or --strip)")
    out = args.out
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise cli.UserError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise cli.UserError(f"--out {out}: exists and is not empty (choose a new directory)")
    script = None
    try:
        if args.script == "coverage":
            script = coverage_script()
        elif args.script != "random":
            script = script_from_keys(args.script)
    except ValueError as e:
        raise cli.UserError(f"--script: {e}") from None
    frames = args.frames if script is None else sum(s.pairs for s in script) + 1
    with output_lock(out), atomic_dir(out) as tmp:
        write_dataset(tmp, args.clips, args.seed, args.layout, cfg=cfg, num_frames=frames, script=script,
                      min_clip_frames=args.min_clip_frames, codec=args.codec, normalize=not args.no_normalize,
                      workers=args.workers, backend=args.backend)
    print(f"wrote {args.clips} {args.layout}-layout sandbox videos to {out}")
    return 0


def main(argv=None) -> int:
    """The command line under :mod:`yume_jax.core.cli`'s policy (one line and exit 2 for bad input, 130 / 143
    when interrupted: the half-written dataset removed)."""
    from yume_jax.core import cli

    with cli.signals_raise():
        return cli.run(_main, argv, prog="python -m yume_jax.data.world")


if __name__ == "__main__":
    raise SystemExit(main())
