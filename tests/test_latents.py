"""Latent dataset: TFDS/ArrayRecord build (stand-in and real tiny encoders), resumable encoding, and the Grain
reader's determinism, exact resume in a new process, process shards and speed-prompt sampling."""
import json
import shutil
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

from yume_jax.data import latents as L
from yume_jax.data import pipeline as pl
from yume_jax.data import sekai, world

CFG = pl.RAW_PRESETS["tiny"]
K = 2  # samples per clip


@pytest.fixture(scope="module")
def raw_root(tmp_path_factory):
    return world.write_dataset(tmp_path_factory.mktemp("yume"), 2, 31, "yume", cfg=world.PRESETS["tiny"],
                               num_frames=48, min_clip_frames=12)


@pytest.fixture(scope="module")
def encoders():
    return L.stand_in_encoders(z_dim=16, text_dim=24, text_len=512)


class Counting:
    def __init__(self, fn, fail_after=None):
        self.fn, self.calls, self.fail_after = fn, 0, fail_after

    def __call__(self, x):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        return self.fn(x)


@pytest.fixture(scope="module")
def built(raw_root, encoders, tmp_path_factory):
    data = sekai.read_yume(raw_root)
    out = tmp_path_factory.mktemp("lat")
    rep = L.encode_dataset(data, out, *encoders, CFG, samples_per_clip=K, seed=7, progress=False)
    return data, rep


def _examples(path):
    src = L.open_source(path)
    return [src[i] for i in range(len(src))]


def test_examples_match_the_raw_samples(built, encoders):
    data, rep = built
    video_enc, text_enc = encoders
    assert rep.examples == len(data) * K and rep.encoded == rep.examples and not rep.skipped
    assert (rep.path / "dataset_info.json").is_file() and any(rep.path.glob("*.array_record-*"))
    assert not (rep.path.parent.parent / "_work").exists()  # cache removed after a complete build
    fn = pl.RawSample(data.clips, CFG)
    exs = _examples(rep.path)
    assert [int(e["sample_id"]) for e in exs] == list(range(len(exs)))
    seen_i2v = set()
    for e in exs:
        sid = int(e["sample_id"])
        s = fn.make(sid // K, np.random.default_rng([7, sid]))
        np.testing.assert_array_equal(e["latents"], video_enc(s["video"][None])[0])
        assert e["latents"].shape[1] == int(s["num_history"]) // 4 + (CFG.chunk_frames - 1) // 4 + 1
        assert int(e["num_history_latents"]) * 4 == int(s["num_history"])
        plain, with_speed = fn.prompts(s)
        assert e["prompt"].decode() == plain and e["prompt_speed"].decode() == with_speed
        assert "Actual distance moved:" in with_speed and "Actual distance" not in plain
        t = text_enc([plain, with_speed])
        np.testing.assert_array_equal(e["text"], t[0, :len(plain.encode())])
        np.testing.assert_array_equal(e["text_speed"], t[1, :len(with_speed.encode())])
        assert int(e["text_len"]) == 512 and e["clip"].decode() == data.clips[sid // K].name
        assert bool(e["i2v"]) == bool(s["i2v"]) and int(e["action"]) == int(s["action"])
        seen_i2v.add(bool(e["i2v"]))
    assert seen_i2v == {True, False}
    info = L.build_info(rep.path)
    assert info["samples_per_clip"] == K and info["seed"] == 7 and info["skipped"] == {}


def test_bfloat16_storage(raw_root, encoders, tmp_path):
    data = sekai.read_yume(raw_root)
    rep = L.encode_dataset(data, tmp_path, *encoders, CFG, samples_per_clip=1, seed=7, dtype="bfloat16",
                           progress=False)
    fn = pl.RawSample(data.clips, CFG)
    e = L.open_source(rep.path)[0]
    assert e["latents"].dtype == np.uint16
    s = fn.make(0, np.random.default_rng([7, 0]))
    want = encoders[0](s["video"][None])[0].astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(L.LatentSample(rep.path)(0, np.random.default_rng(0))["latents"], want)


def test_resumable_build(raw_root, encoders, built, tmp_path):
    data, ref = built
    total = len(data) * K
    # 1) stopped after 3 samples
    v = Counting(encoders[0])
    rep = L.encode_dataset(data, tmp_path, v, encoders[1], CFG, samples_per_clip=K, seed=7, max_samples=3,
                           progress=False)
    assert rep.examples == 0 and v.calls == 3 and len(list((tmp_path / "_work").glob("*.npz"))) == 3
    # 2) crashed after 2 more
    v2 = Counting(encoders[0], fail_after=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        L.encode_dataset(data, tmp_path, v2, encoders[1], CFG, samples_per_clip=K, seed=7, progress=False)
    assert len(list((tmp_path / "_work").glob("*.npz"))) == 5
    assert not list((tmp_path / "_work").glob(".*partial*"))  # atomic writes: no half-written sample
    # 3) other settings are refused
    with pytest.raises(ValueError, match="different settings.*seed"):
        L.encode_dataset(data, tmp_path, *encoders, CFG, samples_per_clip=K, seed=8, progress=False)
    # 4) completed: only the missing samples are encoded, and the result equals the one-shot build
    v3 = Counting(encoders[0])
    rep = L.encode_dataset(data, tmp_path, v3, encoders[1], CFG, samples_per_clip=K, seed=7, progress=False)
    assert v3.calls == total - 5 and rep.encoded == total - 5 and rep.examples == total
    for a, b in zip(_examples(rep.path), _examples(ref.path)):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_broken_clip_is_skipped(raw_root, encoders, tmp_path):
    root = tmp_path / "raw"
    shutil.copytree(raw_root, root)
    data = sekai.read_yume(root)
    data.clips[0].video.write_bytes(b"broken")
    rep = L.encode_dataset(data, tmp_path / "lat", *encoders, CFG, samples_per_clip=K, seed=7, progress=False)
    assert rep.skipped == {"bad_video": K} and rep.examples == (len(data) - 1) * K
    assert L.build_info(rep.path)["skipped"] == {"bad_video": K}
    assert len(rep.problems) == K and "Invalid data" in rep.problems[0]


def test_reader_determinism_shards_and_prompts(built):
    _, rep = built
    n = rep.examples
    loader = pl.LoaderConfig(seed=2, batch_size=2)
    take = lambda ds, k: [b for _, b in zip(range(k), ds)]  # noqa: E731
    a = take(L.latent_dataset(rep.path, loader, 0.65, 0, 1), 5)
    b = take(L.latent_dataset(rep.path, loader, 0.65, 0, 1), 5)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    c = take(L.latent_dataset(rep.path, loader.replace(seed=3), 0.65, 0, 1), 5)
    assert not all(np.array_equal(x["sample_id"], y["sample_id"]) for x, y in zip(a, c))
    batch = a[0]
    assert batch["latents"].shape[:2] == (2, 16) and batch["text"].shape == (2, 512, 24)
    src = L.open_source(rep.path)
    for i in range(2):
        e = src[int(batch["sample_id"][i])]
        stored = e["text_speed"] if batch["with_speed"][i] else e["text"]
        np.testing.assert_array_equal(batch["text"][i, :len(stored)], stored)
        assert not batch["text"][i, len(stored):].any()
        assert batch["prompt"][i] == (e["prompt_speed"] if batch["with_speed"][i] else e["prompt"]).decode()
    # disjoint process shards covering every example
    seen = [[int(s) for b in L.latent_dataset(rep.path, pl.LoaderConfig(seed=2, num_epochs=1, drop_remainder=False),
                                              0.65, i, 2) for s in b["sample_id"]] for i in range(2)]
    assert set(seen[0]).isdisjoint(seen[1]) and sorted(seen[0] + seen[1]) == list(range(n))
    # the speed sentence is drawn per epoch with p = 0.65
    flags = [bool(f) for b in L.latent_dataset(rep.path, pl.LoaderConfig(seed=4, num_epochs=60), 0.65, 0, 1)
             for f in b["with_speed"]]
    assert len(flags) == 60 * n and np.mean(flags) == pytest.approx(0.65, abs=0.05)


_RESUME = textwrap.dedent("""
    import sys
    import numpy as np
    from yume_jax.data import latents as L, pipeline as pl

    def main():
        path, mode, state, out, n, workers = sys.argv[1:7]
        it = iter(L.latent_dataset(path, pl.LoaderConfig(seed=8, batch_size=2, num_workers=int(workers)), 0.65, 0, 1))
        if mode == "resume":
            pl.load_state(it, state)
        bs = [next(it) for _ in range(int(n))]
        if mode == "first":
            pl.save_state(it, state)
        np.savez(out, **{f"{i}_{k}": np.asarray(v, dtype=str if k == "prompt" else None)
                         for i, b in enumerate(bs) for k, v in b.items()})

    if __name__ == "__main__":
        main()
""")


@pytest.mark.parametrize("workers", [0, 2])
def test_reader_resume_in_new_process(built, tmp_path, workers):
    _, rep = built
    script = tmp_path / "resume.py"
    script.write_text(_RESUME)
    state = tmp_path / "state.json"

    def run(mode, out, n):
        r = subprocess.run([sys.executable, str(script), str(rep.path), mode, str(state), str(out), str(n),
                            str(workers)], capture_output=True, text=True, timeout=170)
        assert r.returncode == 0, r.stderr[-3000:]
        return np.load(out)

    first, second = run("first", tmp_path / "a.npz", 2), run("resume", tmp_path / "b.npz", 4)
    assert json.loads(state.read_text())["samples"] == 4 < rep.examples  # saved mid-epoch
    it = iter(L.latent_dataset(rep.path, pl.LoaderConfig(seed=8, batch_size=2), 0.65, 0, 1))
    for i in range(6):
        b = next(it)
        got, j = (first, i) if i < 2 else (second, i - 2)
        for k, v in b.items():
            np.testing.assert_array_equal(got[f"{j}_{k}"], np.asarray(v, dtype=str if k == "prompt" else None))


def test_cli_with_real_tiny_models(raw_root, tmp_path):
    """python -m train.build_latents end to end with the project's tiny Wan VAE and umT5 (random weights,
    written as a diffusers directory and a converted checkpoint) and CLIP: latents are the VAE's encoding of the
    sample's video, text the encoder's output for its prompts, image the CLIP features of its last history
    frame, gray the I2V channels' continuation."""
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    import yume_jax
    from train import build_latents
    from yume_jax.convert.__main__ import main as convert_main
    from yume_jax.presets import vae as vae_preset
    from yume_jax.vae.reference import diffusers_model

    diffusers_model(vae_preset("tiny-2.1"), seed=0).save_pretrained(tmp_path / "vae")
    torch.manual_seed(0)
    UMT5EncoderModel(UMT5Config(vocab_size=389, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)).eval() \
        .save_pretrained(tmp_path / "t5_hf")
    assert convert_main([str(tmp_path / "t5_hf"), str(tmp_path / "t5"), "--no-progress"]) == 0
    from flax import nnx

    from yume_jax.core.checkpoint import save_module
    from yume_jax.encoders import ImageEncoder
    from yume_jax.presets import encoder as enc_get
    ie = ImageEncoder.random(enc_get("tiny-clip"), seed=1)
    save_module(tmp_path / "clip", "clip", ie.config.to_dict(), nnx.merge(ie.graphdef, ie.params))
    out = tmp_path / "lat"
    # chunks of 5 frames, histories of 0 or 4 frames: two video lengths, so two VAE compilations
    args = ["--data", str(raw_root), "--vae", str(tmp_path / "vae"), "--vae-dtype", "float32",
            "--text-encoder", str(tmp_path / "t5"), "--image-encoder", str(tmp_path / "clip"), "--out", str(out),
            "--preset", "tiny", "--chunk-frames", "5",
            "--seed", "3", "--max-samples", "2"]
    cfg = CFG.replace(chunk_frames=5)
    assert build_latents.main(args) == 0 and not (out / "yume_latents").exists()  # stopped, resumable
    assert build_latents.main(args[:-2]) == 0
    path = out / "yume_latents" / L.VERSION
    data = sekai.read_yume(raw_root)
    exs = _examples(path)
    assert len(exs) == len(data)
    vae = yume_jax.load_vae(tmp_path / "vae")
    te = yume_jax.load_text_encoder(tmp_path / "t5", cache=None)
    fn = pl.RawSample(data.clips, cfg)
    seen_nh = set()
    for e in exs:
        sid = int(e["sample_id"])
        s = fn.make(sid, np.random.default_rng([3, sid]))
        want = np.asarray(vae.encode(s["video"][None]))[0]
        assert e["latents"].shape == want.shape == (16, int(s["num_history"]) // 4 + 2, 6, 10)
        np.testing.assert_allclose(e["latents"], want, rtol=1e-5, atol=1e-5)
        plain, with_speed = fn.prompts(s)
        t = np.asarray(te.encode([plain, with_speed]))
        assert t.shape[1] == 512 and not t[0, len(e["text"]):].any() and not t[1, len(e["text_speed"]):].any()
        assert len(plain.encode()) < len(e["text"]) < len(e["text_speed"])  # ByT5: one token per byte, plus EOS
        # image features: CLIP of the LAST history frame (frame 0 without history); gray: the chunk's latents of
        # vae.encode([conditioning pixel frames, gray]) (spec/yume.md "The public sampler's pipeline")
        nh = int(s["num_history"])
        n = max(nh // 4, 1)
        gray_in = s["video"].copy()
        gray_in[:, 1 + 4 * (n - 1):] = 0.0
        want_gray = np.asarray(vae.encode(gray_in[None]))[0, :, nh // 4:]
        assert e["gray"].shape == want_gray.shape == (16, 2, 6, 10)
        np.testing.assert_allclose(e["gray"], want_gray, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(e["text"], t[0, :len(e["text"])], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(e["text_speed"], t[1, :len(e["text_speed"])], rtol=1e-5, atol=1e-5)
        frame = s["video"][:, max(nh - 1, 0)]
        frame = np.round((frame + 1) * 127.5).clip(0, 255).astype(np.uint8).transpose(1, 2, 0)
        img = np.asarray(ie.encode(frame[None]))[0]
        assert e["image"].shape == img.shape == (ie.config.num_tokens, ie.config.dim)
        np.testing.assert_allclose(e["image"], img, rtol=1e-5, atol=1e-5)
        seen_nh.add(nh)
    assert 0 in seen_nh and max(seen_nh) > 0
    # the reader serves them as training batches
    b = next(iter(L.latent_dataset(path, pl.LoaderConfig(seed=0), 0.65, 0, 1)))
    assert b["latents"].shape[1] == 16 and b["text"].shape == (1, 512, 32)
    assert b["image"].shape == (1, ie.config.num_tokens, ie.config.dim) and b["gray"].shape == (1, 16, 2, 6, 10)
    assert build_latents.main(["--data", str(tmp_path / "nothing"), "--vae", "x", "--text-encoder", "y",
                               "--out", str(out)]) == 2
