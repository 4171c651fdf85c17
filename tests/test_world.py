"""Sandbox world: scripted actions recovered by QCM, exact poses/intrinsics, parallax, occlusion, lighting."""
import math

import numpy as np
import pytest

from yume_jax.camera import ALL_ACTIONS, Action, quantize
from yume_jax.data import world

TINY = world.PRESETS["tiny"]


def _scene(spheres=(), boxes=(), cyls=(), sun=(0.3, -0.8, 0.5)) -> world.Scene:
    """A hand-made scene: spheres (centre, r, colour), boxes (lo, hi, colour), cylinders (xz, r, top, colour)."""
    f32 = lambda x, shape: np.asarray(x, np.float32).reshape(shape)  # noqa: E731
    sun = np.asarray(sun, np.float32) / np.linalg.norm(sun)
    return world.Scene(
        sph_c=f32([s[0] for s in spheres], (-1, 3)), sph_r=f32([s[1] for s in spheres], (-1,)),
        sph_col=f32([s[2] for s in spheres], (-1, 3)), sph_pat=np.zeros(len(spheres), np.int32),
        box_lo=f32([b[0] for b in boxes], (-1, 3)), box_hi=f32([b[1] for b in boxes], (-1, 3)),
        box_col=f32([b[2] for b in boxes], (-1, 3)), box_pat=np.zeros(len(boxes), np.int32),
        cyl_c=f32([c[0] for c in cyls], (-1, 2)), cyl_r=f32([c[1] for c in cyls], (-1,)),
        cyl_top=f32([c[2] for c in cyls], (-1,)), cyl_col=f32([c[3] for c in cyls], (-1, 3)),
        cyl_pat=np.zeros(len(cyls), np.int32), sun=sun, seed=1,
        ground_cols=np.array([[0.6, 0.6, 0.6], [0.3, 0.5, 0.2]], np.float32),
        sky_cols=np.array([[0.8, 0.85, 0.9], [0.4, 0.6, 0.9], [0.5, 0.55, 0.6]], np.float32),
        mountain=np.array([[0.5, 0.0], [0.5, 1.0], [0.5, 2.0]], np.float32))


def _pose(pos, yaw=0.0, pitch=0.0):
    T = np.eye(4)
    T[:3, :3] = world._rot_y(yaw) @ world._rot_x(pitch)
    T[:3, 3] = pos
    return T


def _project(K, c2w, X):
    x = np.linalg.inv(c2w) @ np.append(X, 1.0)
    return (K @ (x[:3] / x[2]))[:2], x[2]


def test_qcm_recovers_scripted_actions():
    cfg = world.WorldConfig()
    total = correct = 0
    seen = set()
    scripts = [world.coverage_script()] + [world.random_script(np.random.default_rng(s), 600, cfg) for s in range(6)]
    for script in scripts:
        c2w = world.simulate(script, cfg, yaw=0.7)
        want = world.expand(script)
        got = quantize(c2w)
        total += len(want)
        correct += sum(a == b for a, b in zip(got, want))
        seen |= set(want)
        # also after Sekai's normalisation and float32 storage (what the files hold)
        norm = world.normalize_poses(c2w)[0].astype(np.float32)
        assert np.mean([a == b for a, b in zip(quantize(norm), want)]) >= 0.99
    assert seen == set(ALL_ACTIONS)  # every key and mouse label is scripted
    assert correct / total >= 0.99, f"QCM recovered {correct}/{total}"


def test_simulate_geometry_and_limits():
    cfg = world.WorldConfig(fps=16, walk_speed=1.6)
    c2w = world.simulate(world.script_from_keys("W*16"), cfg)
    assert np.allclose(c2w[:, 1, 3], -cfg.eye_height)  # fixed eye height
    assert np.allclose(c2w[-1, :3, 3], [0, -cfg.eye_height, 1.6])  # 1 s at 1.6 m/s along +z
    for T in c2w:  # orthonormal, right-handed, no roll (x axis horizontal)
        assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12)
        assert np.isclose(np.linalg.det(T[:3, :3]), 1.0)
    turned = world.simulate(world.script_from_keys("→*16"), cfg)
    assert np.isclose(math.degrees(math.atan2(turned[-1, 0, 2], turned[-1, 2, 2])), cfg.turn_speed_deg)
    with pytest.raises(ValueError, match="tilts the camera past"):
        world.simulate(world.script_from_keys("↑*400"), cfg)
    cov = world.coverage_script(4)
    assert len(cov) == 81 and {s.action for s in cov} == set(ALL_ACTIONS)
    world.simulate(cov, cfg)  # balanced tilts stay within the pitch range


def test_projection_matches_intrinsics_and_poses():
    """A sphere's centre projects (K, inverse c2w) onto the pixel that shows it, from random poses."""
    cfg = TINY.replace(shadows=False)
    K = cfg.intrinsics()
    rng = np.random.default_rng(0)
    cases = 0
    while cases < 6:
        cam = _pose([rng.uniform(-2, 2), -1.6, rng.uniform(-2, 2)], yaw=rng.uniform(-3, 3), pitch=rng.uniform(-.4, .4))
        # place the sphere in view: 4..9 m ahead, off-centre, above the ground
        fwd = cam[:3, :3] @ np.array([rng.uniform(-.4, .4), rng.uniform(-.2, .2), 1.0])
        centre = cam[:3, 3] + fwd / np.linalg.norm(fwd) * rng.uniform(4, 9)
        if centre[1] > -0.4:
            continue
        cases += 1
        sc = _scene(spheres=[(centre, 0.35, (1.0, 0.0, 0.0))])
        t, kind, _ = world.trace(sc, cam, cfg)
        kind = kind.reshape(cfg.height, cfg.width)
        (u, v), z = _project(K, cam, centre)
        assert kind[int(round(v)), int(round(u))] == 1
        # the sphere's silhouette: area close to pi (f r / z)^2, centroid at the projection
        vs, us = np.nonzero(kind == 1)
        r_px = K[0, 0] * 0.35 / z
        assert abs(len(vs) / (math.pi * r_px ** 2) - 1) < 0.25
        assert abs(us.mean() - u) < 0.6 and abs(vs.mean() - v) < 0.6
        # distance along the central ray equals |X - C| minus the radius
        i = int(round(v)) * cfg.width + int(round(u))
        assert abs(t[i] - (np.linalg.norm(centre - cam[:3, 3]) - 0.35)) < 0.05


def test_trace_equals_brute_force():
    """Screen-space culling changes nothing: same hits as testing every ray against every object."""
    cfg = world.WorldConfig(height=40, width=64)
    clip_rng = np.random.default_rng(5)
    script = world.random_script(clip_rng, 60, cfg)
    c2w = world.simulate(script, cfg, yaw=1.0)
    sc = world.make_scene(clip_rng, c2w[:, [0, 2], 3], cfg)
    for T in c2w[::15]:
        o, d = world.camera_rays(T, cfg)
        ts = [np.where(d[:, 1] > 1e-6, -o[1] / np.maximum(d[:, 1], 1e-6), np.inf),
              world._hit_spheres(o[None], d, sc.sph_c, sc.sph_r)[0],
              world._hit_boxes(o[None], d, sc.box_lo, sc.box_hi)[0],
              world._hit_cylinders(o[None], d, sc.cyl_c, sc.cyl_r, sc.cyl_top)[0]]
        brute = np.min(np.stack(ts, 1), 1)
        t, kind, _ = world.trace(sc, T, cfg)
        assert np.array_equal(np.isfinite(t), np.isfinite(brute))
        fin = np.isfinite(t)
        np.testing.assert_allclose(t[fin], brute[fin], rtol=1e-6)
        assert (kind > 0).mean() > 0.05  # objects are in view


def test_occlusion_parallax_and_lighting():
    cfg = TINY.replace(shadows=True, fog_distance=1e6)
    red, blue = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9)
    # occlusion: a near red sphere in front of a far blue box on the same line of sight
    sc = _scene(spheres=[((0, -1.6, 4), 0.5, red)], boxes=[((-3, -4, 12), (3, 0, 13), blue)])
    img = world.render(sc, _pose([0, -1.6, 0]), cfg).astype(int)
    cy, cx = cfg.height // 2, cfg.width // 2
    assert img[cy, cx, 0] > img[cy, cx, 2] + 40  # red in front
    assert img[cy, cx + 10, 2] > img[cy, cx + 10, 0] + 40  # blue box beside it
    # parallax: moving right (D), the near sphere shifts left in the image more than the far one
    sc = _scene(spheres=[((0, -1.6, 3), 0.3, red), ((-4.0, -1.6, 12), 1.0, blue)])
    K = cfg.intrinsics()

    def centroid(img, ch):
        m = img[..., ch] > 2.5 * np.maximum(img[..., 1], img[..., 2 - ch]) + 10
        return np.nonzero(m)[1].mean()

    a = world.render(sc, _pose([0, -1.6, 0]), cfg).astype(int)
    b = world.render(sc, _pose([0.4, -1.6, 0]), cfg).astype(int)
    shift_near, shift_far = centroid(a, 0) - centroid(b, 0), centroid(a, 2) - centroid(b, 2)
    assert shift_near == pytest.approx(K[0, 0] * 0.4 / 3, abs=1.0)
    assert shift_far == pytest.approx(K[0, 0] * 0.4 / 12, abs=1.0)
    # lighting: the sun-facing side of a sphere is brighter than the far side; the shadow darkens the ground
    sun = np.array([1.0, -1.0, 0.0]) / math.sqrt(2)  # from the right, 45 degrees up
    sc = _scene(spheres=[((0, -1.0, 4), 1.0, (0.8, 0.8, 0.8))], sun=sun)
    T = _pose([0, -1.6, 0])
    img = world.render(sc, T, cfg).astype(int).sum(-1)
    (u, v), _ = _project(K, T, np.array([0, -1.0, 4.0]))
    u, v = int(round(u)), int(round(v))
    r_px = int(K[0, 0] * 1.0 / 4 * 0.7)
    assert img[v, u + r_px] > img[v, u - r_px] + 100
    # the shadow falls on the ground to the left of the sphere (away from the sun)
    (us, vs), _ = _project(K, T, np.array([-1.0, 0.0, 4.0]))
    (uo, vo), _ = _project(K, T, np.array([1.6, 0.0, 5.0]))
    shadow, open_ground = img[int(round(vs)) + 1, int(round(us))], img[int(round(vo)), int(round(uo))]
    assert shadow < open_ground - 80


def test_clip_determinism_and_coherence():
    a = world.make_clip(11, 24, TINY)
    b = world.make_clip(11, 24, TINY)
    c = world.make_clip(12, 24, TINY)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.c2w, b.c2w) and a.actions == b.actions
    assert not np.array_equal(a.frames, c.frames)
    f = a.frames.astype(np.float32)
    assert f.shape == (24, TINY.height, TINY.width, 3)
    # a world, not noise: smooth in space and time, with sky, ground and objects all in view
    spatial = np.abs(np.diff(f, axis=2)).mean()
    temporal = np.abs(np.diff(f, axis=0)).mean()
    shuffled = np.abs(f[1:] - f[np.random.default_rng(0).permutation(23)]).mean()
    assert spatial < 12 and temporal < 0.5 * shuffled, (spatial, temporal, shuffled)
    assert f.std() > 20
    t, kind, _ = world.trace(a.scene, a.c2w[0], TINY)
    assert {-1, 0} <= set(np.unique(kind).tolist())
    assert len(a.scene.sph_c) + len(a.scene.box_lo) + len(a.scene.cyl_c) >= 40
    # the camera never walks into an object
    path = a.c2w[:, [0, 2], 3]
    centres = np.concatenate([a.scene.sph_c[:, [0, 2]], a.scene.cyl_c,
                              (a.scene.box_lo[:, [0, 2]] + a.scene.box_hi[:, [0, 2]]) / 2])
    radius = np.concatenate([a.scene.sph_r, a.scene.cyl_r,
                             np.linalg.norm(a.scene.box_hi[:, [0, 2]] - a.scene.box_lo[:, [0, 2]], axis=1) / 2])
    dist = np.linalg.norm(path[:, None] - centres[None], axis=-1)
    assert (dist > radius[None]).all()


def test_render_clips_numpy_is_make_clip():
    """render_clips stacks make_clip's clips (given scripts too); bad backends and script counts fail."""
    given = world.script_from_keys("A*2")
    clips = world.render_clips([3, 4], 3, TINY, scripts=[None, given])
    assert clips.frames.shape == (2, 3, TINY.height, TINY.width, 3)
    for i, (seed, script) in enumerate([(3, None), (4, given)]):
        ref = world.make_clip(seed, 3, TINY, script=script)
        assert np.array_equal(ref.frames, clips.frames[i]) and np.array_equal(ref.c2w, clips.c2w[i])
        assert ref.actions == clips.actions[i] and ref.script == clips.scripts[i]
        assert np.array_equal(ref.scene.sph_c, clips.scenes[i].sph_c)
    assert np.array_equal(clips.intrinsic, TINY.intrinsics())
    assert world.render_clips([], 3, TINY).frames.shape == (0, 3, TINY.height, TINY.width, 3)
    with pytest.raises(ValueError, match="backend"):
        world.render_clips([3], 3, TINY, backend="torch")
    with pytest.raises(ValueError, match="scripts"):
        world.render_clips([3], 3, TINY, scripts=[None, None])


def test_intrinsics_and_presets():
    K = world.WorldConfig().intrinsics()
    assert K.shape == (3, 3) and K[0, 0] == K[1, 1]
    assert K[0, 2] == (160 - 1) / 2 and K[1, 2] == (96 - 1) / 2
    assert np.isclose(2 * math.degrees(math.atan(80 / K[0, 0])), 75.0)
    assert world.PRESETS["default"].fps == 16
    assert world.script_from_keys("W+→*3, S") == [world.Step(Action("W", "→"), 1)] * 3 + [world.Step(Action("S"), 1)]


def test_strip_png(tmp_path):
    from PIL import Image
    p = world.strip(tmp_path / "s.png", seeds=(1, 2), num_frames=17, every=8, cfg=TINY)
    im = np.asarray(Image.open(p))
    assert im.shape == (2 * TINY.height + 2, 3 * TINY.width + 4, 3)
    assert np.array_equal(im[:TINY.height, :TINY.width], world.make_clip(1, 17, TINY).frames[0])
