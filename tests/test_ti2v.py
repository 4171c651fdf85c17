"""Yume-5B layout (Wan 2.2 TI2V: 48-channel Wan 2.2 VAE, no I2V channels) end to end on a tiny random pipeline:
sessions from an image and from text, and the explorer's defaults (clean history, t = 0 on it; 4 Euler steps,
as the public 5B sampler; spec/yume.md "The public sampler's pipeline")."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yume_jax.pipeline import load_pipeline
from yume_jax.rollout import RolloutConfig, Session
from yume_jax.sampling.api import SamplerConfig
from yume_jax.testing import TI2V_DEFAULTS, save_tiny_pipeline


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("ti2v") / "tiny5b", kind="ti2v")


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "start.png"
    Image.fromarray((np.random.default_rng(0).random((40, 72, 3)) * 255).astype(np.uint8)).save(p)
    return p


def test_sessions_from_an_image_and_from_text(pipe_dir):
    pipe = load_pipeline(pipe_dir)
    assert pipe.z_dim == 48 and not pipe.conditioned and pipe.image_encoder is None
    cfg = RolloutConfig(height=32, width=64, chunk_frames=2, history_mode="clean",
                        sampler=SamplerConfig(steps=2, cfg_scale=1.0))
    img = (np.random.default_rng(1).random((32, 64, 3)) * 255).astype(np.uint8)
    s = Session(pipe, cfg, image=img)
    assert s.history.shape == (1, 48, 5, 2, 4)  # pseudo-history: 17 frames -> 5 latents
    frames, rec = s.step("W")
    assert frames.shape == (8, 32, 64, 3) and rec["history_frames"] == 5
    np.testing.assert_array_equal(np.asarray(s.history[:, :, :5]), np.asarray(Session(pipe, cfg, image=img).history))
    t = Session(pipe, cfg)  # text only: no history in the first chunk
    assert t.history is None
    assert t.step("A")[0].shape == (5, 32, 64, 3) and t.step("D")[1]["history_frames"] == 2


@pytest.mark.parametrize("start", ["image", "text"])
def test_explorer_defaults_to_clean_history_and_four_euler_steps(pipe_dir, png, tmp_path, start):
    out = tmp_path / "o.mp4"
    args = ["--image", str(png)] if start == "image" else []
    r = subprocess.run([sys.executable, "-m", "infer.explore", "--checkpoint", str(pipe_dir), *args,
                        "--actions", "W", "--cfg", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 0, r.stderr
    side = json.loads(Path(str(out) + ".json").read_text())
    c = side["config"]
    assert c["history_mode"] == TI2V_DEFAULTS["history_mode"] == "clean"
    assert c["sampler"]["steps"] == 4 and c["sampler"]["name"] == "euler"
    assert side["chunks"][0]["history_frames"] == (5 if start == "image" else 0)
    assert side["frames"] == (17 + 8 if start == "image" else 5)


def test_layout_defaults_without_pipeline_json_values(pipe_dir):
    from infer.explore import build_config, parse_args

    pipe = load_pipeline(pipe_dir)
    pipe.defaults = {"height": 32, "width": 64}
    assert pipe.ti2v
    c = build_config(parse_args([]), pipe)
    assert c.history_mode == "clean" and c.sampler.steps == 4 and c.sampler.name == "euler"
    c = build_config(parse_args(["--history-mode", "renoise", "--steps", "8"]), pipe)
    assert c.history_mode == "renoise" and c.sampler.steps == 8
