"""``infer.explore --checkpoint`` on what a user has (yume_jax/convert/pipeline_dirs.py): a training workdir (the
latest complete checkpoint's EMA weights + the VAE and encoders its latent dataset was built with, as recorded in
the run's config.json), an official release directory, and a workdir trained on stand-in encoders (refused
unless --encoders names real ones)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yume_jax.convert import pipeline_dirs
from yume_jax.core.tensors import JAX_META
from yume_jax.pipeline import load_pipeline
from yume_jax.testing import save_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
           PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run: a latent dataset built by python -m train.build_latents with tiny real encoders, then two
    training steps with an EMA on it."""
    from train import build_latents
    from yume_jax.data import latents, world

    base = tmp_path_factory.mktemp("explore_ckpt")
    enc = save_tiny_pipeline(base / "encoders")
    raw = world.write_dataset(base / "world", 2, 31, "yume", cfg=world.PRESETS["tiny"], num_frames=48,
                              min_clip_frames=12)
    args = ["--data", str(raw), "--vae", str(enc / "vae"), "--vae-dtype", "float32", "--text-encoder",
            str(enc / "text_encoder"), "--image-encoder", str(enc / "image_encoder"), "--out", str(base / "lat"),
            "--preset", "tiny", "--chunk-frames", "5", "--seed", "3"]
    assert build_latents.main(args) == 0
    data = base / "lat" / "yume_latents" / latents.VERSION
    run = base / "run"
    te_dim = json.loads((enc / "text_encoder" / JAX_META).read_text())["config"]["dim"]
    ie_dim = json.loads((enc / "image_encoder" / JAX_META).read_text())["config"]["dim"]
    cmd = [sys.executable, "-m", "train.train", "--config", "tiny-sandbox", f"--workdir={run}",
           "--data.source=latents", f"--data.path={data}", "--model.dit.num_layers=2",
           f"--model.dit.text_dim={te_dim}", f"--model.dit.image_dim={ie_dim}", "--steps=2", "--checkpoint.every=1",
           "--optim.ema_decay=0.5", "--log_every=1"]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return enc, run


@pytest.mark.slow
def test_workdir_becomes_a_pipeline(trained):
    from yume_jax.train.checkpoint import read_state

    enc, run = trained
    assert pipeline_dirs.kind(run) == "workdir"
    out = pipeline_dirs.resolve(run)
    assert out == run / "pipeline" / "step_2" and pipeline_dirs.resolve(run) == out  # reused
    pipe = load_pipeline(out)
    # the EMA weights of the latest checkpoint, per layer
    _, state = read_state(run / "checkpoints")
    ema = np.asarray(state["dit"]["ema"]["blocks"]["ffn"]["fc1"]["kernel"])
    from yume_jax.convert import load_safetensors
    got = load_safetensors(out / "dit" / "params.safetensors")
    assert ema.shape[0] == 2 and np.array_equal(got["blocks.1.ffn.fc1.kernel"], ema[1])
    assert not np.array_equal(ema, np.asarray(state["dit"]["params"]["blocks"]["ffn"]["fc1"]["kernel"]))
    # the encoders recorded by the latent dataset
    for part in ("vae", "text_encoder", "image_encoder"):
        assert (out / part).resolve() == (enc / part).resolve()
    pj = json.loads((out / "pipeline.json").read_text())
    assert pj["weights"] == "ema" and pj["step"] == 2 and (pj["height"], pj["width"], pj["chunk_frames"]) == (48, 80, 2)
    assert pipe.dit.config.num_layers == 2


def test_explore_accepts_the_workdir(trained, tmp_path):
    _, run = trained
    out = tmp_path / "walk.mp4"
    r = subprocess.run([sys.executable, "-m", "infer.explore", "--checkpoint", str(run), "--actions", "W",
                        "--steps", "2", "--cfg", "1.0", "--height", "32", "--width", "48", "--chunk-frames", "1",
                        "--out", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["finished"] and len(side["chunks"]) == 1


def test_stand_in_workdir_needs_encoders(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {"preset": "tiny-yume", "dit": {}},
                                                 "data": {"source": "sandbox"}}))
    with pytest.raises(ValueError, match="stand-in encoders.*--encoders"):
        pipeline_dirs.resolve(run)
    with pytest.raises(FileNotFoundError, match="neither a pipeline directory"):
        pipeline_dirs.resolve(tmp_path / "nothing")
