"""Checkpoint conversion of the DiT: round trips, the reference loading our export, bad input, CLI."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dit_reference import save_diffusers_dir, save_wan_file, tiny_diffusers, to_numpy

from yume_jax.convert import convert, load_safetensors, save_safetensors
from yume_jax.core.tensors import ConversionError


def _bits_equal(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    d = tmp_path_factory.mktemp("conv")
    m = tiny_diffusers("i2v", seed=3)
    save_diffusers_dir(m, d / "diffusers")
    return m, d


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_diffusers_bit_exact(tmp_path, dtype):
    m = tiny_diffusers("i2v", seed=4).to(dtype)
    save_diffusers_dir(m, tmp_path / "src")
    convert(tmp_path / "src", tmp_path / "jax", progress=False)
    convert(tmp_path / "jax", tmp_path / "back", to="torch", naming="diffusers", progress=False)
    _bits_equal(to_numpy(m.state_dict()), load_safetensors(tmp_path / "back" / "diffusion_pytorch_model.safetensors"))


def test_round_trip_wan_bit_exact_and_yume_extras_kept(tmp_path):
    m = tiny_diffusers("i2v", seed=5)
    save_wan_file(m, tmp_path / "w.safetensors")
    sd = load_safetensors(tmp_path / "w.safetensors")
    rng = np.random.default_rng(0)
    for tier, k in (("2x", 4), ("4x", 8), ("8x", 16), ("16x", 32), ("2x_f", 4)):  # spec/yume.md extras
        c_out = 36 if tier == "2x_f" else 64
        sd[f"patch_embedding_{tier}.weight"] = rng.standard_normal((c_out, 36, 1, k, k)).astype(np.float32)
        sd[f"patch_embedding_{tier}.bias"] = rng.standard_normal((c_out,)).astype(np.float32)
    for k in [k for k in sd if k.startswith("blocks.0.")]:
        sd["sideblock." + k[len("blocks.0."):]] = rng.standard_normal(sd[k].shape).astype(np.float32)
    sd["mask_token"] = rng.standard_normal((1, 1, 64)).astype(np.float32)
    save_safetensors(tmp_path / "yume.safetensors", sd)
    convert(tmp_path / "yume.safetensors", tmp_path / "jax", progress=False, num_heads=4)
    meta = json.loads((tmp_path / "jax" / "yume_jax.json").read_text())
    assert meta["config"]["history_tiers"] == ["2x", "4x", "8x", "16x", "2x_f"]
    assert meta["config"]["sideblock"] and meta["config"]["mask_token"]
    assert "mask_token" in meta["extras"] and any(e.startswith("sideblock.") for e in meta["extras"])
    convert(tmp_path / "jax", tmp_path / "back", to="torch", naming="wan", progress=False)
    _bits_equal(sd, load_safetensors(tmp_path / "back" / "diffusion_pytorch_model.safetensors"))


def test_reference_loads_our_exports_strictly(i2v, tmp_path):
    """diffusers from_pretrained (strict: no missing or unexpected keys) on our diffusers export, and
    our wan export renamed by the spec's table is a complete diffusers state dict."""
    from diffusers import WanTransformer3DModel

    m, d = i2v
    convert(d / "diffusers", tmp_path / "jax", progress=False)
    convert(tmp_path / "jax", tmp_path / "dif", to="torch", naming="diffusers", progress=False)
    m2, info = WanTransformer3DModel.from_pretrained(tmp_path / "dif", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    convert(tmp_path / "jax", tmp_path / "wan", to="torch", naming="wan", progress=False)
    wan_sd = load_safetensors(tmp_path / "wan" / "diffusion_pytorch_model.safetensors")
    from dit_reference import diffusers_to_wan_name

    expect = {diffusers_to_wan_name(k) for k in m.state_dict()}
    assert set(wan_sd) == expect
    m3 = WanTransformer3DModel(**{k: v for k, v in m.config.items() if not k.startswith("_")})
    inv = {diffusers_to_wan_name(k): k for k in m.state_dict()}
    m3.load_state_dict({inv[k]: torch.from_numpy(np.array(v)) for k, v in wan_sd.items()}, strict=True)


def test_pickle_and_sharded_inputs(i2v, tmp_path):
    m, d = i2v
    sd = m.state_dict()
    torch.save(sd, tmp_path / "model.pth")
    convert(tmp_path / "model.pth", tmp_path / "from_pth", progress=False, num_heads=4)
    # two shards + index.json, as big checkpoints come
    keys = list(sd)
    shards = {"a.safetensors": keys[: len(keys) // 2], "b.safetensors": keys[len(keys) // 2:]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    np_sd = to_numpy(sd)
    for name, ks in shards.items():
        save_safetensors(sharded / name, {k: np_sd[k] for k in ks})
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (sharded / "config.json").write_text((d / "diffusers" / "config.json").read_text())
    convert(sharded, tmp_path / "from_shards", progress=False)
    a = load_safetensors(tmp_path / "from_pth" / "params.safetensors")
    b = load_safetensors(tmp_path / "from_shards" / "params.safetensors")
    _bits_equal(a, b)


# ---------------------------------------------------------------------------------------------
# bad input: exit 2, one line naming file and key, no DST that looks valid


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "yume_jax.convert", *map(str, args), "--no-progress"],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def wan_file(tmp_path):
    save_wan_file(tiny_diffusers("t2v", seed=6), tmp_path / "w.safetensors")
    return tmp_path / "w.safetensors"


def _rewrite(path: Path, fn) -> Path:
    sd = load_safetensors(path)
    fn(sd)
    out = path.with_name("bad.safetensors")
    save_safetensors(out, sd)
    return out


@pytest.mark.parametrize("case, match", [
    ("missing_file", "no such file"),
    ("truncated", "truncated"),
    ("corrupt_header", "corrupt safetensors header"),
    ("unknown_key", "unknown key"),
    ("missing_key", "missing key"),
    ("shape_mismatch", "shape mismatch"),
    ("bad_dtype", "unsupported dtype"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, wan_file, case, match):
    src = wan_file
    key = None
    if case == "missing_file":
        src = tmp_path / "nope.safetensors"
    elif case == "truncated":
        data = wan_file.read_bytes()
        src = tmp_path / "trunc.safetensors"
        src.write_bytes(data[: len(data) - 1000])
    elif case == "corrupt_header":
        data = bytearray(wan_file.read_bytes())
        n = struct.unpack("<Q", data[:8])[0]
        data[8:8 + n] = b"{" + b"x" * (n - 1)
        src = tmp_path / "corrupt.safetensors"
        src.write_bytes(bytes(data))
    elif case == "unknown_key":
        key = "blocks.0.surprise.weight"
        src = _rewrite(wan_file, lambda sd: sd.__setitem__(key, np.zeros((3,), np.float32)))
    elif case == "missing_key":
        key = "blocks.1.cross_attn.v.bias"
        src = _rewrite(wan_file, lambda sd: sd.pop(key))
    elif case == "shape_mismatch":
        key = "blocks.1.ffn.2.weight"
        src = _rewrite(wan_file, lambda sd: sd.__setitem__(key, np.zeros((64, 95), np.float32)))
    elif case == "bad_dtype":
        key = "blocks.0.self_attn.q.bias"
        src = _rewrite(wan_file, lambda sd: sd.__setitem__(key, np.zeros((64,), np.int32)))
    dst = tmp_path / "out"
    r = _cli(src, dst)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x]
    assert len(lines) == 1 and match in lines[0], r.stderr
    if case != "missing_file":
        assert str(src) in lines[0]
    if key:
        assert key in lines[0]
    assert not dst.exists() and not list(tmp_path.glob("out.partial*"))


def test_existing_destination_is_not_touched(tmp_path, wan_file):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("precious")
    r = _cli(wan_file, dst)
    assert r.returncode == 2 and "exists" in r.stderr
    assert (dst / "keep.txt").read_text() == "precious"


def test_interrupted_conversion_leaves_no_valid_destination(tmp_path, wan_file, monkeypatch):
    from yume_jax.core import tensors

    calls = {"n": 0}
    orig = tensors.SafetensorsWriter.write

    def failing(self, key, arr):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return orig(self, key, arr)

    monkeypatch.setattr(tensors.SafetensorsWriter, "write", failing)
    with pytest.raises(KeyboardInterrupt):
        convert(wan_file, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.partial*"))


def test_cli_success_and_naming_detection(tmp_path, wan_file):
    r = _cli(wan_file, tmp_path / "j", "--num-heads", "4")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "j" / "yume_jax.json").read_text())
    assert meta["source_naming"] == "wan" and meta["config"]["num_heads"] == 4
    r = _cli(tmp_path / "j", tmp_path / "t", "--to", "torch", "--naming", "diffusers")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "t" / "config.json").read_text())["num_attention_heads"] == 4


def test_not_a_checkpoint_errors(tmp_path):
    save_safetensors(tmp_path / "x.safetensors", {"foo": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match="cannot tell what model"):
        convert(tmp_path / "x.safetensors", tmp_path / "o", progress=False)
