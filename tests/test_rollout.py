"""Rollout (issue 8): determinism, compile counts, block caching, history modes, starts; the explorer
CLI end to end (scripted, bad input, interruption, interactive through a pseudo-terminal)."""
from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from yume_jax.rollout import RolloutConfig, Session, load_pipeline, save_tiny_pipeline
from yume_jax.sampling.api import SamplerConfig

FAST = SamplerConfig(steps=2, cfg_scale=1.0)


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe") / "tiny"
    save_tiny_pipeline(d, defaults={"height": 32, "width": 48, "chunk_frames": 1, "steps": 2, "cfg": 1.0})
    return d


@pytest.fixture(scope="module")
def pipe(pipe_dir):
    return load_pipeline(pipe_dir)


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)


def _cfg(**kw):
    return RolloutConfig(**{**dict(height=32, width=48, chunk_frames=1, sampler=FAST), **kw})


def _run(pipe, image, actions, **kw):
    s = Session(pipe, _cfg(**kw), image=image)
    frames = [s.step(a)[0] for a in actions]
    return s, np.concatenate([s.initial_frames] + frames)


def test_same_seed_same_video_bit_exact(pipe, image):
    _, a = _run(pipe, image, ["W", "W+A", "→"], seed=3)
    _, b = _run(pipe, image, ["W", "W+A", "→"], seed=3)
    _, c = _run(pipe, image, ["W", "W+A", "→"], seed=4)
    assert a.shape == (1 + 3 * 4, 32, 48, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_compiles_once_per_distinct_shape(pipe, image):
    """5 chunks with history capped at 2 latent frames: shapes H=1 then H=2 -> exactly 2 compiles."""
    s, _ = _run(pipe, image, ["W"] * 5, max_history=2)
    hist = [r["history_frames"] for r in s.records]
    assert hist == [1, 2, 2, 2, 2]
    assert s.sampler.traces == len(set(hist)) == 2


def test_block_cache_refresh_every_step_equals_no_cache(pipe, image):
    s0, v0 = _run(pipe, image, ["W", "D"])
    s1, v1 = _run(pipe, image, ["W", "D"], block_cache=1, cache_blocks=(0, 2))
    s2, v2 = _run(pipe, image, ["W", "D"], block_cache=2, cache_blocks=(0, 2))
    assert np.array_equal(np.asarray(s0.history), np.asarray(s1.history)) and np.array_equal(v0, v1)
    assert not np.array_equal(np.asarray(s0.history), np.asarray(s2.history))


def test_history_modes_and_starts(pipe, image):
    s, v = _run(pipe, image, ["W", "S"], history_mode="clean")
    assert s.history.shape[2] == 3 and np.isfinite(np.asarray(s.history)).all()
    # video-to-video: 9 frames -> 3 latent frames of history, decoded back as the first frames
    video = np.stack([image] * 9)
    s2 = Session(pipe, _cfg(), video=video)
    assert s2.history.shape[2] == 3 and len(s2.initial_frames) == 9
    assert s2.step("A")[0].shape == (4, 32, 48, 3)
    with pytest.raises(ValueError, match="image-to-video"):
        Session(pipe, _cfg())  # the tiny pipeline is I2V: text-only is refused clearly


def test_only_new_frames_are_decoded(pipe, image):
    """Each chunk decodes exactly its new latent frames (4 video frames each), continuing the cache."""
    s, v = _run(pipe, image, ["W", "W", "W"])
    assert [r["video_frames"] for r in s.records] == [4, 4, 4]
    whole = s.pipe.vae.decode(s.history)
    from yume_jax.rollout import to_uint8

    np.testing.assert_allclose(to_uint8(whole).astype(int), v.astype(int), atol=1)


# ---------------------------------------------------------------------------------------------
# the CLI

def _cli(pipe_dir, *args, **kw):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "infer.explore", "--checkpoint", str(pipe_dir), *args],
                          capture_output=True, text=True, timeout=600, env=env, **kw)


def _frames(path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.fixture(scope="module")
def png(tmp_path_factory, image):
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "start.png"
    Image.fromarray(image).save(p)
    return p


def test_explore_scripted_writes_video_and_sidecar(pipe_dir, png, tmp_path):
    out = tmp_path / "walk.mp4"
    r = _cli(pipe_dir, "--image", str(png), "--actions", "W,W+A,right", "--out", str(out), "--seed", "7")
    assert r.returncode == 0, r.stderr
    assert _frames(out) == 1 + 3 * 4
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["finished"] and side["frames"] == 13 and len(side["chunks"]) == 3
    assert [c["action"] for c in side["chunks"]] == ["W ·", "W+A ·", "None →"]
    assert all("prompt" in c and "timings_s" in c for c in side["chunks"])
    assert side["config"]["seed"] == 7 and side["config"]["sampler"]["steps"] == 2


@pytest.mark.parametrize("args, match", [
    (["--actions", "W,Q"], "Valid tokens"),
    (["--actions", "W", "--image", "/nonexistent.png"], "image not found"),
])
def test_explore_bad_input_exits_2(pipe_dir, png, tmp_path, args, match):
    if "--image" not in args:
        args = ["--image", str(png)] + args
    r = _cli(pipe_dir, *args, "--out", str(tmp_path / "x.mp4"))
    assert r.returncode == 2 and match in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_explore_interrupted_keeps_finished_chunks(pipe_dir, png, tmp_path):
    out = tmp_path / "int.mp4"
    side = Path(str(out) + ".json")
    p = subprocess.Popen([sys.executable, "-m", "infer.explore", "--checkpoint", str(pipe_dir), "--image", str(png),
                          "--actions", ",".join(["W"] * 50), "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if side.exists() and len(json.loads(side.read_text())["chunks"]) >= 2:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    meta = json.loads(side.read_text())
    n = len(meta["chunks"])
    assert 2 <= n < 50 and not meta["finished"]
    assert _frames(out) == 1 + 4 * n == meta["frames"]


def test_explore_interactive_through_a_pty(pipe_dir, png, tmp_path):
    out = tmp_path / "tty.mp4"
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "infer.explore", "--checkpoint", str(pipe_dir), "--image", str(png),
                          "--out", str(out)], stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    buf = b""

    def wait_for(text, timeout=300):
        nonlocal buf
        end = time.time() + timeout
        while text.encode() not in buf and time.time() < end:
            r, _, _ = select.select([master], [], [], 1.0)
            if r:
                try:
                    buf += os.read(master, 4096)
                except OSError:
                    break
        assert text.encode() in buf, buf.decode(errors="replace")[-2000:]

    wait_for("> ")
    os.write(master, b"W\n")
    wait_for("chunk 0:")
    os.write(master, b"\x1b[C\n")  # the right-arrow key
    wait_for("chunk 1:")
    os.write(master, b"nonsense\n")
    wait_for("Valid tokens")
    os.write(master, b"q\n")
    p.wait(timeout=120)
    os.close(master)
    assert p.returncode == 0
    side = json.loads(Path(str(out) + ".json").read_text())
    assert [c["action"] for c in side["chunks"]] == ["W ·", "None →"]
    assert _frames(out) == 1 + 2 * 4


def test_text_only_start_with_a_t2v_model():
    """A model without image cross-attention starts from text alone (no history in the first chunk)."""
    from configs.models import get
    from yume_jax.encoders import TextEncoder
    from yume_jax.presets import encoder as enc_get
    from yume_jax.models.loader import DiT, build
    from yume_jax.models.yume import add_yume_extras
    from yume_jax.rollout import Pipeline
    from yume_jax.presets import VAE as PRESETS
    from yume_jax.vae import WanVAE
    from yume_jax.vae.params import init_params

    te = TextEncoder.random(enc_get("tiny-umt5"), seed=1)
    dit = DiT(add_yume_extras(build(get("tiny-t2v", text_dim=te.config.dim), seed=1)))
    cfg = PRESETS["tiny-2.1"]
    p = Pipeline(dit=dit, vae=WanVAE(cfg, init_params(cfg, 1)), text_encoder=te)
    p.check()
    s = Session(p, _cfg())
    assert s.history is None and len(s.initial_frames) == 0
    f0, r0 = s.step("W")
    f1, r1 = s.step("→")
    assert f0.shape == (1, 32, 48, 3) and f1.shape == (4, 32, 48, 3)  # first decode: 1 frame per latent
    assert (r0["history_frames"], r1["history_frames"]) == (0, 1)
