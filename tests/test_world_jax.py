"""The JAX sandbox renderer: the NumPy reference's frames (same scenes, same poses), one program per config."""
import numpy as np
import pytest

from yume_jax.data import world
from yume_jax.data import world_jax as wj

TINY = world.PRESETS["tiny"]


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """Fractions of pixels that differ at all and by more than 2 levels (any channel), and the max difference."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(-1)
    return float((diff > 0).mean()), float((diff > 2).mean()), int(diff.max())


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_frames_equal_numpy(preset):
    """Three seeds x 6 frames, shadows on, 2x2 supersampling: the JAX frames are the NumPy frames.

    Measured on CPU (2026-12-04; seeds 0-2 here, 3-8 alike): tiny 0.004-0.006% of pixels differ, default
    0.012-0.015%, nearly all by 1 level (float rounding: jit-compiled XLA code fuses a * b + c into one
    rounding where NumPy rounds twice, and its sin/arctan2/pow differ in the last bit). Larger differences
    (up to 32 levels) in 0-0.003% of pixels (2 of 69,120 tiny, 3 of 276,480 default; 0 and 5 for seeds 3-8):
    a grazing ray whose sphere or cylinder discriminant is within one rounding of 0 hits in one backend and
    misses in the other, in one subsample of a silhouette pixel. The bounds below are ~7x the measured ones.
    """
    cfg = world.PRESETS[preset].replace(supersample=2, shadows=True)
    seeds, T = [0, 1, 2], 6
    clips = world.render_clips(seeds, T, cfg, backend="jax")
    assert clips.frames.shape == (3, T, cfg.height, cfg.width, 3) and clips.frames.dtype == np.uint8
    ref = np.stack([world.make_clip(s, T, cfg).frames for s in seeds])
    assert ref.std() > 20  # a real scene in view
    any_diff, big_diff, _ = _compare(ref, clips.frames)
    assert any_diff < 1e-3, any_diff
    assert big_diff < 2e-4, big_diff


def test_plans_match_make_clip_and_one_program():
    """render_clips(backend="jax") gives make_clip's scripts, poses, actions and scenes (random and given scripts); scenes
    of different sizes share one compiled program."""
    cfg = TINY.replace(shadows=True)
    given = world.script_from_keys("W*3, W+→*2")
    clips = world.render_clips([5, 6], 6, cfg, scripts=[None, given], backend="jax", frames_per_call=4)
    for i, (seed, script) in enumerate([(5, None), (6, given)]):
        ref = world.make_clip(seed, 6, cfg, script=script)
        assert np.array_equal(ref.c2w, clips.c2w[i]) and ref.actions == clips.actions[i]
        assert ref.script == clips.scripts[i]
        assert np.array_equal(ref.scene.box_lo, clips.scenes[i].box_lo)
        assert _compare(ref.frames, clips.frames[i])[1] < 1e-3
    assert clips.scripts[1] == given
    sizes = {(len(s.sph_r), len(s.box_lo), len(s.cyl_r)) for s in clips.scenes}
    assert len(sizes) == 2  # different scenes...
    n = wj._render_batch._cache_size()
    other = world.render_clips([7, 8, 9], 6, cfg, backend="jax", frames_per_call=4)  # ...and new ones: no new compile
    assert wj._render_batch._cache_size() == n
    assert {(len(s.sph_r), len(s.box_lo), len(s.cyl_r)) for s in other.scenes} - sizes
    with pytest.raises(ValueError, match="capacity"):
        world.render_clips([5], 6, cfg, backend="jax", cap=8)
    # per-kind capacities cut to the scenes: the same frames
    tight = world.render_clips([5, 6], 6, cfg, scripts=[None, given], backend="jax", frames_per_call=4,
                               cap="tight")
    caps = wj.tight_capacity(clips.scenes)
    assert tight.frames.shape == clips.frames.shape and max(caps) < wj._cap_for(cfg, 6, clips.scenes)
    assert _compare(tight.frames, clips.frames)[0] < 1e-4


def test_hash_and_noise_equal_numpy():
    """The uint32 hash equals NumPy's int64-masked one bit for bit, far from the origin and below it too;
    value noise and fbm agree to float32 rounding at large coordinates."""
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    ix = rng.integers(-(1 << 30), 1 << 30, 4096)
    iz = np.concatenate([rng.integers(-(1 << 30), 1 << 30, 2048), rng.integers(-50, 50, 2048)])
    for seed in (0, 12345, (1 << 30) - 1 + 101 * 3):
        ref = world._hash(ix, iz, seed)
        got = np.asarray(wj._hash(jnp.asarray(ix, jnp.int32), jnp.asarray(iz, jnp.int32), jnp.uint32(seed)))
        assert np.array_equal(ref, got)
    x = rng.uniform(-2e5, 2e5, 4096).astype(np.float32)
    z = rng.uniform(-3e3, 3e3, 4096).astype(np.float32)
    ref = world._fbm(x, z, 77, 4)
    got = np.asarray(wj._fbm(jnp.asarray(x), jnp.asarray(z), jnp.uint32(77), 4))
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_trace_equals_numpy():
    """Every ray against every (masked, padded) object finds NumPy's culled nearest hits: kinds, objects, t."""
    import jax
    import jax.numpy as jnp
    cfg = world.WorldConfig(height=40, width=64)
    script, _, c2w, scene = world.plan_clip(3, 40, cfg)
    sa = jax.tree.map(jnp.asarray, wj.scene_arrays(scene, wj.capacity(cfg, 40)))
    trace = jax.jit(wj._trace)
    for T in c2w[::13]:
        o, d = world.camera_rays(T, cfg)
        t, kind, obj = world.trace(scene, T, cfg)
        masks = wj._cull_masks(sa, jnp.asarray(o), 1e9)
        tj, kj, oj = map(np.asarray, trace(sa, masks, jnp.asarray(o), jnp.asarray(d)))
        assert (kind > 0).mean() > 0.05
        same = kj == kind
        assert same.mean() > 0.999
        assert np.array_equal(oj[same & (kind > 0)], obj[same & (kind > 0)])
        fin = same & np.isfinite(t)
        rel = np.abs(tj[fin] - t[fin]) / t[fin]
        assert rel.max() < 1e-3 and (rel > 1e-5).mean() < 0.01  # near-grazing hits lose digits to cancellation


def test_backend_switch(tmp_path, monkeypatch):
    """make_clip(backend="jax") renders with world_jax; the CLI's --backend reaches it; bad names fail."""
    a = world.make_clip(4, 5, TINY, backend="jax")
    b = world.make_clip(4, 5, TINY)
    assert np.array_equal(a.c2w, b.c2w) and a.actions == b.actions
    assert _compare(a.frames, b.frames)[1] < 1e-3 and _compare(a.frames, b.frames)[0] < 1e-2
    with pytest.raises(ValueError, match="backend"):
        world.make_clip(4, 5, TINY, backend="torch")
    with pytest.raises(ValueError, match="workers=1"):  # one device, one process
        world.write_dataset(tmp_path / "x", 2, 0, cfg=TINY, num_frames=5, workers=2, backend="jax")
    calls = []
    real = wj.render_frames

    def spy(scene, c2w, cfg, *a, **kw):
        calls.append(len(c2w))
        return real(scene, c2w, cfg, *a, **kw)

    monkeypatch.setattr(wj, "render_frames", spy)
    args = ["--clips", "2", "--frames", "5", "--preset", "tiny", "--layout", "sekai"]
    world.main(["--out", str(tmp_path / "np")] + args)
    assert calls == []
    world.main(["--out", str(tmp_path / "jax"), "--backend", "jax"] + args)
    assert calls == [5, 5]
    assert sorted(p.name for p in (tmp_path / "jax").rglob("*.mp4")) == sorted(
        p.name for p in (tmp_path / "np").rglob("*.mp4"))


def test_single_frame_and_fog_color():
    """world_jax.render is world.render for one pose, also with another fog colour (hand-made scene)."""
    sc = world.Scene(
        sph_c=np.array([[0, -1.0, 4]], np.float32), sph_r=np.array([1.0], np.float32),
        sph_col=np.array([[0.8, 0.2, 0.2]], np.float32), sph_pat=np.array([1], np.int32),
        box_lo=np.array([[-3, -4, 12]], np.float32), box_hi=np.array([[3, 0, 13]], np.float32),
        box_col=np.array([[0.3, 0.3, 0.8]], np.float32), box_pat=np.array([3], np.int32),
        cyl_c=np.zeros((0, 2), np.float32), cyl_r=np.zeros(0, np.float32), cyl_top=np.zeros(0, np.float32),
        cyl_col=np.zeros((0, 3), np.float32), cyl_pat=np.zeros(0, np.int32),
        sun=np.array([0.6, -0.7, 0.39], np.float32) / np.float32(np.linalg.norm([0.6, -0.7, 0.39])), seed=3,
        ground_cols=np.array([[0.6, 0.6, 0.6], [0.3, 0.5, 0.2]], np.float32),
        sky_cols=np.array([[0.8, 0.85, 0.9], [0.4, 0.6, 0.9], [0.5, 0.55, 0.6]], np.float32),
        mountain=np.array([[0.5, 0.0], [0.5, 1.0], [0.5, 2.0]], np.float32))
    T = np.eye(4)
    T[:3, 3] = (0.3, -1.6, 0.0)
    cfg = TINY.replace(fog_distance=12.0)
    red = np.array([1.0, 0.0, 0.0], np.float32)
    for fog in (None, red):
        a, b = world.render(sc, T, cfg, fog_color=fog), wj.render(sc, T, cfg, fog_color=fog)
        any_diff, _, top = _compare(a, b)
        assert any_diff < 2e-3 and top <= 2
    plain = wj.render(sc, T, cfg).astype(int)
    assert a[..., 0].mean() > plain[..., 0].mean() + 10 and a[..., 1].mean() < plain[..., 1].mean() - 10  # red fog


def test_renderer_takes_arrays_not_world():
    """world_jax never imports world (the dependency goes one way): its copy of the hit threshold is world's,
    its rays are the config's (world's, bit for bit), and render_walks renders planned walks given to it."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(wj))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert not [m for m in imported if m.startswith("yume_jax")], imported
    assert wj._EPS == world._EPS
    cfg = TINY.replace(supersample=2)
    assert np.array_equal(np.asarray(wj._directions(cfg)), world.ray_directions(cfg).astype(np.float32))
    plans = [world.plan_clip(s, 4, TINY) for s in (11, 12)]
    frames = wj.render_walks([p[3] for p in plans], np.stack([p[2] for p in plans]), TINY)
    assert frames.shape == (2, 4, TINY.height, TINY.width, 3)
    assert np.array_equal(frames[1], wj.render_frames(plans[1][3], plans[1][2], TINY, cap=wj._cap_for(
        TINY, 4, [p[3] for p in plans])))
    assert np.array_equal(frames, world.render_clips([11, 12], 4, TINY, backend="jax").frames)
    with pytest.raises(ValueError, match="walks"):
        wj.render_walks([plans[0][3]], np.stack([p[2] for p in plans]), TINY)
