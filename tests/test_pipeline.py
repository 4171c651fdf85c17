"""Grain raw-clip pipeline: determinism, exact resume in a new process, process shards, I2V, prompts, skips."""
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from yume_jax.camera import ALL_ACTIONS, Action, prompt, quantize, speed
from yume_jax.data import pipeline as pl
from yume_jax.data import sekai, video, world

WCFG = world.PRESETS["tiny"]
CFG = pl.RAW_PRESETS["tiny"]  # chunk 9 frames at 48x80, history 4..12/24, i2v history 4


@pytest.fixture(scope="module")
def yume_root(tmp_path_factory):
    return world.write_dataset(tmp_path_factory.mktemp("yume"), 3, 21, "yume", cfg=WCFG, num_frames=60,
                               min_clip_frames=12)


@pytest.fixture(scope="module")
def sekai_root(tmp_path_factory):
    return world.write_dataset(tmp_path_factory.mktemp("sekai"), 3, 22, "sekai", cfg=WCFG, num_frames=40)


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)], it


def _equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_determinism_and_shapes(yume_root):
    data = sekai.read_yume(yume_root)
    loader = pl.LoaderConfig(seed=3, batch_size=2)
    a, _ = _take(pl.raw_dataset(data, CFG, loader, 0, 1), 6)
    b, _ = _take(pl.raw_dataset(data, CFG, loader, 0, 1), 6)
    c, _ = _take(pl.raw_dataset(data, CFG, loader.replace(seed=4), 0, 1), 6)
    assert all(_equal(x, y) for x, y in zip(a, b))
    assert not all(_equal(x, y) for x, y in zip(a, c))
    for batch in a:
        v = batch["video"]
        assert v.dtype == np.float32 and v.ndim == 5 and v.shape[:2] == (2, 3) and v.shape[3:] == (48, 80)
        assert v.shape[2] % 4 == 1 and v.shape[2] == CFG.chunk_frames + batch["num_history"][0]
        assert -1.0 <= v.min() and v.max() <= 1.0
        assert batch["prompt"].shape == (2,) and isinstance(batch["prompt"][0], str)


def test_sample_content_matches_files(yume_root, sekai_root):
    """The chunk and history are exactly the decoded frames of the clip and of the full source video; the
    prompt is the Yume prompt of the clip's action with the speed sentence of the chunk's poses."""
    checked = {"history": 0, "speed": 0, "plain": 0}
    for root in (yume_root, sekai_root):
        data = sekai.read(root)
        for batch in pl.raw_dataset(data, CFG, pl.LoaderConfig(seed=5, num_epochs=3), 0, 1):
            info = data.clips[int(batch["clip"][0])]
            s, h, T = int(batch["start"][0]), int(batch["num_history"][0]), CFG.chunk_frames
            v = batch["video"][0]
            chunk = video.read_frames(info.video, range(s, s + T), (48, 80))
            np.testing.assert_allclose(v[:, h:], chunk.transpose(3, 0, 1, 2) / 127.5 - 1, atol=1e-6)
            if batch["i2v"][0]:
                assert h == CFG.i2v_history and (v[:, :h] == v[:, h:h + 1]).all()
            elif h:
                src, off = (info.history_video, info.history_offset + s)
                hist = video.read_frames(src, range(off - h, off), (48, 80))
                np.testing.assert_allclose(v[:, :h], hist.transpose(3, 0, 1, 2) / 127.5 - 1, atol=1e-6)
                checked["history"] += 1
            c2w = sekai.clip_poses(info)[s:s + T]
            acts = quantize(c2w)
            action = info.action if info.action is not None else max(set(acts), key=lambda a: (acts.count(a),
                                                                                                -acts.index(a)))
            assert ALL_ACTIONS[int(batch["action"][0])] == action
            if data.layout == "yume":
                assert set(acts) == {info.action}
            if batch["with_speed"][0]:
                assert batch["prompt"][0] == prompt(action, speed=speed(c2w))
                assert "Actual distance moved:" in batch["prompt"][0]
                checked["speed"] += 1
            else:
                assert batch["prompt"][0] == prompt(action)
                checked["plain"] += 1
    assert min(checked.values()) > 0, checked


def test_random_choices_follow_the_spec():
    """History 10..L (L = 400 w.p. 0.4 else 1000) trimmed to 4n, i2v w.p. 0.4, speed sentence w.p. 0.65."""
    cfg = pl.RAW_PRESETS["yume"]
    info = sekai.ClipInfo(name="x", layout="yume", video=None, poses=None, num_frames=600, fps=30,
                          action=Action(), history_video="full.mp4", history_offset=2000)
    fn = pl.RawSample([info], cfg)
    rng = np.random.default_rng(0)
    ch = [fn.choose(info, np.random.default_rng(rng.integers(1 << 62))) for _ in range(20000)]
    hist = np.array([c["history"] for c in ch])
    assert (hist % 4 == 0).all() and hist.min() >= 8 and hist.max() <= 1000
    assert np.mean([c["i2v"] for c in ch]) == pytest.approx(0.4, abs=0.015)
    assert np.mean([c["with_speed"] for c in ch]) == pytest.approx(0.65, abs=0.015)
    assert np.mean(hist > 400) == pytest.approx(0.6 * 600 / 990, abs=0.02)  # only the L = 1000 draws exceed 400
    starts = np.array([c["start"] for c in ch])
    assert starts.min() == 0 and starts.max() == 600 - 33
    # little history available: 0..available frames
    near = sekai.ClipInfo(name="y", layout="sekai", video=None, poses=None, num_frames=40, fps=30)
    hs = {fn.choose(near, np.random.default_rng(i))["history"] for i in range(300)}
    assert max(hs) <= 7 and hs <= {0, 4}
    short = dict(info.__dict__, num_frames=20)
    assert fn.choose(sekai.ClipInfo(**short), rng) is None  # shorter than a chunk
    bucketed = pl.RawSample([info], cfg.replace(history_buckets=(0, 16, 64, 256)))
    assert {bucketed.choose(info, np.random.default_rng(i))["history"] for i in range(300)} <= {0, 16, 64, 256}
    with pytest.raises(ValueError, match="4n\\+1"):
        pl.RawConfig(chunk_frames=32)


def test_disjoint_shards_cover_everything(yume_root):
    data = sekai.read_yume(yume_root)
    n = len(data)
    assert n >= 5
    seen = []
    for shard in range(2):
        ds = pl.raw_dataset(data, CFG, pl.LoaderConfig(seed=9, num_epochs=1, drop_remainder=False), shard, 2)
        seen.append([int(c) for b in ds for c in b["clip"]])
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(n))
    assert abs(len(seen[0]) - len(seen[1])) <= 1
    # every epoch is a new permutation of the shard
    two = [int(c) for b in pl.raw_dataset(data, CFG, pl.LoaderConfig(seed=9, num_epochs=2), 0, 2) for c in b["clip"]]
    half = len(two) // 2
    assert sorted(two[:half]) == sorted(two[half:]) == sorted(seen[0])
    with pytest.raises(ValueError, match="shard_index"):
        pl.raw_dataset(data, CFG, pl.LoaderConfig(), 2, 2)
    assert pl._process_shard(None, None) == (0, 1)  # default: this JAX process of jax.process_count()


def test_skipped_samples_are_counted(yume_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(yume_root, root)
    data = sekai.read_yume(root)
    bad = data.clips[1]
    bad.video.write_bytes(b"not a video anymore")  # broken after indexing: found while decoding
    short = dict(data.clips[2].__dict__, num_frames=CFG.chunk_frames - 1)
    clips = list(data.clips)
    clips[2] = sekai.ClipInfo(**short)
    epochs = 2
    it = iter(pl.raw_dataset(clips, CFG, pl.LoaderConfig(seed=1, num_epochs=epochs, drop_remainder=False), 0, 1))
    got = [int(c) for b in it for c in b["clip"]]
    assert it.skipped == {"bad_video": epochs, "too_short": epochs}
    assert 1 not in got and 2 not in got and len(got) == epochs * (len(clips) - 2)
    assert any(p.startswith("bad_video") and "Invalid data" in p for p in it.problems)
    assert it.get_state()["skipped"] == {"bad_video": epochs, "too_short": epochs}


_RESUME = textwrap.dedent("""
    import json, sys
    import numpy as np
    from yume_jax.data import pipeline as pl, sekai

    def main():
        root, mode, state_path, out, n, workers = sys.argv[1:7]
        cfg = pl.RAW_PRESETS["tiny"]
        loader = pl.LoaderConfig(seed=11, batch_size=2, num_workers=int(workers))
        it = iter(pl.raw_dataset(sekai.read(root), cfg, loader, 0, 1))
        if mode == "resume":
            pl.load_state(it, state_path)
        batches = [next(it) for _ in range(int(n))]
        if mode == "first":
            pl.save_state(it, state_path)
        np.savez(out, **{f"{i}_{k}": np.asarray(v, dtype=str if k == "prompt" else None)
                         for i, b in enumerate(batches) for k, v in b.items()})

    if __name__ == "__main__":
        main()
""")


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_in_new_process_is_exact(yume_root, tmp_path, workers):
    script = tmp_path / "resume.py"
    script.write_text(_RESUME)
    state = tmp_path / "state.json"

    def run(mode, out, n):
        r = subprocess.run([sys.executable, str(script), str(yume_root), mode, str(state), str(out), str(n),
                            str(workers)], capture_output=True, text=True, timeout=170)
        assert r.returncode == 0, r.stderr[-3000:]
        return np.load(out, allow_pickle=False)

    # 2 + 5 batches of 2 = 14 samples > one epoch of the clips: the state is saved mid-epoch
    first = run("first", tmp_path / "a.npz", 2)
    second = run("resume", tmp_path / "b.npz", 5)
    assert json.loads(state.read_text())["samples"] == 4
    loader = pl.LoaderConfig(seed=11, batch_size=2, num_workers=0)
    ref, _ = _take(pl.raw_dataset(sekai.read(yume_root), CFG, loader, 0, 1), 7)
    n_clips = len(sekai.read(yume_root))
    assert 4 < n_clips < 14
    for i, b in enumerate(ref):
        got = first if i < 2 else second
        j = i if i < 2 else i - 2
        for k, v in b.items():
            np.testing.assert_array_equal(got[f"{j}_{k}"], np.asarray(v, dtype=str if k == "prompt" else None))
