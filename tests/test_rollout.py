"""Rollout (issue 8): determinism, compile counts (per shape, and shared by the sessions of one pipeline),
block caching, history modes, starts, the shared I2V conditioning; the explorer CLI end to end (scripted, bad
input, interruption, interactive through a pseudo-terminal)."""
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

from yume_jax.media import to_uint8
from yume_jax.pipeline import load_pipeline
from yume_jax.rollout import RolloutConfig, Session
from yume_jax.sampling.api import AAMConfig, SamplerConfig, clear_shared
from yume_jax.testing import save_tiny_pipeline, tiny_t2v_pipeline

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
    assert a.shape == (17 + 3 * 4, 32, 48, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_compiles_once_per_distinct_shape(pipe_dir, image):
    """5 chunks with history capped at 6 latent frames: shapes H=5 then H=6 -> exactly 2 compiles."""
    clear_shared()  # no program left by an earlier test's pipeline of the same model
    fresh = load_pipeline(pipe_dir)
    s, _ = _run(fresh, image, ["W"] * 5, max_history=6)
    hist = [r["history_frames"] for r in s.records]
    assert hist == [5, 6, 6, 6, 6]
    assert s.sampler.traces == len(set(hist)) == 2 == fresh.compiles
    assert s.sampler._run._cache_size() == 2


def test_second_session_on_one_pipeline_compiles_nothing(pipe_dir, image):
    """Two sessions, same config and shapes, one pipeline, then a session on a second pipeline of the same model:
    the sampler is traced and compiled once."""
    clear_shared()
    fresh = load_pipeline(pipe_dir)
    a, va = _run(fresh, image, ["W"], seed=1)
    assert fresh.compiles == 1 and a.sampler._run._cache_size() == 1
    b, vb = _run(fresh, image, ["W"], seed=1)
    assert b.sampler is a.sampler
    assert fresh.compiles == 1 and b.sampler._run._cache_size() == 1 and b.records[0]["sampler_compiles"] == 1
    assert np.array_equal(va, vb)
    # a progress hook routes to the calling session without a new program per session
    ticks_a, ticks_b = [], []
    Session(fresh, _cfg(), image=image, on_step=ticks_a.append).step("W")
    n = fresh.compiles
    Session(fresh, _cfg(), image=image, on_step=ticks_b.append).step("W")
    assert fresh.compiles == n and ticks_a == ticks_b == [0, 1]
    # a second pipeline of the same model shares the sampler programs (sampling.Sampler(share=...)): no trace
    other = load_pipeline(pipe_dir)
    c, vc = _run(other, image, ["W"], seed=1)
    assert other.compiles == 0 and c.sampler is not a.sampler and np.array_equal(va, vc)


def test_block_cache_refresh_every_step_equals_no_cache(pipe, image):
    s0, v0 = _run(pipe, image, ["W", "D"])
    s1, v1 = _run(pipe, image, ["W", "D"], block_cache=1, cache_blocks=(0, 2))
    s2, v2 = _run(pipe, image, ["W", "D"], block_cache=2, cache_blocks=(0, 2))
    assert np.array_equal(np.asarray(s0.history), np.asarray(s1.history)) and np.array_equal(v0, v1)
    assert not np.array_equal(np.asarray(s0.history), np.asarray(s2.history))


def test_block_cache_is_an_option_of_every_sampler(pipe, image):
    """Caching rides the one loop: TTS with CFG and AAM, refresh every step, equals it uncached."""
    sc = SamplerConfig(name="tts", steps=3, cfg_scale=2.0, aam=AAMConfig(steps=1))
    s0, v0 = _run(pipe, image, ["W"], sampler=sc)
    s1, v1 = _run(pipe, image, ["W"], sampler=sc, block_cache=1, cache_blocks=(1,))
    assert np.array_equal(np.asarray(s0.history), np.asarray(s1.history)) and np.array_equal(v0, v1)


def _spy_y(pipe, session, action):
    """The conditioning contexts the session hands the sampler for one step."""
    seen = {}
    orig = pipe.sample

    def spy(config, chunk_frames, noise, cond, uncond=None, **kw):
        seen["cond"], seen["uncond"] = cond, uncond
        return orig(config, chunk_frames, noise, cond, uncond, **kw)

    pipe.sample = spy
    try:
        session.step(action)
    finally:
        del pipe.sample
    return seen


def _reference_y(vae, history_pixels, chunk_frames):
    """Independent reference from spec/yume.md "The public sampler's pipeline": the Wan mask (1 on the
    history's pixel frames, the first repeated 4 times, folded 4 to a latent frame) and
    vae.encode(concat([history pixels, gray frames for the chunk])) in one call."""
    import jax.numpy as jnp

    _, _, t_hist, hh, ww = history_pixels.shape
    t_all = t_hist + 4 * chunk_frames
    gray = jnp.zeros((1, 3, 4 * chunk_frames, hh, ww), jnp.float32)
    lat = np.asarray(vae.encode(jnp.concatenate([history_pixels, gray], axis=2)))
    msk = np.zeros((t_all, lat.shape[3], lat.shape[4]), np.float32)
    msk[:t_hist] = 1
    msk = np.concatenate([np.repeat(msk[:1], 4, axis=0), msk[1:]], axis=0)
    msk = msk.reshape(-1, 4, lat.shape[3], lat.shape[4]).transpose(1, 0, 2, 3)[None]
    return np.concatenate([msk, lat], axis=1)


def test_i2v_channels_match_the_public_sampler_from_an_image_and_after_chunks(pipe, image):
    """y = [Wan mask | vae.encode([history pixels, gray])] (tiny VAE, fp32, <= 1e-5): for an image start
    (pseudo-history of the image x 17) and for a history of several chunks (their decoded pixels)."""
    import jax.numpy as jnp

    from yume_jax.media import resize_frames, to_video

    s = Session(pipe, _cfg(chunk_frames=2), image=image)
    img = resize_frames(image[None], 32, 48)
    start = to_video(np.repeat(img, 17, axis=0))
    seen = _spy_y(pipe, s, "W")
    np.testing.assert_allclose(np.asarray(seen["cond"]["y"]), _reference_y(pipe.vae, start, 2), atol=1e-5)
    for a in ("D", "W+A"):
        seen = _spy_y(pipe, s, a)
    hist = s.history[:, :, :-2]  # the history the last chunk saw: 5 + 2 + 2 latent frames
    pixels = jnp.concatenate([start, pipe.vae.decode(hist)[:, :, 17:]], axis=2)  # decoded chunks continue it
    assert pixels.shape[2] == 17 + 16
    np.testing.assert_allclose(np.asarray(seen["cond"]["y"]), _reference_y(pipe.vae, pixels, 2), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(seen["cond"]["y"]), np.asarray(seen["uncond"]["y"]))


def test_image_start_is_a_pseudo_history_of_five_latents(pipe, image):
    """The image repeated 16 times then itself: 17 pixel frames -> 5 latent frames (as the training data)."""
    from yume_jax.media import resize_frames, to_video

    s = Session(pipe, _cfg(), image=image)
    assert s.history.shape[2] == 5 and len(s.initial_frames) == 17
    ref = pipe.vae.encode(to_video(np.repeat(resize_frames(image[None], 32, 48), 17, axis=0)))
    np.testing.assert_allclose(np.asarray(s.history), np.asarray(ref), atol=1e-6)
    assert s.step("W")[1]["history_frames"] == 5


def test_clip_features_of_the_last_history_frame_every_chunk(pipe, image):
    from yume_jax.media import resize_frames

    s = Session(pipe, _cfg(), image=image)
    seen = _spy_y(pipe, s, "W")
    first = pipe.image_encoder.encode(resize_frames(image[None], 32, 48))
    np.testing.assert_allclose(np.asarray(seen["cond"]["image"]), np.asarray(first), atol=1e-6)
    frames, _ = s.step("A")  # its last frame conditions the next chunk
    seen = _spy_y(pipe, s, "S")
    np.testing.assert_allclose(np.asarray(seen["cond"]["image"]),
                               np.asarray(pipe.image_encoder.encode(frames[-1:])), atol=1e-6)
    assert not np.allclose(np.asarray(seen["cond"]["image"]), np.asarray(first))


def test_default_negative_prompt_and_speed_sentence():
    from yume_jax import camera

    c = RolloutConfig()
    assert c.negative_prompt == camera.NEGATIVE_PROMPT
    assert c.negative_prompt.startswith("Bright tones, overexposed") and c.negative_prompt.endswith("walking backwards")
    assert camera.INFERENCE_SPEED_SENTENCE.endswith("View rotation speed:4.14601429683874179.")


def test_max_history_keeps_the_anchor(pipe, image):
    s = Session(pipe, _cfg(max_history=3), image=image)
    anchor = np.asarray(s.history[:, :, 0])
    s.step("W")
    newest = np.asarray(s.history[:, :, -1])
    rec = s.step("W")[1]
    assert rec["history_frames"] == 3
    hist = np.asarray(s.history)
    np.testing.assert_array_equal(hist[:, :, 0], anchor)
    np.testing.assert_array_equal(hist[:, :, 2], newest)


def test_history_modes_and_starts(pipe, image):
    s, v = _run(pipe, image, ["W", "S"], history_mode="clean")
    assert s.history.shape[2] == 7 and np.isfinite(np.asarray(s.history)).all()
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
    np.testing.assert_allclose(to_uint8(whole).astype(int), v.astype(int), atol=1)


def test_pipelined_explore_equals_step_and_reports_the_critical_path(pipe, image):
    """Session.explore dispatches chunk i+1 before fetching chunk i: same frames as step(), bit exact, and
    each record says where the chunk's time went; bucketed history feeds anchor + newest frames."""
    actions = ["W", "A", "W+→"]
    stepped, v = _run(pipe, image, actions, history_buckets=(5, 7))
    s = Session(pipe, _cfg(history_buckets=(5, 7)), image=image)
    got = list(s.explore(iter(actions)))
    np.testing.assert_array_equal(np.concatenate([s.initial_frames] + [f for f, _ in got]), v)
    assert [(r["history_stored"], r["history_frames"]) for r in s.records] == [(5, 5), (6, 5), (7, 7)]
    for r in s.records:
        cp = r["critical_path_s"]
        assert set(cp) == {"text", "dispatch", "wait", "interval"} and cp["wait"] >= 0
    assert s.records[0]["critical_path_s"]["interval"] is None and s.records[2]["critical_path_s"]["interval"] > 0
    assert set(stepped.records[0]["timings_s"]) == {"text", "sample", "decode"}
    m = s.metrics()
    assert m["chunks"] == 3 and m["history_frames"] == 7 and m["fps"] > 0


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
    assert _frames(out) == 17 + 3 * 4
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["finished"] and side["frames"] == 29 and len(side["chunks"]) == 3
    assert [c["action"] for c in side["chunks"]] == ["W ·", "W+A ·", "None →"]
    assert all("prompt" in c and "timings_s" in c for c in side["chunks"])
    from yume_jax import camera
    assert all(c["prompt"].endswith(camera.INFERENCE_SPEED_SENTENCE) and c["negative_prompt"] == camera.NEGATIVE_PROMPT
               for c in side["chunks"])
    assert side["config"]["seed"] == 7 and side["config"]["sampler"]["steps"] == 2


@pytest.fixture(scope="module")
def mp4_start(tmp_path_factory, image):
    """A 9-frame start video written with PyAV."""
    from infer.mp4 import GrowingMP4

    p = tmp_path_factory.mktemp("vid") / "start.mp4"
    w = GrowingMP4(p, 56, 40)
    w.write(np.stack([np.roll(image, 3 * i, axis=1) for i in range(9)]))
    w.close()
    return p


@pytest.mark.parametrize("case", ["prompt", "caption", "video-renoise", "video-clean"])
def test_explore_cli_prompts_and_video_starts(pipe_dir, png, mp4_start, tmp_path, case):
    """--prompt, --prompt-style yume1.5 --caption, --video with Yume 1.0 (re-noised) and 1.5 (clean) history."""
    out = tmp_path / "o.mp4"
    args = {"prompt": ["--image", str(png), "--prompt", "a rainy street"],
            "caption": ["--image", str(png), "--prompt-style", "yume1.5", "--caption", "a snowy alley"],
            "video-renoise": ["--video", str(mp4_start), "--history-mode", "renoise"],
            "video-clean": ["--video", str(mp4_start), "--history-mode", "clean"]}[case]
    r = _cli(pipe_dir, *args, "--actions", "W", "--out", str(out))
    assert r.returncode == 0, r.stderr
    side = json.loads(Path(str(out) + ".json").read_text())
    prompt = side["chunks"][0]["prompt"]
    if case == "prompt":
        assert prompt.startswith("First-person perspective.") and prompt.endswith("a rainy street")
    elif case == "caption":
        assert side["config"]["prompt_style"] == "yume1.5" and prompt.endswith("a snowy alley")
    else:
        assert side["config"]["history_mode"] == case.split("-")[1]
        assert side["initial_frames"] == 9 and side["chunks"][0]["history_frames"] == 3
        assert _frames(out) == 9 + 4


def test_interactive_lines_take_the_whole_keyboard_grammar():
    from infer.explore import parse_command
    from yume_jax import camera

    W, A = camera.parse_step("W"), camera.parse_step("A")
    assert parse_command("W*3") == ("actions", [W, W, W])
    assert parse_command("W,A") == ("actions", [W, A])
    assert parse_command("W+\x1b[C*2, A") == ("actions", [camera.parse_step("W+→")] * 2 + [A])
    assert parse_command("q") == ("quit", None)
    with pytest.raises(ValueError, match="Valid tokens"):
        parse_command("W*0")


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
    assert _frames(out) == 17 + 4 * n == meta["frames"]


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
    os.write(master, b"\x1b[C,A*2\n")  # the right-arrow key, then A twice: three chunks from one line
    wait_for("chunk 3:")
    os.write(master, b"nonsense\n")
    wait_for("Valid tokens")
    os.write(master, b"q\n")
    p.wait(timeout=120)
    os.close(master)
    assert p.returncode == 0
    side = json.loads(Path(str(out) + ".json").read_text())
    assert [c["action"] for c in side["chunks"]] == ["W ·", "None →", "A ·", "A ·"]
    assert _frames(out) == 17 + 4 * 4


def test_text_only_start_with_a_t2v_model():
    """A model without image cross-attention starts from text alone (no history in the first chunk)."""
    p = tiny_t2v_pipeline(seed=1)
    s = Session(p, _cfg())
    assert s.history is None and len(s.initial_frames) == 0
    f0, r0 = s.step("W")
    f1, r1 = s.step("→")
    assert f0.shape == (1, 32, 48, 3) and f1.shape == (4, 32, 48, 3)  # first decode: 1 frame per latent
    assert (r0["history_frames"], r1["history_frames"]) == (0, 1)
