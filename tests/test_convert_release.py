"""Release directory -> pipeline directory (yume_jax/convert/release.py): tiny checkpoints written in the official
Yume-I2V-540P and Yume-5B-720P layouts (original Wan names, .pth encoders, the umT5 tokenizer folder) become a
pipeline directory that loads, with the release's defaults and bit-identical weights."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

from yume_jax.convert import convert, load_safetensors, save_safetensors
from yume_jax.convert import release
from yume_jax.convert.__main__ import main as convert_main
from yume_jax.core.checkpoint import save_module, write_checkpoint
from yume_jax.core.tensors import ConversionError
from yume_jax.pipeline import load_pipeline
from yume_jax.testing import save_tiny_pipeline

HEADS = 4  # the tiny DiTs' heads (the real ones have dim / 128, the converter's default)


def _sentencepiece_dir(path: Path) -> Path:
    """A local tokenizer folder in umT5's format (spiece.model + tokenizer_config.json), trained here."""
    import sentencepiece as spm

    text = ["the camera moves forward", "turn left slowly", "a city street at night", "look up at the sky"] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=30, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    path.mkdir(parents=True)
    (path / "spiece.model").write_bytes(buf.getvalue())
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))
    return path


def _to_pth(jax_dir: Path, work: Path, out_file: Path) -> None:
    """Export a yume_jax checkpoint under original Wan names and save it as a .pth state dict."""
    convert(jax_dir, work, to="torch", naming="wan", progress=False)
    sd = load_safetensors(next(work.glob("*.safetensors")))
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, out_file)


def _dit_files(jax_dir: Path, work: Path, out_dir: Path, shards: bool) -> None:
    convert(jax_dir, work, to="torch", naming="wan", progress=False)
    sd = load_safetensors(work / "diffusion_pytorch_model.safetensors")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not shards:
        save_safetensors(out_dir / "diffusion_pytorch_model.safetensors", sd)
        return
    keys = sorted(sd)
    parts = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
             "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in parts.items():
        save_safetensors(out_dir / name, {k: sd[k] for k in ks})
    index = {"metadata": {}, "weight_map": {k: name for name, ks in parts.items() for k in ks}}
    (out_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def i2v_release(tmp_path_factory):
    """Yume-I2V-540P layout: Yume-Dit/ (shards), Wan2.1_VAE.pth, umT5 and CLIP .pth, google/umt5-xxl/."""
    base = tmp_path_factory.mktemp("i2v")
    src = save_tiny_pipeline(base / "src")
    rel = base / "Yume-I2V-540P"
    rel.mkdir()
    _dit_files(src / "dit", base / "w_dit", rel / "Yume-Dit", shards=True)
    _to_pth(src / "vae", base / "w_vae", rel / "Wan2.1_VAE.pth")
    _to_pth(src / "text_encoder", base / "w_t5", rel / release.T5_FILE)
    _to_pth(src / "image_encoder", base / "w_clip", rel / release.CLIP_FILE)
    _sentencepiece_dir(rel / "google" / "umt5-xxl")
    return src, rel


@pytest.fixture(scope="module")
def ti2v_release(tmp_path_factory):
    """Yume-5B-720P layout (Wan 2.2 TI2V 5B): one DiT safetensors + config.json at the top, Wan2.2_VAE.pth,
    umT5 .pth, google/umt5-xxl/; no CLIP."""
    from yume_jax.encoders import TextEncoder
    from yume_jax.models.loader import build
    from yume_jax.presets import VAE, YUME_TIERS, dit, encoder
    from yume_jax.vae.params import init_params

    base = tmp_path_factory.mktemp("ti2v")
    src = base / "src"
    te = TextEncoder.random(encoder("tiny-umt5"), seed=5)
    m = build(dit("tiny-ti2v", text_dim=te.config.dim, history_tiers=YUME_TIERS), seed=5)
    save_module(src / "dit", "dit", m.cfg.to_dict(), m)
    vcfg = VAE["tiny-2.2"]
    write_checkpoint(src / "vae", "vae", vcfg.to_dict(), init_params(vcfg, 5))
    save_module(src / "text_encoder", "t5", te.config.to_dict(), nnx.merge(te.graphdef, te.params))
    rel = base / "Yume-5B-720P"
    rel.mkdir()
    _dit_files(src / "dit", base / "w_dit", rel, shards=False)
    (rel / "config.json").write_text(json.dumps({"_class_name": "WanModel", "model_type": "ti2v", "dim": m.cfg.dim,
                                                 "num_heads": HEADS, "num_layers": m.cfg.num_layers,
                                                 "in_dim": 48, "out_dim": 48}))
    _to_pth(src / "vae", base / "w_vae", rel / "Wan2.2_VAE.pth")
    _to_pth(src / "text_encoder", base / "w_t5", rel / release.T5_FILE)
    _sentencepiece_dir(rel / "google" / "umt5-xxl")
    return src, rel


def _same_params(a: Path, b: Path) -> None:
    x, y = load_safetensors(a / "params.safetensors"), load_safetensors(b / "params.safetensors")
    assert sorted(x) == sorted(y)
    for k in x:
        assert x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes(), k


def test_i2v_540p_release_to_pipeline(i2v_release, tmp_path):
    src, rel = i2v_release
    assert release.detect(rel).kind == "yume-i2v-540p"
    out = tmp_path / "pipe"
    assert convert_main(["--pipeline", str(rel), str(out), "--num-heads", str(HEADS), "--no-progress"]) == 0
    for part in ("dit", "vae", "text_encoder", "image_encoder"):
        _same_params(src / part, out / part)
    pj = json.loads((out / "pipeline.json").read_text())
    assert {k: pj[k] for k in ("height", "width", "chunk_frames", "steps", "cfg", "history_mode")} == \
        {"height": 544, "width": 960, "chunk_frames": 8, "steps": 50, "cfg": 5.0, "history_mode": "renoise"}
    assert (out / "text_encoder" / "tokenizer" / "spiece.model").is_file()
    pipe = load_pipeline(out)
    assert pipe.image_encoder is not None and pipe.text_encoder.config.tokenizer == "umt5"
    import sentencepiece as spm  # the copied tokenizer folder is the one in use
    sp = spm.SentencePieceProcessor(model_file=str(rel / "google" / "umt5-xxl" / "spiece.model"))
    assert pipe.text_encoder.tokenizer(["turn left slowly"])["input_ids"][0] == sp.encode("turn left slowly") + [1]
    # an existing destination is kept unless --force
    assert convert_main(["--pipeline", str(rel), str(out), "--num-heads", str(HEADS), "--no-progress"]) == 2
    assert convert_main(["--pipeline", str(rel), str(out), "--num-heads", str(HEADS), "--no-progress",
                         "--force"]) == 0


def test_5b_720p_release_to_pipeline(ti2v_release, tmp_path):
    src, rel = ti2v_release
    assert release.detect(rel).kind == "yume-5b-720p"
    out = release.build_pipeline(rel, tmp_path / "pipe", progress=False)
    for part in ("dit", "vae", "text_encoder"):
        _same_params(src / part, out / part)
    assert not (out / "image_encoder").exists()
    pj = json.loads((out / "pipeline.json").read_text())
    assert (pj["height"], pj["width"], pj["steps"], pj["history_mode"]) == (704, 1280, 4, "clean")
    pipe = load_pipeline(out)
    assert pipe.z_dim == 48 and pipe.dit.config.in_channels == 48 and pipe.image_encoder is None


def test_checkpoint_resolution_converts_a_release_once(ti2v_release, tmp_path):
    from yume_jax.convert import pipeline_dirs

    _, rel = ti2v_release
    assert pipeline_dirs.kind(rel) == "release"
    out = pipeline_dirs.resolve(rel, cache=tmp_path / "cache")
    assert out.parent == tmp_path / "cache" and pipeline_dirs.kind(out) == "pipeline"
    stamp = (out / "pipeline.json").stat().st_mtime_ns
    assert pipeline_dirs.resolve(rel, cache=tmp_path / "cache") == out
    assert (out / "pipeline.json").stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_bad_release_dirs(i2v_release, tmp_path, capsys):
    _, rel = i2v_release
    with pytest.raises(ConversionError, match="not a Yume release directory"):
        release.detect(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Wan2.1_VAE.pth").write_bytes((rel / "Wan2.1_VAE.pth").read_bytes())
    with pytest.raises(ConversionError, match="no DiT"):
        release.detect(broken)
    (broken / "Yume-Dit").symlink_to(rel / "Yume-Dit")
    assert convert_main(["--pipeline", str(broken), str(tmp_path / "o"), "--no-progress"]) == 2
    assert "models_t5_umt5-xxl-enc-bf16.pth" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_force_replaces_only_a_pipeline_it_built(i2v_release, tmp_path):
    """--force never removes the release, a folder holding it, or a folder that is not a built pipeline."""
    _, rel = i2v_release
    args = ["--num-heads", str(HEADS), "--no-progress", "--force"]
    before = sorted(p.name for p in rel.iterdir())
    assert convert_main(["--pipeline", str(rel), str(rel)] + args) == 2
    assert convert_main(["--pipeline", str(rel), str(rel.parent)] + args) == 2
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert convert_main(["--pipeline", str(rel), str(other)] + args) == 2
    assert sorted(p.name for p in rel.iterdir()) == before and (other / "keep.txt").read_text() == "mine"
