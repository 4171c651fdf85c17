"""Sekai / Yume layouts: the sandbox writes both, the readers read them back; broken entries are skipped."""
import hashlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from yume_jax.camera import Action, parse_keys, quantize
from yume_jax.data import sekai, video, world

CFG = world.PRESETS["tiny"]
FRAMES, CLIPS, SEED = 40, 3, 7


def _same_frames(decoded, truth):
    """Lossy H.264 4:2:0 at crf 18 on 48x80 frames: close on average, and each decoded frame is nearest to
    the true frame with its own index (no off-by-one)."""
    d = np.abs(decoded[:, None].astype(np.float32) - truth[None].astype(np.float32)).mean((2, 3, 4))
    assert np.diag(d).mean() < 6, np.diag(d).mean()
    assert (np.argmin(d, 1) == np.arange(len(decoded))).all()


@pytest.fixture(scope="module")
def truth():
    return [world.make_clip([SEED, i], FRAMES, CFG) for i in range(CLIPS)]


@pytest.fixture(scope="module")
def sekai_root(tmp_path_factory):
    return world.write_dataset(tmp_path_factory.mktemp("sekai"), CLIPS, SEED, "sekai", cfg=CFG, num_frames=FRAMES)


@pytest.fixture(scope="module")
def yume_root(tmp_path_factory):
    return world.write_dataset(tmp_path_factory.mktemp("yume"), CLIPS, SEED, "yume", cfg=CFG, num_frames=FRAMES,
                               min_clip_frames=9)


def test_sekai_layout_roundtrip(sekai_root, truth):
    ds = sekai.read_sekai(sekai_root)
    assert len(ds) == CLIPS and not ds.skipped and not ds.notes, ds.report()
    assert (sekai_root / "train" / "sekai-sandbox.csv").is_file()
    for i, (info, clip) in enumerate(zip(ds.clips, truth)):
        name = world.source_name(SEED, i, FRAMES)
        assert info.name == name and info.video == sekai_root / "videos" / f"{name}.mp4"
        assert info.poses == sekai_root / "cameras" / f"{name}.npz"
        vid, start, end = name.rsplit("_", 2)
        assert len(vid) == 11 and len(start) == len(end) == 7 and int(end) - int(start) == FRAMES
        assert info.num_frames == FRAMES and info.fps == CFG.fps
        c2w, K = sekai.load_poses(info.poses)
        ref, scale = world.normalize_poses(clip.c2w)
        np.testing.assert_allclose(c2w, ref, rtol=0, atol=1e-12)
        assert np.max(np.abs(c2w[:, :3, 3])) == pytest.approx(1.0)
        assert float(info.metadata["poseScale"]) == pytest.approx(scale)
        np.testing.assert_allclose(K, CFG.intrinsics())
        # labels: quantizing the stored poses gives the scripted actions (and the CSV's record of them)
        assert quantize(c2w) == clip.actions == parse_keys(info.metadata["actions"])
        frames = video.read_frames(info.video, range(FRAMES))
        assert frames.shape == clip.frames.shape
        _same_frames(frames, clip.frames)
        assert info.caption.startswith("A sunny open plaza")


def test_yume_layout_roundtrip(yume_root, truth):
    ds = sekai.read_yume(yume_root)
    assert len(ds) > 0 and not ds.skipped and not ds.notes, ds.report()
    by_src = {world.source_name(SEED, i, FRAMES): clip for i, clip in enumerate(truth)}
    covered = {k: 0 for k in by_src}
    for info in ds.clips:
        src, ab = info.name.split("_frames_")
        a, b = map(int, ab.split("-"))
        clip = by_src[src]
        assert info.video.parent.name == sekai.folder_name(info.action)
        assert info.num_frames == b - a + 1 and info.history_offset == a
        assert info.history_video == yume_root / "full_mp4" / src.rsplit("_", 2)[0] / f"{src}.mp4"
        fields = sekai.parse_txt(info.video.with_suffix(".txt"))
        assert fields["Duration"] == f"{b - a + 1} frames"
        # the clip's pairs all carry the scripted action, which the poses quantize back to
        assert set(clip.actions[a:b]) == {info.action}
        c2w = sekai.clip_poses(info)
        assert sekai.load_poses(info.poses)[0].dtype == np.float64 and np.load(info.poses).dtype == np.float32
        np.testing.assert_allclose(c2w, world.normalize_poses(clip.c2w)[0][a:b + 1], atol=1e-6)
        assert quantize(c2w) == [info.action] * (b - a)
        frames = video.read_frames(info.video, range(info.num_frames))
        _same_frames(frames, clip.frames[a:b + 1])
        # clip frame i is frame a + i of the full source video (history comes from there)
        _same_frames(video.read_frames(info.history_video, range(FRAMES))[a:b + 1], clip.frames[a:b + 1])
        covered[src] += b - a
    # every constant-action run of >= 9 frames became a clip
    for src, clip in by_src.items():
        from yume_jax.camera import segment
        assert covered[src] == sum(s.end - s.start for s in segment(clip.actions, min_frames=9))


def test_broken_entries_are_skipped_and_counted(sekai_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(sekai_root, root)
    names = [f"{world.source_name(SEED, i, FRAMES)}" for i in range(CLIPS)]
    (root / "videos" / f"{names[0]}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(500))  # corrupt mp4
    npz = root / "cameras" / f"{names[1]}.npz"
    npz.write_bytes(npz.read_bytes()[:200])  # truncated npz
    csv_path = root / "train" / "sekai-sandbox.csv"
    text = csv_path.read_text(encoding="utf-8")
    header = text.splitlines()[0]
    csv_path.write_text(text + "only_two_fields.mp4,x.npz\n", encoding="utf-8")  # bad row: too few columns
    (root / "train" / "sekai-more.csv").write_text(
        header + "\n" + ",".join(["not-a-video.txt", "y.npz"] + [""] * (header.count(","))) + "\n", encoding="utf-8")
    ds = sekai.read_sekai(root)
    assert [c.name for c in ds.clips] == [names[2]]
    assert ds.skipped == {"bad_video": 1, "bad_poses": 1, "bad_row": 2}, ds.problems
    assert len(ds.problems) == 4 and "bad_video" in ds.report()
    # a missing pose file and a missing video
    (root / "cameras" / f"{names[2]}.npz").unlink()
    ds = sekai.read_sekai(root)
    assert len(ds) == 0 and ds.skipped["missing_poses"] == 1
    with pytest.raises(ValueError, match="lacks column"):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n")
        sekai.read_sekai(root, csv_files=bad)


def test_yume_broken_entries(yume_root, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(yume_root, root)
    clips = sorted(root.glob("Keys_*/*.mp4"))
    assert len(clips) >= 4
    clips[0].with_suffix(".txt").unlink()
    clips[1].with_suffix(".txt").write_text("Start Frame: x\nEnd Frame: 3\n")
    npy = clips[2].with_suffix(".npy")
    npy.write_bytes(npy.read_bytes()[:100])
    clips[3].write_bytes(b"garbage")
    ds = sekai.read_yume(root)
    assert ds.skipped == {"missing_txt": 1, "bad_txt": 1, "bad_poses": 1, "bad_video": 1}, ds.problems
    assert len(ds) == len(clips) - 4


def test_frame_pose_count_mismatch(sekai_root, tmp_path):
    root = tmp_path / "mismatch"
    shutil.copytree(sekai_root, root)
    name = world.source_name(SEED, 0, FRAMES)
    p = root / "cameras" / f"{name}.npz"
    c2w, K = sekai.load_poses(p)
    np.savez(p, intrinsic=K, extrinsic=np.concatenate([c2w, c2w[:3]]))  # 3 poses too many
    name1 = world.source_name(SEED, 1, FRAMES)
    p1 = root / "cameras" / f"{name1}.npz"
    c2w1, K1 = sekai.load_poses(p1)
    np.savez(p1, intrinsic=K1, extrinsic=c2w1[:-5])  # 5 too few
    ds = sekai.read_sekai(root)
    assert [c.num_frames for c in ds.clips] == [FRAMES, FRAMES - 5, FRAMES]
    assert ds.notes["frame_pose_mismatch"] == 2 and not ds.skipped
    assert sekai.clip_poses(ds.clips[0]).shape == (FRAMES, 4, 4)


def test_folder_names_and_txt():
    assert sekai.folder_name(Action("None", "↓")) == "Keys_None_Mouse_Down"
    assert sekai.folder_name(Action("S", "·")) == "Keys_S_Mouse_·"
    for a in [Action("W+A", "↑→"), Action("S+D", "↓←"), Action("None", "·")]:
        assert sekai.parse_folder(sekai.folder_name(a)) == a
    assert sekai.parse_folder("Keys_W_Mouse_↑") == Action("W", "↑")
    with pytest.raises(ValueError):
        sekai.parse_folder("Keys_Q_Mouse_Up")


def test_yume_txt_with_comments(tmp_path):
    """The txt format as documented by Yume (fields with comments and blank lines)."""
    t = tmp_path / "x.txt"
    t.write_text("Start Frame: 2 #Starting frame number\n\nEnd Frame: 50 #Ending frame number\n\n"
                 "Duration: 49 frames #Total duration\n\nKeys: W #Keyboard input\n\nMouse: ↓ #Mouse action\n")
    f = sekai.parse_txt(t)
    assert (f["Start Frame"], f["End Frame"], f["Keys"], f["Mouse"]) == ("2", "50", "W", "↓")


def _tree_hash(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("layout", ["sekai", "yume"])
def test_cli_deterministic(tmp_path, layout):
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}"
        cmd = [sys.executable, "-m", "yume_jax.data.world", "--out", str(out), "--clips", "2", "--seed", "3",
               "--layout", layout, "--frames", "24", "--preset", "tiny", "--min-clip-frames", "5"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        outs.append(out)
    assert _tree_hash(outs[0]) == _tree_hash(outs[1])
    ds = sekai.read(outs[0])
    assert ds.layout == layout and len(ds) >= 2 and not ds.skipped


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_random_access_decoding(tmp_path, codec):
    """Seeking (keyframe every 10 frames) returns the same frames as decoding from the start, in any order."""
    clip = world.make_clip(4, 60, CFG)
    p = video.write(tmp_path / "v.mp4", clip.frames, fps=16, codec=codec, keyframe_interval=10)
    info = video.probe(p)
    assert (info.num_frames, info.fps, info.height, info.width) == (60, 16.0, CFG.height, CFG.width)
    every = video.read_frames(p, range(60))
    _same_frames(every, clip.frames)
    rng = np.random.default_rng(0)
    for _ in range(4):
        idx = rng.integers(0, 60, size=7)
        np.testing.assert_array_equal(video.read_frames(p, idx), every[idx])
    np.testing.assert_array_equal(video.read_frames(p, [59, 31]), every[[59, 31]])
    small = video.read_frames(p, [33], size=(24, 40))
    assert small.shape == (1, 24, 40, 3)
    with pytest.raises(video.VideoError, match="could not decode frame"):
        video.read_frames(p, [60])
    with pytest.raises(ValueError, match="negative"):
        video.read_frames(p, [-1])
