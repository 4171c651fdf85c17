"""End to end on CPU: ``python -m train.train --config tiny-sandbox`` renders sandbox-world clips, encodes
them with the stand-in encoder through the Grain pipeline and trains tiny-yume (2 layers, compressed
history, I2V channels, MVDT) for 200 steps: the loss falls, metrics reach metrics.jsonl and TensorBoard
event files, the resolved config is saved next to the checkpoints, and one step variant is compiled.
The same trainer reads a latent dataset written by the latent builder (``--data.source=latents``).

Every sample is the image-to-video variant here (history = the first frame repeated, one latent frame),
so the shapes never change and each run compiles once; the MVDT ratio is random (one kept-token bucket
for this token count)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _events(path: Path) -> dict[str, list[float]]:
    """Scalars of a TensorBoard event file (TFRecord framing: length, crc, payload, crc)."""
    from tensorboardX.proto import event_pb2
    out: dict[str, list[float]] = {}
    data = path.read_bytes()
    i = 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i:i + 8])
        ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        i += 12 + n + 4
        for v in ev.summary.value:
            out.setdefault(v.tag, []).append(v.simple_value)
    return out


def _train(run: Path, *args) -> str:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "train.train", "--config", "tiny-sandbox", f"--workdir={run}",
           "--model.dit.num_layers=2", "--data.raw.i2v_prob=1.0", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


@pytest.mark.slow
def test_tiny_sandbox_loss_falls(tmp_path):
    run = tmp_path / "run"
    err = _train(run, "--steps=200", "--log_every=20", "--checkpoint.every=100", "--peak_tflops=0.1")
    assert "done: step 200, 1 compiled step variants" in err
    assert (run / "world").is_dir()  # rendered by the run (--data.generate=4 in the preset)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == list(range(1, 201))
    loss = np.array([x["loss"] for x in recs])
    assert np.isfinite(loss).all()
    first, last = loss[:20].mean(), loss[-40:].mean()
    assert last < 0.75 * first, (first, last)
    assert all(x["loss_masked"] > 0 and x["loss_unmasked"] > 0 for x in recs)
    np.testing.assert_allclose([x["loss"] for x in recs], [x["loss_masked"] + x["loss_unmasked"] for x in recs],
                               rtol=1e-6)
    tput = [x for x in recs if x.get("samples_per_s") is not None]
    assert tput and all(x["tokens_per_s"] > x["samples_per_s"] > 0 and 0 < x["mfu"] < 1 for x in tput)
    assert recs[19]["samples_per_s"] is None  # the interval with the compile is not reported as throughput
    lrs = [x["lr"] for x in recs]
    assert lrs[0] == 0.0 and max(lrs) == lrs[20] and lrs[-1] < 0.2 * max(lrs)  # warmup 20, cosine decay
    # TensorBoard
    ev = [p for p in (run / "tb").iterdir() if p.name.startswith("events.out.tfevents")]
    assert len(ev) == 1
    scalars = _events(ev[0])
    np.testing.assert_allclose(scalars["train/loss"], loss, rtol=1e-6)
    assert {"train/grad_norm", "train/lr", "train/samples_per_s", "train/tokens_per_s", "train/mfu"} <= set(scalars)
    # resolved config and checkpoints
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["name"] == "tiny-sandbox" and cfg["model"]["dit"] == {"num_layers": 2} and cfg["steps"] == 200
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [100, 200]


def test_latent_dataset_source(tmp_path):
    """--data.source=latents reads a dataset written by the latent builder (here with its stand-in encoders and
    CLIP-like image features) through the same trainer, for the I2V model with image cross-attention, starting
    from a converted Wan I2V checkpoint (--model.init); a dataset without image features is refused for that
    model before anything compiles."""
    from yume_jax.data import latents, pipeline, sekai, world
    from yume_jax.train import data as data_lib
    root = world.write_dataset(tmp_path / "world", 3, 5, "yume", cfg=world.PRESETS["tiny"], num_frames=60,
                               min_clip_frames=12)
    raw = pipeline.RAW_PRESETS["tiny"].replace(i2v_prob=1.0)
    video, text = latents.stand_in_encoders(z_dim=16, text_dim=32, text_len=16)
    image = data_lib.StandInEncoder(16, (4, 8, 8), text_dim=32, text_len=16, image_dim=48, image_tokens=17).image
    rep = latents.encode_dataset(sekai.read(root), tmp_path / "lat", video, text, raw, samples_per_clip=2,
                                 progress=False, image_encoder=image)
    from configs import models as model_presets
    from yume_jax.models.loader import build, save_dit
    save_dit(build(model_presets.get("tiny-i2v", num_layers=2), seed=3), tmp_path / "wan")  # a Wan I2V start
    run = tmp_path / "run"
    err = _train(run, "--data.source=latents", f"--data.path={rep.path}", f"--model.init={tmp_path / 'wan'}",
                 "--steps=12", "--log_every=4", "--checkpoint.every=6", "--data.log_samples=true")
    assert "done: step 12, 1 compiled step variants" in err
    assert f"initialised from {tmp_path / 'wan'}; new: " in err and "mask_token" in err  # Yume extras created
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == list(range(1, 13)) and all(np.isfinite(x["loss"]) for x in recs)
    items = [i for x in (run / "samples.p0.jsonl").read_text().splitlines() for i in json.loads(x)["item"]]
    assert len(items) == 24 and set(items) <= set(range(rep.examples))
    plain = latents.encode_dataset(sekai.read(root), tmp_path / "lat_plain", video, text, raw, progress=False)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    r = subprocess.run([sys.executable, "-m", "train.train", "--config", "tiny-sandbox", f"--workdir={tmp_path / 'x'}",
                        "--data.source=latents", f"--data.path={plain.path}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "holds no image features" in r.stderr and "--image-encoder" in r.stderr
    r = subprocess.run([sys.executable, "-m", "train.train", "--config", "tiny-sandbox", f"--workdir={tmp_path / 'y'}",
                        f"--data.path={tmp_path / 'empty'}", "--data.generate=0"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "python -m train.train: error: --data: --data.path=" in r.stderr and "holds no clips" in r.stderr
