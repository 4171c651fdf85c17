"""VAE checkpoint conversion: Wan (.pth) and diffusers namings, auto-detected, bit-exact both ways; load_vae; bad input.

The Wan-side names are checked against independent statements of the map: diffusers' own single-file
converter for Wan 2.1 (``convert_wan_vae_to_diffusers``) and the rules of diffusers'
``scripts/convert_wan_to_diffusers.py::convert_vae_22`` for Wan 2.2 (restated below).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from flax import nnx

from yume_jax.convert import ConversionError, convert, load_safetensors, save_safetensors
from yume_jax.convert.__main__ import main as convert_cli
from yume_jax.convert.vae import entries
from yume_jax import presets
from yume_jax.vae import WanVAE, config, load_vae
from yume_jax.vae.reference import diffusers_model

RES = {"residual.0": "norm1", "residual.2": "conv1", "residual.3": "norm2", "residual.6": "conv2",
       "shortcut": "conv_shortcut"}


def wan22_to_diffusers(k: str) -> str:
    """convert_vae_22's rules: nested (down|up)samples.i.(down|up)samples.j -> (down|up)_blocks.i.resnets.j,
    the trailing Resample -> downsampler / upsampler, middle/head/conv1 renames as for Wan 2.1."""
    k = re.sub(r"^conv1\.", "quant_conv.", k)
    k = re.sub(r"^conv2\.", "post_quant_conv.", k)
    k = re.sub(r"^(encoder|decoder)\.conv1\.", r"\1.conv_in.", k)
    k = re.sub(r"\.head\.0\.", ".norm_out.", k)
    k = re.sub(r"\.head\.2\.", ".conv_out.", k)
    k = re.sub(r"\.middle\.0\.", ".mid_block.resnets.0.", k)
    k = re.sub(r"\.middle\.1\.", ".mid_block.attentions.0.", k)
    k = re.sub(r"\.middle\.2\.", ".mid_block.resnets.1.", k)
    k = re.sub(r"encoder\.downsamples\.(\d+)\.downsamples\.\d+\.(resample|time_conv)",
               r"encoder.down_blocks.\1.downsampler.\2", k)
    k = re.sub(r"decoder\.upsamples\.(\d+)\.upsamples\.\d+\.(resample|time_conv)",
               r"decoder.up_blocks.\1.upsampler.\2", k)
    k = re.sub(r"encoder\.downsamples\.(\d+)\.downsamples\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", k)
    k = re.sub(r"decoder\.upsamples\.(\d+)\.upsamples\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2.", k)
    for a, b in RES.items():
        k = k.replace(f".{a}.", f".{b}.")
    return k


def bits_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


def np_state(m) -> dict:
    return {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}


def wan_state(m, cfg) -> dict:
    """The model's weights under original Wan names, the names checked against the independent oracle."""
    sd = np_state(m)
    wan = {e.wan: sd[e.diffusers] for e in entries(cfg)}
    if cfg.is_residual:
        back = {wan22_to_diffusers(k): k for k in wan}  # diffusers name -> Wan name
    else:
        back = convert_wan_vae_to_diffusers({k: k for k in wan})
    assert sorted(back) == sorted(sd), sorted(set(back) ^ set(sd))[:5]
    for dif_key, wan_key in back.items():
        assert np.array_equal(wan[wan_key], sd[dif_key]), (wan_key, dif_key)
    return wan


@pytest.fixture(scope="module", params=["tiny-2.1", "tiny-2.2"])
def model(request, tmp_path_factory):
    cfg = presets.vae(request.param)
    m = diffusers_model(cfg, seed=7)
    d = tmp_path_factory.mktemp(request.param)
    m.save_pretrained(d / "diffusers")
    torch.save({k: torch.from_numpy(v) for k, v in wan_state(m, cfg).items()}, d / "Wan_VAE.pth")
    return cfg, m, d


def test_round_trips_bit_exact(model, tmp_path):
    cfg, m, d = model
    convert(d / "diffusers", tmp_path / "jd", progress=False)
    convert(d / "Wan_VAE.pth", tmp_path / "jw", progress=False)
    for sub, naming in (("jd", "diffusers"), ("jw", "wan")):
        meta = json.loads((tmp_path / sub / "yume_jax.json").read_text())
        assert meta["family"] == "vae" and meta["source_naming"] == naming
        assert config.VAEConfig.from_dict(meta["config"]) == cfg  # the .pth config is inferred from shapes
    bits_equal(load_safetensors(tmp_path / "jd" / "params.safetensors"),
               load_safetensors(tmp_path / "jw" / "params.safetensors"))
    # back to each naming (the source naming is the default), bit-exact
    convert(tmp_path / "jd", tmp_path / "bd", to="torch", progress=False)
    bits_equal(load_safetensors(tmp_path / "bd" / "diffusion_pytorch_model.safetensors"), np_state(m))
    convert(tmp_path / "jd", tmp_path / "bw", to="torch", naming="wan", progress=False)
    (wan_file,) = (tmp_path / "bw").glob("*.safetensors")
    bits_equal(load_safetensors(wan_file), wan_state(m, cfg))
    # diffusers loads our export as is
    m2 = AutoencoderKLWan.from_pretrained(tmp_path / "bd")
    bits_equal(np_state(m2), np_state(m))
    assert m2.config.latents_std == list(cfg.latents_std) and m2.config.is_residual == cfg.is_residual


def test_bf16_checkpoint_keeps_dtype(model, tmp_path):
    cfg, m, d = model
    sd = {k: torch.from_numpy(v).bfloat16() for k, v in wan_state(m, cfg).items()}
    torch.save(sd, tmp_path / "w16.pth")
    convert(tmp_path / "w16.pth", tmp_path / "j", progress=False)
    convert(tmp_path / "j", tmp_path / "b", to="torch", progress=False)
    (f,) = (tmp_path / "b").glob("*.safetensors")
    back = load_safetensors(f)
    for k, v in sd.items():
        assert back[k].dtype.name == "bfloat16" and back[k].tobytes() == v.view(torch.int16).numpy().tobytes(), k


def test_load_vae_from_any_source(model, tmp_path):
    cfg, m, d = model
    convert(d / "Wan_VAE.pth", tmp_path / "j", progress=False)
    vaes = [load_vae(d / "Wan_VAE.pth"), load_vae(d / "diffusers"), load_vae(tmp_path / "j")]
    for v in vaes:
        assert v.cfg == cfg
    flat = [{"/".join(map(str, p)): np.asarray(x) for p, x in nnx.to_flat_state(v.params)} for v in vaes]
    bits_equal(flat[0], flat[1])
    bits_equal(flat[0], flat[2])
    assert load_vae(tmp_path / "j", dtype="bfloat16").dtype.__name__ == "bfloat16"


def test_mismatched_checkpoints(model, tmp_path):
    cfg, m, d = model
    wan = wan_state(m, cfg)
    bad = dict(wan)
    k = "decoder.middle.0.residual.2.weight"
    bad[k] = np.zeros((*bad[k].shape[:2], 1, 3, 3), np.float32)
    save_safetensors(tmp_path / "bad_shape.safetensors", bad)
    with pytest.raises(ConversionError, match="decoder.middle.0.residual.2.weight: shape mismatch"):
        load_vae(tmp_path / "bad_shape.safetensors")
    missing = {k: v for k, v in wan.items() if k != "decoder.middle.1.proj.bias"}
    save_safetensors(tmp_path / "missing.safetensors", missing)
    with pytest.raises(ConversionError, match="decoder.middle.1.proj.bias"):
        load_vae(tmp_path / "missing.safetensors")
    extra = {**wan, "encoder.surprise.weight": np.zeros(3, np.float32)}
    save_safetensors(tmp_path / "extra.safetensors", extra)
    with pytest.raises(ConversionError, match="encoder.surprise.weight"):
        load_vae(tmp_path / "extra.safetensors")
    save_safetensors(tmp_path / "other.safetensors", {"patch_embedding.weight": np.zeros((4, 3, 1, 2, 2), np.float32)})
    with pytest.raises(ConversionError, match="not a Wan VAE"):
        load_vae(tmp_path / "other.safetensors")
    # parameters of one VAE with the config of the other
    other = presets.vae("tiny-2.2" if cfg == presets.vae("tiny-2.1") else "tiny-2.1")
    convert(d / "Wan_VAE.pth", tmp_path / "j", progress=False)
    with pytest.raises(ConversionError, match="shape|missing|unexpected"):
        WanVAE(other, load_safetensors(tmp_path / "j" / "params.safetensors"))
    meta = json.loads((tmp_path / "j" / "yume_jax.json").read_text())
    meta["family"] = "dit"
    (tmp_path / "j" / "yume_jax.json").write_text(json.dumps(meta))
    with pytest.raises(ConversionError, match="not a VAE checkpoint"):
        load_vae(tmp_path / "j")


def test_cli(model, tmp_path, capsys):
    cfg, m, d = model
    assert convert_cli([str(d / "Wan_VAE.pth"), str(tmp_path / "j"), "--no-progress"]) == 0
    assert convert_cli([str(tmp_path / "j"), str(tmp_path / "b"), "--to", "torch", "--naming", "diffusers",
                        "--no-progress"]) == 0
    assert (tmp_path / "b" / "config.json").exists()
    assert convert_cli([str(d / "Wan_VAE.pth"), str(tmp_path / "j"), "--no-progress"]) == 2  # exists
    assert "destination exists" in capsys.readouterr().err
