"""Fault injection for the converter and inference CLIs (issue 13): what ``--force`` may delete, corrupt inputs
of every kind each CLI reads, numbers out of range, signals mid-write, full disks (injected ENOSPC), leftovers
of killed runs, concurrent runs into one output. Each CLI is called in-process (``main(argv)`` returns the exit
code); a subprocess only where a real process death is the point. Every expected failure must be one line on
stderr (no traceback) and exit 2; interrupts 143; nothing half-written may remain."""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from dit_reference import save_wan_file, tiny_diffusers
from PIL import Image

from yume_jax.convert.__main__ import main as convert_main
from yume_jax.core import checkpoint as ckpt
from yume_jax.core.tensors import CheckpointError, SafetensorsWriter, open_source, save_safetensors


def one_line(capsys, *words) -> str:
    """The run's message: exactly one line from the tool (progress bars aside), no traceback, holding ``words``."""
    err = capsys.readouterr().err
    lines = [ln[ln.index("python -m"):] for ln in err.replace("\r", "\n").splitlines() if "python -m" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    err = lines[0]
    for w in words:
        assert w in err, (w, err)
    return err


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


@pytest.fixture(scope="module")
def wan(tmp_path_factory) -> Path:
    """A tiny Wan-named DiT checkpoint (one safetensors file) in its own folder, and its conversion."""
    d = tmp_path_factory.mktemp("wan")
    (d / "src").mkdir()
    save_wan_file(tiny_diffusers("i2v", seed=1), d / "src" / "dit.safetensors")
    assert convert_main([str(d / "src" / "dit.safetensors"), str(d / "jax"), "--num-heads", "4", "--no-progress"]) == 0
    return d


def _conv(src, dst, *more) -> int:
    return convert_main([str(src), str(dst), "--num-heads", "4", "--no-progress", *more])


def _fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------- convert --force (defect 2)


def test_force_never_removes_an_input_its_folder_or_a_foreign_folder(wan, tmp_path, capsys):
    src = tmp_path / "model"
    shutil.copytree(wan / "src", src)
    (src / "notes.txt").write_text("mine")
    before = _fingerprint(tmp_path)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(wan / "jax")
    cases = [(src / "dit.safetensors", src / "dit.safetensors", "not a directory"),  # DST = SRC (a file)
             (src, src, "the input"),  # a folder source: DST = SRC
             (src / "dit.safetensors", src, "the input"),  # DST = the folder holding SRC
             (src / "dit.safetensors", tmp_path, "the input"),  # DST = a grandparent
             (src / "dit.safetensors", foreign, "not a previous converted checkpoint"),
             (src / "dit.safetensors", Path("/dev/null"), "not a directory"),  # a device file
             (src / "dit.safetensors", link, "not a directory")]  # a link to a previous output
    for s, d, words in cases:
        assert _conv(s, d, "--force") == 2, (s, d)
        one_line(capsys, "refusing --force", words)
    assert _fingerprint(src) == {k[len("model/"):]: v for k, v in before.items() if k.startswith("model/")}
    assert (foreign / "a.jpg").exists() and Path("/dev/null").exists() and (wan / "jax" / "yume_jax.json").exists()
    # --pipeline shares the rule: a release directory refuses to be replaced by a pipeline
    assert convert_main(["--pipeline", str(src), str(src), "--force", "--no-progress"]) == 2
    capsys.readouterr()


def test_force_replaces_a_previous_output_of_each_kind(wan, tmp_path):
    src = wan / "src" / "dit.safetensors"
    assert _conv(src, tmp_path / "j") == 0 and _conv(src, tmp_path / "j", "--force") == 0  # yume_jax.json
    assert convert_main([str(tmp_path / "j"), str(tmp_path / "t"), "--to", "torch", "--no-progress"]) == 0
    assert convert_main([str(tmp_path / "j"), str(tmp_path / "t"), "--to", "torch", "--no-progress", "--force"]) == 0
    assert sorted(open_source(tmp_path / "t").keys()) == sorted(open_source(src).keys())
    assert leftovers(tmp_path / "j") == []


# ------------------------------------------------------------------------- safetensors headers (defect 3)


def _st(path: Path, header: dict, data: bytes, pad_to: int | None = None) -> Path:
    blob = json.dumps(header).encode()
    blob += b" " * ((pad_to or 8) - len(blob) % (pad_to or 8))
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def _f32(n):
    return {"dtype": "F32", "shape": [n]}


BAD_HEADERS = {  # name: (header, data bytes, words of the error, the key it names)
    "overlap": ({"a": {**_f32(2), "data_offsets": [0, 8]}, "b": {**_f32(2), "data_offsets": [4, 12]}}, 12,
                "overlaps", "b"),
    "negative": ({"a": {**_f32(2), "data_offsets": [-8, 0]}}, 8, "data_offsets", "a"),
    "out of bounds": ({"a": {**_f32(4), "data_offsets": [0, 16]}}, 8, "truncated", "a"),
    "gap": ({"a": {**_f32(1), "data_offsets": [0, 4]}, "b": {**_f32(1), "data_offsets": [8, 12]}}, 12, "gap", "b"),
    "not from 0": ({"a": {**_f32(1), "data_offsets": [4, 8]}}, 8, "gap", "a"),
    "trailing bytes": ({"a": {**_f32(1), "data_offsets": [0, 4]}}, 12, "data has 12 bytes", None),
    "size mismatch": ({"a": {**_f32(3), "data_offsets": [0, 8]}}, 8, "12 needed", "a"),
    "misaligned size": ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 3]}}, 3, "4 needed", "a"),
    "end before start": ({"a": {**_f32(0), "data_offsets": [8, 0]}}, 8, "end before start", "a"),
    "float offsets": ({"a": {**_f32(1), "data_offsets": [0.0, 4.0]}}, 4, "data_offsets", "a"),
    "bool offsets": ({"a": {**_f32(1), "data_offsets": [False, True]}}, 4, "data_offsets", "a"),
    "three offsets": ({"a": {**_f32(1), "data_offsets": [0, 4, 8]}}, 4, "data_offsets", "a"),
    "negative shape": ({"a": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}, 16, "shape", "a"),
    "string shape": ({"a": {"dtype": "F32", "shape": "4", "data_offsets": [0, 16]}}, 16, "shape", "a"),
    "unknown dtype": ({"a": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, 4, "dtype", "a"),
    "entry not an object": ({"a": [1, 2]}, 0, "not an object", "a"),
    "metadata not strings": ({"__metadata__": {"x": 1}, "a": {**_f32(1), "data_offsets": [0, 4]}}, 4,
                             "__metadata__", None),
    "header a list": ([1], 0, "does not start with", None),
}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
def test_corrupt_safetensors_headers_are_one_line_errors(name, tmp_path, capsys):
    header, n, words, key = BAD_HEADERS[name]
    f = _st(tmp_path / "m.safetensors", header, bytes(n))
    with pytest.raises(CheckpointError) as e:
        open_source(f)
    msg = str(e.value)
    assert str(f) in msg and words in msg and (key is None or f": {key}: " in msg), msg
    safetensors = pytest.importorskip("safetensors")
    with pytest.raises(Exception):  # the safetensors library rejects every one of these files too
        with safetensors.safe_open(str(f), framework="numpy") as h:
            [h.get_tensor(k) for k in h.keys()]
    assert _conv(f, tmp_path / "out") == 2
    one_line(capsys, str(f))
    assert not (tmp_path / "out").exists() and leftovers(tmp_path / "out") == []


def test_files_the_library_reads_still_read(tmp_path):
    safetensors_np = pytest.importorskip("safetensors.numpy")
    arrays = {"b": np.arange(3, dtype=np.float16), "a": np.ones((2, 1), np.float32), "z": np.zeros((0,), np.float32)}
    safetensors_np.save_file(arrays, str(tmp_path / "lib.safetensors"), metadata={"k": "v"})
    src = open_source(tmp_path / "lib.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(src.read(k), v)


@pytest.mark.parametrize("raw, words", [
    (b"", "no header"), (b"\x05\x00", "no header"), (struct.pack("<Q", 10**9) + b"{}", "header length"),
    (struct.pack("<Q", 4) + b"{x}}", "corrupt safetensors header"), (struct.pack("<Q", 2) + b"\xff\xfe", "start"),
])
def test_truncated_or_garbage_safetensors(raw, words, tmp_path, capsys):
    f = tmp_path / "m.safetensors"
    f.write_bytes(raw)
    assert _conv(f, tmp_path / "out") == 2
    one_line(capsys, str(f), words)


def _shards(folder: Path, weight_map) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_safetensors(folder / "s1.safetensors", {"a": np.ones(2, np.float32)})
    idx = folder / "model.safetensors.index.json"
    idx.write_text(weight_map if isinstance(weight_map, str) else json.dumps({"weight_map": weight_map}))
    return idx


@pytest.mark.parametrize("name, weight_map, words", [
    ("parent", {"a": "../outside.safetensors"}, "outside the model folder"),
    ("absolute", {"a": "/etc/passwd"}, "outside the model folder"),
    ("link out", {"a": "link.safetensors"}, "outside the model folder"),
    ("not a name", {"a": 7}, "not a file name"),
    ("missing shard", {"a": "s9.safetensors"}, "missing file"),
    ("wrong shard", {"a": "s1.safetensors", "b": "s1.safetensors"}, "listed in the index but not in"),
    ("no weight_map", '{"metadata": {}}', "no weight_map"),
    ("a list", "[1, 2]", "expected an object"),
    ("bad JSON", '{"weight_map": {', "cannot read JSON"),
    ("empty", "", "cannot read JSON"),
])
def test_corrupt_index_files(name, weight_map, words, tmp_path, capsys):
    save_safetensors(tmp_path / "outside.safetensors", {"a": np.ones(2, np.float32)})
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    idx = _shards(tmp_path / "m", weight_map)
    assert _conv(tmp_path / "m", tmp_path / "out") == 2
    one_line(capsys, words)
    assert _conv(idx, tmp_path / "out") == 2  # the index file named directly: the same rules
    one_line(capsys, words)


# ---------------------------------------------------------------- other corrupt inputs of the converter


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_RAN",))


def test_corrupt_pickles_and_our_own_checkpoints(wan, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    raw = good.read_bytes()
    bad = {"zero.pt": b"", "truncated.pt": raw[: len(raw) // 2], "garbage.pth": os.urandom(256),
           "text.bin": b"not a pickle at all\n"}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    torch.save({"w": 3}, tmp_path / "int.pt")
    for name in [*bad, "evil.pt", "list.pt", "int.pt"]:
        assert _conv(tmp_path / name, tmp_path / "out") == 2, name
        one_line(capsys, name)
    assert not (tmp_path / "EVIL_RAN").exists()
    # our own checkpoints, exported with --to torch: a broken yume_jax.json or params file
    for name, edit in {"meta list": lambda d: (d / "yume_jax.json").write_text("[1]"),
                       "meta bad JSON": lambda d: (d / "yume_jax.json").write_text("{"),
                       "meta family": lambda d: (d / "yume_jax.json").write_text('{"family": "toaster"}'),
                       "params zero": lambda d: (d / "params.safetensors").write_bytes(b""),
                       "params gone": lambda d: (d / "params.safetensors").unlink()}.items():
        d = tmp_path / name.replace(" ", "_")
        shutil.copytree(wan / "jax", d)
        edit(d)
        assert convert_main([str(d), str(tmp_path / "t"), "--to", "torch", "--no-progress"]) == 2, name
        one_line(capsys, str(d))
    for src in (Path("/dev/null"), tmp_path / "nothing", tmp_path / "empty_dir"):
        (tmp_path / "empty_dir").mkdir(exist_ok=True)
        assert _conv(src, tmp_path / "out") == 2
        one_line(capsys, str(src))


def test_bad_numbers_and_config_fields(wan, tmp_path, capsys):
    for heads in ("-4", "0", "100000"):
        assert _conv(wan / "src" / "dit.safetensors", tmp_path / "o", "--num-heads", heads) == 2
        one_line(capsys, "--num-heads")
    src = tmp_path / "cfg"
    shutil.copytree(wan / "src", src)
    for cfg, words in (({"eps": "tiny"}, "eps"), ({"eps": -1}, "eps"), ({"num_attention_heads": -4}, "heads"),
                       ({"num_attention_heads": "4"}, "heads")):
        (src / "config.json").write_text(json.dumps(cfg))
        assert convert_main([str(src), str(tmp_path / "o"), "--no-progress"]) == 2
        one_line(capsys, words)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------- signals, full disks, leftovers, concurrency (defects 8, 9)


def _fail_on_second_write(monkeypatch, action):
    real = SafetensorsWriter.write
    n = {"i": 0}

    def write(self, key, array):
        n["i"] += 1
        if n["i"] == 2:
            action()
        return real(self, key, array)
    monkeypatch.setattr(SafetensorsWriter, "write", write)


@pytest.mark.parametrize("fault, code, words", [
    (lambda: os.kill(os.getpid(), signal.SIGTERM), 143, "SIGTERM"),
    (lambda: os.kill(os.getpid(), signal.SIGINT), 130, "interrupted"),
    (lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")), 2, "no space left"),
    (lambda: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied")), 2, "permission denied"),
])
def test_convert_interrupted_or_out_of_space_mid_write_leaves_nothing(wan, tmp_path, capsys, monkeypatch, fault,
                                                                     code, words):
    dst = tmp_path / "jax"
    shutil.copytree(wan / "jax", dst)  # a previous output, to be replaced
    before = _fingerprint(dst)
    _fail_on_second_write(monkeypatch, fault)
    assert _conv(wan / "src" / "dit.safetensors", dst, "--force") == code
    one_line(capsys, words)
    assert _fingerprint(dst) == before and leftovers(dst) == []


def test_unwritable_destinations(wan, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for dst in (tmp_path / "file" / "sub", Path("/proc/version/x"), Path("/dev/null/x")):
        assert _conv(wan / "src" / "dit.safetensors", dst) == 2
        one_line(capsys, str(dst.parent.name))


def test_leftovers_of_killed_runs_are_removed_by_the_next(wan, tmp_path):
    dst = tmp_path / "jax"
    # a real SIGKILL mid-write: the process dies inside atomic_dir
    code = ("import os, signal, sys; from yume_jax.core.checkpoint import atomic_dir\n"
            f"with atomic_dir({str(dst)!r}) as t:\n    (t / 'half').write_bytes(b'x')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "JAX_PLATFORMS": "cpu"}).returncode == -9
    killed = leftovers(dst)
    assert len(killed) == 1 and killed[0].startswith("jax.partial-")
    dead = dead_pid()
    for name in (f"jax.partial-{dead}", f"jax.old-{dead}-0a1b2c3d"):
        (tmp_path / name).mkdir()
    live = tmp_path / f"jax.partial-{os.getpid()}-ffffffff"  # a concurrent writer that is alive: kept
    live.mkdir()
    (tmp_path / f"jax.partial-{dead}.txt").write_text("not ours")  # not a leftover name: kept
    assert _conv(wan / "src" / "dit.safetensors", dst) == 0
    assert leftovers(dst) == sorted([live.name, f"jax.partial-{dead}.txt"])


def test_concurrent_conversions_into_one_output_leave_one_complete_result(wan, tmp_path):
    from yume_jax.convert import convert

    dst = tmp_path / "jax"
    shutil.copytree(wan / "jax", dst)
    errors = []

    def one():
        try:
            convert(wan / "src" / "dit.safetensors", dst, force=True, progress=False, num_heads=4)
        except OSError as e:  # the loser of a rename race may fail cleanly; the output stays whole
            errors.append(e)
    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) < 3
    assert _fingerprint(dst) == _fingerprint(wan / "jax") and leftovers(dst) == []


# ------------------------------------------------------------------ inference CLIs: numbers (defect 7)

EXPLORE_BAD = [["--cfg", "nan"], ["--cfg", "inf"], ["--cfg", "-1"], ["--steps", "0"], ["--steps", "-3"],
               ["--height", "0"], ["--width", "-16"], ["--chunk-frames", "0"], ["--seed", "-1"],
               ["--seed", str(2**40)], ["--cache", "-1"], ["--max-history", "0"], ["--steps", "100000"]]


@pytest.mark.parametrize("args", EXPLORE_BAD, ids=" ".join)
def test_explore_and_evaluate_reject_bad_numbers(args, tmp_path, capsys):
    from infer import evaluate, explore

    assert explore.main([*args, "--actions", "W", "--out", str(tmp_path / "o.mp4")]) == 2
    one_line(capsys, args[0])
    if args[0] != "--max-history":  # evaluate has no --max-history
        assert evaluate.main([*args, "--out", str(tmp_path / "e")]) == 2
        one_line(capsys, args[0])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, words", [
    (["--compare", "cfg=nan"], "cfg"), (["--compare", "name=a,steps=0"], "steps"),
    (["--compare", "steps=x"], "bad run spec"), (["--views", "0"], "--views"), (["--cases", "nope"], "nope"),
    (["--image", "missing.png", "--actions", "W"], "missing.png"), (["--image", "x.png"], "--actions"),
    (["--image", "x.png", "--actions", "W*300000000"], "100000 steps"),
])
def test_evaluate_bad_input(argv, words, tmp_path, capsys, monkeypatch):
    from infer import evaluate

    monkeypatch.chdir(tmp_path)
    assert evaluate.main([*argv, "--out", str(tmp_path / "e")]) == 2
    one_line(capsys, words)
    assert not (tmp_path / "e" / "report.json").exists()


@pytest.mark.parametrize("argv, words", [
    (["--cfg", "nan"], "--cfg"), (["--steps", "0"], "--steps"), (["--refresh", "0"], "--refresh"),
    (["--num", "-1"], "--num"), (["--seed", "-1"], "--seed"), (["--action", "Q"], "--action"),
    ([], "neither a pipeline directory"),
])
def test_calibrate_cache_bad_input(argv, words, tmp_path, capsys):
    from infer import calibrate_cache

    assert calibrate_cache.main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "c.json"),
                                 *argv]) == 2
    one_line(capsys, words)
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("argv, words", [
    (["--clips", "0"], "--clips"), (["--frames", "1"], "--frames"), (["--height", "7"], "--height"),
    (["--width", "33"], "even"), (["--seed", "-1"], "--seed"), (["--workers", "0"], "--workers"),
    (["--min-clip-frames", "-2"], "--min-clip-frames"), (["--script", "W*300000000"], "100000 steps"),
    (["--script", "Q*2"], "--script"),
])
def test_world_bad_numbers_and_scripts(argv, words, tmp_path, capsys):
    from yume_jax.data import world

    assert world.main(["--out", str(tmp_path / "w"), *argv]) == 2
    one_line(capsys, words)
    assert list(tmp_path.iterdir()) == []


def test_action_repeats_are_capped():
    from yume_jax.camera import keyboard as camera

    with pytest.raises(ValueError, match="100000 steps"):
        camera.parse_keys("W*300000000")
    with pytest.raises(ValueError, match="100000 steps"):
        camera.parse_keys(", ".join(["W*60000"] * 2))
    assert len(camera.parse_keys("W*100000")) == camera.MAX_STEPS


# ----------------------------------------------------------------------- images and videos (defects 7, 8)


def _png16(path: Path, value: int) -> Path:
    Image.fromarray(np.full((8, 8), value, np.uint16)).save(path)
    return path


def test_images_of_every_mode_become_8_bit_rgb(tmp_path):
    from yume_jax.media import load_image

    with Image.open(_png16(tmp_path / "g16.png", 32896)) as im:
        assert im.mode.startswith("I")  # really a 16-bit image
    assert np.all(load_image(tmp_path / "g16.png") == 128)  # mid-grey, not white
    assert np.all(load_image(_png16(tmp_path / "b16.png", 65535)) == 255)
    assert np.all(load_image(_png16(tmp_path / "d16.png", 257)) == 1)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "c.jpg")[0, 0, 0] > 200 and load_image(tmp_path / "c.jpg")[0, 0, 1] < 60  # red
    Image.new("P", (8, 8), 3).save(tmp_path / "p.png", transparency=3)
    Image.new("LA", (8, 8), (100, 0)).save(tmp_path / "la.png")
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(tmp_path / "f.tiff")
    for name in ("p.png", "la.png", "f.tiff"):
        a = load_image(tmp_path / name)
        assert a.shape == (8, 8, 3) and a.dtype == np.uint8, name
    assert np.all(load_image(tmp_path / "f.tiff") == 128)


def test_broken_images_and_videos_are_one_line_errors(tmp_path, capsys):
    from infer import explore

    Image.new("RGB", (64, 64), (9, 9, 9)).save(tmp_path / "ok.png")
    raw = (tmp_path / "ok.png").read_bytes()
    files = {"zero.png": b"", "truncated.png": raw[: len(raw) // 2], "garbage.jpg": os.urandom(300),
             "text.png": b"hello"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "dir.png").mkdir()
    for name in [*files, "dir.png", "missing.png"]:
        assert explore.main(["--image", str(tmp_path / name), "--actions", "W", "--out", str(tmp_path / "o.mp4")]) == 2
        one_line(capsys, name)
    for name in ("zero.png", "garbage.jpg"):
        v = tmp_path / name.replace(".png", ".mp4").replace(".jpg", ".mp4")
        v.write_bytes(files[name])
        assert explore.main(["--video", str(v), "--actions", "W", "--out", str(tmp_path / "o.mp4")]) == 2
        one_line(capsys, v.name)
    assert explore.main(["--image", "/dev/null", "--actions", "W", "--out", str(tmp_path / "o.mp4")]) == 2
    one_line(capsys, "/dev/null")
    assert not (tmp_path / "o.mp4").exists()


def test_non_finite_pixels_are_an_error_not_a_black_frame():
    from yume_jax.media import NonFiniteError, to_uint8

    v = np.zeros((1, 3, 2, 4, 4), np.float32)
    assert to_uint8(v).shape == (2, 4, 4, 3)
    v[0, 1, 1, 2, 2] = np.nan
    with pytest.raises(NonFiniteError, match="1 non-finite"):
        to_uint8(v)


def test_frames_are_converted_on_the_device_and_fetched_as_uint8():
    """to_uint8 rounds and counts NaN/inf on the device: the host fetches uint8 frames and a count, never the
    float32 video (4x the bytes, and per-pixel NumPy work on the host's critical path)."""
    import jax
    import jax.numpy as jnp
    from jax._src import array as jarray

    from yume_jax.media import to_uint8

    rng = np.random.default_rng(0)
    v = rng.uniform(-1.2, 1.2, (1, 3, 5, 8, 16)).astype(np.float32)
    v[0, :, 0, 0, :4] = [-1.0, 1.0, -1 + 0.5 / 127.5, 1 / 255.0 - 1]  # ties and the ends
    want = np.clip(np.round((v[0].transpose(1, 2, 3, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    video = jax.device_put(jnp.asarray(v))
    fetched, orig = [], jarray.ArrayImpl._value

    def spy(self):
        fetched.append(str(self.dtype))
        return orig.fget(self)
    jarray.ArrayImpl._value = property(spy)
    try:
        got = to_uint8(video)
    finally:
        jarray.ArrayImpl._value = orig
    np.testing.assert_array_equal(got, want)
    assert fetched and "float32" not in fetched and "uint8" in fetched, fetched


# -------------------------------------------------------------- outputs: special, locked, leftovers


def test_special_or_busy_outputs(tmp_path, capsys):
    from infer import calibrate_cache, evaluate, explore
    from yume_jax.data import world

    (tmp_path / "adir.mp4").mkdir()
    (tmp_path / "afile").write_text("x")
    assert explore.main(["--actions", "W", "--out", str(tmp_path / "adir.mp4")]) == 2
    one_line(capsys, "not a regular file")
    assert explore.main(["--actions", "W", "--out", "/dev/null"]) == 2
    one_line(capsys, "/dev/null")
    assert evaluate.main(["--out", str(tmp_path / "afile")]) == 2
    one_line(capsys, "not a directory")
    assert world.main(["--out", str(tmp_path / "afile")]) == 2
    one_line(capsys, "not a directory")
    assert world.main(["--out", str(tmp_path)]) == 2
    one_line(capsys, "not empty")
    assert world.main(["--out", "/proc/self/x"]) == 2
    one_line(capsys, "/proc/self")
    # a second run into an output another run is writing: refused at once
    with ckpt.output_lock(tmp_path / "o.mp4"):
        assert explore.main(["--actions", "W", "--out", str(tmp_path / "o.mp4")]) == 2
        one_line(capsys, "another run is writing")
    with ckpt.output_lock(tmp_path / "e"):
        assert evaluate.main(["--out", str(tmp_path / "e")]) == 2
        one_line(capsys, "another run is writing")
    with ckpt.output_lock(tmp_path / "w"):
        assert world.main(["--out", str(tmp_path / "w")]) == 2
        one_line(capsys, "another run is writing")
    assert calibrate_cache.main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "adir.mp4")]) == 2
    one_line(capsys, "not a regular file")


def test_world_writes_complete_or_nothing(tmp_path, capsys, monkeypatch):
    from yume_jax.data import world

    args = ["--preset", "tiny", "--frames", "3", "--clips", "2"]
    real = world._write_one

    def killed(job):
        row = real(job)
        os.kill(os.getpid(), signal.SIGTERM)
        return row
    monkeypatch.setattr(world, "_write_one", killed)
    assert world.main([*args, "--out", str(tmp_path / "w")]) == 143
    one_line(capsys, "SIGTERM")
    assert list(tmp_path.iterdir()) == [tmp_path / ".w.lock"]

    def full(job):
        real(job)
        raise OSError(errno.ENOSPC, "No space left on device", str(job[0] / "x.mp4"))
    monkeypatch.setattr(world, "_write_one", full)
    assert world.main([*args, "--out", str(tmp_path / "w")]) == 2
    one_line(capsys, "no space left on device")
    assert list(tmp_path.iterdir()) == [tmp_path / ".w.lock"]
    monkeypatch.setattr(world, "_write_one", real)
    assert world.main([*args, "--out", str(tmp_path / "w")]) == 0
    assert (tmp_path / "w" / "train" / "sekai-sandbox.csv").is_file() and leftovers(tmp_path / "w") == []


# ------------------------------------------ pipeline directories: corrupt parts (loaded, never sampled)

SMALL = {"height": 32, "width": 48, "chunk_frames": 1, "steps": 1, "cfg": 1.0}


def _pipeline(tmp_path: Path, wan: Path, edit) -> Path:
    """A pipeline directory whose dit/ is the tiny converted DiT and whose other parts are empty folders: each
    case breaks one thing that is read before any other part loads."""
    d = tmp_path / "p"
    shutil.copytree(wan / "jax", d / "dit")
    for part in ("vae", "text_encoder"):
        (d / part).mkdir()
    (d / "pipeline.json").write_text(json.dumps(SMALL))
    edit(d)
    return d


PIPELINE_FAULTS = {
    "pipeline.json a list": (lambda d: (d / "pipeline.json").write_text("[1]"), "expected a JSON object"),
    "pipeline.json bad JSON": (lambda d: (d / "pipeline.json").write_text("{"), "pipeline.json: corrupt JSON"),
    "pipeline.json not UTF-8": (lambda d: (d / "pipeline.json").write_bytes(b"\xff\xfe{"), "pipeline.json"),
    "pipeline.json steps 0": (lambda d: (d / "pipeline.json").write_text('{"steps": 0}'), "pipeline.json: steps"),
    "pipeline.json cfg NaN": (lambda d: (d / "pipeline.json").write_text('{"cfg": NaN}'), "pipeline.json: cfg"),
    "pipeline.json height text": (lambda d: (d / "pipeline.json").write_text('{"height": "tall"}'), "height"),
    "pipeline.json seed -1": (lambda d: (d / "pipeline.json").write_text('{"seed": -1}'), "pipeline.json: seed"),
    "dit yume_jax.json": (lambda d: (d / "dit" / "yume_jax.json").write_text("{"), "yume_jax.json"),
    "dit params zero bytes": (lambda d: (d / "dit" / "params.safetensors").write_bytes(b""), "params.safetensors"),
    "dit params overlap": (lambda d: _st(d / "dit" / "params.safetensors", BAD_HEADERS["overlap"][0], bytes(12)),
                           "overlaps"),
    "wrong-family vae": (lambda d: (d / "vae").rmdir() or shutil.copytree(d / "dit", d / "vae"), "not a VAE"),
    "no text encoder": (lambda d: shutil.rmtree(d / "text_encoder"), "missing text_encoder"),
}


@pytest.mark.parametrize("name", sorted(PIPELINE_FAULTS))
def test_corrupt_pipeline_parts(name, wan, tmp_path, capsys):
    from infer import calibrate_cache, explore

    edit, words = PIPELINE_FAULTS[name]
    d = _pipeline(tmp_path, wan, edit)
    assert explore.main(["--checkpoint", str(d), "--actions", "W", "--out", str(tmp_path / "o.mp4")]) == 2
    one_line(capsys, words)
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o.mp4.json").exists()
    if name.startswith("pipeline.json"):
        assert calibrate_cache.main(["--checkpoint", str(d), "--out", str(tmp_path / "c.json")]) == 2
        one_line(capsys, words)


# ------------------------------------ the explorer's run loop: NaN chunks, signals, full disks (a stand-in model)


class _Session:
    """Stands in for yume_jax.rollout.Session (the run loop is under test, not the model): ``fault(i)`` runs
    when chunk ``i``'s frames are fetched (where the real session waits for the device and finds NaN)."""

    fault = staticmethod(lambda i: None)

    def __init__(self, pipe, config, image=None, video=None):
        self.config, self.records = config, []
        self.initial_frames = np.zeros((1, config.height, config.width, 3), np.uint8)

    def submit(self, action):
        i = len(self.records)
        rec = dict(chunk=i, action=str(action), video_frames=4, timings_s=dict(text=0.0, dispatch=0.0))
        self.records.append(rec)
        return _Chunk(self, rec)

    def step(self, action):  # the blocking path (infer.calibrate_cache): submit, then fetch
        chunk = self.submit(action)
        return chunk.frames(), chunk.record


class _Chunk:
    def __init__(self, session, record):
        self.session, self.record = session, record

    def frames(self):
        i = self.record["chunk"]
        type(self.session).fault(i)
        self.record["critical_path_s"] = dict(text=0.0, dispatch=0.0, wait=0.0, interval=None if i == 0 else 0.1)
        return np.full((4, self.session.config.height, self.session.config.width, 3), 40 * (i + 1), np.uint8)


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from yume_jax import pipeline, rollout
    from yume_jax.convert import pipeline_dirs

    pipe = SimpleNamespace(run_defaults=lambda: dict(SMALL), defaults=dict(SMALL), source=str(tmp_path),
                           dit=SimpleNamespace(config=SimpleNamespace(image_dim=None)))
    pipe.sampler_config = lambda **kw: pipeline.sampler_config(pipe.run_defaults(), **kw)
    monkeypatch.setattr(pipeline_dirs, "resolve", lambda p, **kw: Path(p))
    monkeypatch.setattr(pipeline, "load_pipeline", lambda p, **kw: pipe)
    monkeypatch.setattr(rollout, "Session", _Session)
    monkeypatch.setattr(_Session, "fault", staticmethod(lambda i: None))
    return lambda fault: monkeypatch.setattr(_Session, "fault", staticmethod(fault))


def _explore(tmp_path, actions="W,W,W"):
    from infer import explore

    return explore.main(["--checkpoint", str(tmp_path), "--actions", actions, "--out", str(tmp_path / "o.mp4")])


def _frames(path: Path) -> int:
    from yume_jax.data import video

    return video.probe(str(path)).num_frames


def _raise(e):
    raise e


@pytest.mark.parametrize("case", ["nan", "sigterm", "sigint", "enospc", "eacces"])
def test_explore_run_loop_faults(case, stand_in, tmp_path, capsys, monkeypatch):
    from yume_jax.media import NonFiniteError

    faults = {"nan": (lambda i: i == 1 and _raise(NonFiniteError("the model produced 3 non-finite values")), 2),
              "sigterm": (lambda i: i == 1 and os.kill(os.getpid(), signal.SIGTERM), 143),
              "sigint": (lambda i: i == 1 and os.kill(os.getpid(), signal.SIGINT), 130),
              "enospc": (lambda i: i == 1 and _raise(OSError(errno.ENOSPC, "No space", str(tmp_path / "o.mp4"))), 2),
              "eacces": (lambda i: i == 1 and _raise(PermissionError(errno.EACCES, "denied", str(tmp_path))), 2)}
    fault, code = faults[case]
    stand_in(fault)
    assert _explore(tmp_path) == code
    side = json.loads((tmp_path / "o.mp4.json").read_text())
    assert side["finished"] is False
    done = 2 if case.startswith("sig") else 1  # a signal lets the chunk in flight finish
    assert len(side["chunks"]) == done and side["frames"] == _frames(tmp_path / "o.mp4") == 1 + 4 * done
    if code == 2:
        one_line(capsys, {"nan": "non-finite", "enospc": "no space left", "eacces": "permission denied"}[case])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".o.mp4.lock", "o.mp4", "o.mp4.json"]


def test_explore_full_disk_while_publishing_keeps_the_previous_video(stand_in, tmp_path, capsys, monkeypatch):
    from infer import mp4

    assert _explore(tmp_path, "W") == 0
    before = (tmp_path / "o.mp4").read_bytes()
    real = mp4.av.open

    def full(path, *a, **k):
        if ".partial-" in str(path):
            Path(path).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(mp4.av, "open", full)
    assert _explore(tmp_path, "W") == 2
    one_line(capsys, "no space left on device")
    assert (tmp_path / "o.mp4").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_explore_removes_video_leftovers_of_killed_runs(stand_in, tmp_path):
    dead = dead_pid()
    stale = tmp_path / f".o.mp4.partial-{dead}.mp4"
    stale.write_bytes(b"half")
    assert _explore(tmp_path, "W") == 0
    assert not stale.exists() and _frames(tmp_path / "o.mp4") == 5


def test_calibration_never_writes_a_nan_ranking(stand_in, tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    import jax.numpy as jnp

    from infer import calibrate_cache
    from yume_jax import pipeline
    from yume_jax.sampling import cache as blockcache

    pj = tmp_path / "pipeline.json"
    pj.write_text(json.dumps(SMALL))
    pipe = SimpleNamespace(defaults=dict(SMALL), source=str(tmp_path),
                           dit=SimpleNamespace(config=SimpleNamespace(image_dim=None, num_layers=4)))
    monkeypatch.setattr(pipeline, "load_pipeline", lambda p, **kw: pipe)

    class S(_Session):
        history = jnp.zeros((1, 2, 3, 1, 1))
    from yume_jax import rollout
    monkeypatch.setattr(rollout, "Session", S)
    nan = float("nan")
    monkeypatch.setattr(blockcache, "calibrate", lambda *a, **k: {"blocks": [1], "error": nan,
                                                                  "steps": [{"block": 1, "error": nan}]})
    args = ["--checkpoint", str(tmp_path), "--out", str(tmp_path / "c.json"), "--write-pipeline"]
    assert calibrate_cache.main(args) == 2
    one_line(capsys, "non-finite")
    assert json.loads(pj.read_text()) == SMALL and not (tmp_path / "c.json").exists()
    S.history = jnp.full((1, 2, 3, 1, 1), jnp.nan)  # the uncached reference itself is NaN
    assert calibrate_cache.main(args) == 2
    one_line(capsys, "non-finite latents")
    S.history = jnp.zeros((1, 2, 3, 1, 1))
    monkeypatch.setattr(blockcache, "calibrate", lambda *a, **k: {"blocks": [2], "error": 0.25,
                                                                  "steps": [{"block": 2, "error": 0.25}]})
    real = ckpt.atomic_write_text

    def full(path, text):
        if Path(path).name == "pipeline.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)
    monkeypatch.setattr(ckpt, "atomic_write_text", full)
    assert calibrate_cache.main(args) == 2
    one_line(capsys, "no space left on device")
    assert json.loads(pj.read_text()) == SMALL

    def killed(path, text):
        if Path(path).name == "pipeline.json":
            os.kill(os.getpid(), signal.SIGTERM)
        return real(path, text)
    monkeypatch.setattr(ckpt, "atomic_write_text", killed)
    assert calibrate_cache.main(args) == 143
    one_line(capsys, "SIGTERM")
    assert json.loads(pj.read_text()) == SMALL
    monkeypatch.setattr(ckpt, "atomic_write_text", real)
    assert calibrate_cache.main(args) == 0
    assert json.loads(pj.read_text())["cache_blocks"] == [2]
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


# --------------------------------------------------------------------- evaluation reports: complete or absent


@pytest.fixture
def fake_report(monkeypatch):
    from yume_jax.eval import harness, report

    def sheet(run, path, **kw):
        Image.new("RGB", (4, 4)).save(path)
        return path

    def plots(rep, out):
        Image.new("RGB", (4, 4)).save(out / "psnr_drift.png")
        return [out / "psnr_drift.png"]
    monkeypatch.setattr(harness, "summarize", lambda r: {"if": 1.0})
    monkeypatch.setattr(report, "contact_sheet", sheet)
    monkeypatch.setattr(report, "plots", plots)
    monkeypatch.setattr(report, "versions", lambda: {})
    monkeypatch.setattr(report, "markdown", lambda rep: "| run |\n")
    return report


@pytest.mark.parametrize("fault", ["enospc", "sigterm"])
def test_report_is_complete_or_the_previous_one(fault, fake_report, tmp_path, monkeypatch):
    from yume_jax.core import cli

    runs = lambda tag: [{"spec": {"name": tag}, "cases": [{"case": tag}]}]  # noqa: E731
    fake_report.write(tmp_path, "images", runs("first"))
    before = _fingerprint(tmp_path)
    real = ckpt.atomic_write_text

    def broken(path, text):
        if Path(path).name == "report.json":
            if fault == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            with cli.signals_raise():
                os.kill(os.getpid(), signal.SIGTERM)
        return real(path, text)
    monkeypatch.setattr(ckpt, "atomic_write_text", broken)
    with pytest.raises(cli.Interrupted if fault == "sigterm" else OSError):
        fake_report.write(tmp_path, "images", runs("second"))
    assert _fingerprint(tmp_path) == before and json.loads((tmp_path / "report.json").read_text())["runs"][0][
        "spec"]["name"] == "first"
    dead = dead_pid()
    (tmp_path / f".report.partial-{dead}-00ff00ff").mkdir()
    monkeypatch.setattr(ckpt, "atomic_write_text", real)
    fake_report.write(tmp_path, "images", runs("third"))
    assert json.loads((tmp_path / "report.json").read_text())["runs"][0]["spec"]["name"] == "third"
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_evaluate_interrupted_writes_no_report(tmp_path, capsys, monkeypatch):
    from infer import evaluate
    from yume_jax.eval import harness

    def run_sandbox(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not interrupted")
    monkeypatch.setattr(harness, "run_sandbox", run_sandbox)
    assert evaluate.main(["--cases", "quick", "--out", str(tmp_path / "e")]) == 143
    one_line(capsys, "SIGTERM")
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())
