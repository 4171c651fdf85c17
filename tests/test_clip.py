"""CLIP ViT visual tower: parity with transformers CLIPVisionModel (hidden_states[-2]), Wan's uint8
preprocessing, conversion (Wan's open-clip names with fused qkv, transformers names), bit-exact round
trips, bf16 tolerance, bad input."""
import json

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

import yume_jax
from yume_jax.convert import ConversionError, convert, load_safetensors, save_safetensors
from yume_jax.convert.__main__ import main as convert_main
from yume_jax.encoders.clip import CLIP_MEAN, CLIP_STD, bicubic_matrix

# odd sizes: 5x5 patches of 7 px (26 tokens), head_dim 8, mlp 72
HF_KW = dict(hidden_size=40, intermediate_size=72, num_hidden_layers=3, num_attention_heads=5, image_size=35,
             patch_size=7, hidden_act="gelu", projection_dim=12)


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).tobytes(), a.dtype.str if a.dtype != ml_dtypes.bfloat16 else "bf16", a.shape


def wan_preprocess(images_uint8: np.ndarray, size: int) -> torch.Tensor:
    """Wan's CLIPModel.visual: to_tensor, [-1, 1], bicubic resize, back to [0, 1], CLIP Normalize."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255
    x = x.sub(0.5).div(0.5)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x.mul(0.5).add(0.5)
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def wan_rename(sd: dict, width: int) -> dict:
    """CLIPVisionModelWithProjection state dict -> Wan's open-clip ``visual.*`` names, plus a fake text tower."""
    g = lambda k: sd[f"vision_model.{k}"]  # noqa: E731
    out = {"visual.patch_embedding.weight": g("embeddings.patch_embedding.weight"),
           "visual.cls_embedding": g("embeddings.class_embedding").reshape(1, 1, width),
           "visual.pos_embedding": g("embeddings.position_embedding.weight")[None],
           "visual.pre_norm.weight": g("pre_layrnorm.weight"), "visual.pre_norm.bias": g("pre_layrnorm.bias")}
    for i in range(HF_KW["num_hidden_layers"]):
        t, h = f"visual.transformer.{i}", f"encoder.layers.{i}"
        for ours, theirs in (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
                             ("mlp.0", "mlp.fc1"), ("mlp.2", "mlp.fc2")):
            out[f"{t}.{ours}.weight"] = g(f"{h}.{theirs}.weight")
            out[f"{t}.{ours}.bias"] = g(f"{h}.{theirs}.bias")
        for p in ("weight", "bias"):
            out[f"{t}.attn.to_qkv.{p}"] = torch.cat([g(f"{h}.self_attn.{n}_proj.{p}") for n in "qkv"])
    out["visual.post_norm.weight"] = g("post_layernorm.weight")
    out["visual.post_norm.bias"] = g("post_layernorm.bias")
    out["visual.head"] = sd["visual_projection.weight"].T
    gen = torch.Generator().manual_seed(3)
    out["textual.token_embedding.weight"] = torch.randn(50, 24, generator=gen)
    out["textual.blocks.0.attn.q.weight"] = torch.randn(24, 24, generator=gen)
    out["log_scale"] = torch.tensor(4.6052)
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


@pytest.fixture(scope="module", params=["gelu", "quick_gelu"])
def hf(request, tmp_path_factory):
    torch.manual_seed(0)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**HF_KW, "hidden_act": request.param})).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.2 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("clip")
    model.save_pretrained(root / "hf")
    assert convert_main([str(root / "hf"), str(root / "jax"), "--no-progress"]) == 0
    return model, root


def test_bicubic_matches_torch():
    for a, b in ((37, 35), (100, 35), (224, 224), (480, 224), (832, 224), (13, 224), (300, 224)):
        eye = torch.eye(a)[:, None, :, None]
        ref = F.interpolate(eye, size=(b, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].numpy().T
        np.testing.assert_allclose(bicubic_matrix(a, b), ref, rtol=0, atol=2e-6)


def test_vit_h_preset_matches_conversion_table():
    """ViT-H/14 (abstract): 257 tokens, ~632M visual parameters; the Wan-naming table covers the model exactly."""
    from yume_jax.convert.clip import rows
    from yume_jax.presets import encoder as get
    from yume_jax.encoders.clip import VisionTransformer
    from yume_jax.core import params as P

    cfg = get("clip-vit-h-14")
    assert cfg.num_tokens == 257 and cfg.head_dim == 80
    flat = P.flatten(nnx.state(nnx.eval_shape(lambda: VisionTransformer(cfg, rngs=nnx.Rngs(0)))))
    assert 6.2e8 < sum(int(np.prod(v.shape)) for v in flat.values()) < 6.4e8
    got = {}
    for r in rows(cfg, "wan"):
        for j, js in zip(r.jax, r.jax_shapes):
            k = j.replace(j.split(".")[1] + ".", "", 1) if j.startswith("blocks.") else j
            got.setdefault(k, set()).add((cfg.num_layers, *js) if j.startswith("blocks.") else js)
    assert set(got) == set(flat)
    for k, shapes in got.items():
        assert shapes == {tuple(flat[k].shape)}, k


def test_parity_fp32(hf):
    model, root = hf
    ie = yume_jax.load_image_encoder(root / "jax")
    assert ie.config.activation == model.config.hidden_act and ie.config.num_heads == 5
    pix = torch.randn(2, 3, 35, 35)
    with torch.no_grad():
        out = model(pix, output_hidden_states=True)
    ref = out.hidden_states[-2].numpy()
    got = np.asarray(ie.encode_pixels(pix.numpy()))
    assert got.shape == (2, 26, 40) and got.dtype == np.float32
    assert rel_l2(got, ref) <= 1e-5
    # all blocks + post-norm + head == transformers image_embeds (checks the converted post_norm and head)
    vt = nnx.merge(ie.graphdef, ie.params)
    last = vt(np.transpose(pix.numpy(), (0, 2, 3, 1)), num_blocks=ie.config.num_layers)
    assert rel_l2(np.asarray(last), out.last_hidden_state.numpy()) <= 1e-5
    assert rel_l2(np.asarray(vt.pool(last)), out.image_embeds.numpy()) <= 1e-5


def test_encode_uint8_wan_preprocessing(hf):
    model, root = hf
    ie = yume_jax.load_image_encoder(root / "jax")
    rng = np.random.default_rng(0)
    for h, w in ((29, 61), (96, 48)):  # downsample + upsample, non-square
        imgs = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        with torch.no_grad():
            ref = model(wan_preprocess(imgs, 35), output_hidden_states=True).hidden_states[-2].numpy()
        assert rel_l2(np.asarray(ie.encode(imgs)), ref) <= 1e-5


def test_bf16_vs_fp32(hf):
    """Stated tolerance: bf16 (params + matmul inputs; fp32 residual, LayerNorm, softmax) within 2e-2 rel L2."""
    _, root = hf
    a = yume_jax.load_image_encoder(root / "jax")
    b = yume_jax.load_image_encoder(root / "jax", dtype="bfloat16")
    imgs = np.random.default_rng(1).integers(0, 256, (2, 50, 40, 3), dtype=np.uint8)
    ya, yb = np.asarray(a.encode(imgs)), b.encode(imgs)
    assert yb.dtype == np.dtype(ml_dtypes.bfloat16)
    err = rel_l2(np.asarray(yb, np.float32), ya)
    assert 0 < err <= 2e-2, err


def test_float16_checkpoint_runs_in_float32(hf, tmp_path):
    model, root = hf
    convert(root / "hf", tmp_path / "f16", dtype="float16", progress=False)
    ie = yume_jax.load_image_encoder(tmp_path / "f16")
    assert ie.dtype == np.float32  # float16 widens exactly; bfloat16 would drop mantissa bits
    pix = torch.randn(2, 3, 35, 35)
    with torch.no_grad():
        ref = model(pix, output_hidden_states=True).hidden_states[-2].numpy()
    assert rel_l2(np.asarray(ie.encode_pixels(pix)), ref) <= 2e-3  # the weights' float16 rounding only


def test_wan_naming_round_trip(hf, tmp_path):
    model, root = hf
    sd = wan_rename(model.state_dict(), HF_KW["hidden_size"])
    torch.save(sd, tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    src = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    assert convert_main([str(src), str(tmp_path / "jax"), "--num-heads", "5", "--no-progress"]) == 0
    meta = json.loads((tmp_path / "jax" / "yume_jax.json").read_text())
    assert meta["family"] == "clip" and meta["source_naming"] == "wan"
    assert sorted(meta["extras"]) == ["log_scale", "textual.blocks.0.attn.q.weight", "textual.token_embedding.weight"]
    assert meta["config"]["activation"] == "gelu"  # Wan's file has no config: ViT-H's exact GELU
    # same tensors as the transformers-named conversion (text tower aside)
    a = load_safetensors(root / "jax" / "params.safetensors")
    b = load_safetensors(tmp_path / "jax" / "params.safetensors")
    assert set(b) - set(a) == set(meta["extras"])
    for k in a:
        assert bits(a[k]) == bits(b[k]), k
    if model.config.hidden_act == "gelu":
        ie = yume_jax.load_image_encoder(tmp_path / "jax")
        pix = torch.randn(2, 3, 35, 35)
        with torch.no_grad():
            ref = model(pix, output_hidden_states=True).hidden_states[-2].numpy()
        assert rel_l2(np.asarray(ie.encode_pixels(pix.numpy())), ref) <= 1e-5
    # back to Wan, text tower included: bit-exact
    convert(tmp_path / "jax", tmp_path / "wan_back", to="torch", progress=False)
    back = load_safetensors(tmp_path / "wan_back" / "model.safetensors")
    assert back.keys() == sd.keys()
    for k, v in sd.items():
        assert bits(back[k]) == bits(v.numpy()), k
    # Wan -> ours -> transformers: loadable, the text tower left out
    convert(tmp_path / "jax", tmp_path / "hf_from_wan", to="torch", naming="transformers", progress=False)
    again = CLIPVisionModelWithProjection.from_pretrained(tmp_path / "hf_from_wan").eval()
    want = model.state_dict()
    for k, v in again.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_transformers_round_trips(hf, tmp_path):
    model, root = hf
    # CLIPVisionModelWithProjection (the hub layout, vision_model. prefix): bit-exact both ways
    convert(root / "jax", tmp_path / "hf_back", to="torch", progress=False)
    src = load_safetensors(root / "hf" / "model.safetensors")
    back = load_safetensors(tmp_path / "hf_back" / "model.safetensors")
    assert back.keys() == src.keys() and "vision_model.pre_layrnorm.weight" in src
    for k, v in src.items():
        assert bits(back[k]) == bits(v), k
    # an old-style int64 position_ids buffer is dropped (transformers ignores it too)
    (tmp_path / "old").mkdir()
    save_safetensors(tmp_path / "old" / "model.safetensors",
                     {**src, "vision_model.embeddings.position_ids": np.arange(26, dtype=np.int64)[None]})
    (tmp_path / "old" / "config.json").write_text((root / "hf" / "config.json").read_text())
    convert(tmp_path / "old", tmp_path / "jax2", progress=False)
    convert(tmp_path / "jax2", tmp_path / "back2", to="torch", progress=False)
    back2 = load_safetensors(tmp_path / "back2" / "model.safetensors")
    assert back2.keys() == src.keys()
    for k in src:
        assert bits(back2[k]) == bits(src[k]), k
    # a plain CLIPVisionModel: transformers 5 saves it without the prefix; the export writes the prefix
    plain = CLIPVisionModel(model.config).eval()
    plain.save_pretrained(tmp_path / "plain")
    convert(tmp_path / "plain", tmp_path / "plain_jax", progress=False)
    ie = yume_jax.load_image_encoder(tmp_path / "plain_jax")
    assert ie.config.proj_dim is None
    pix = torch.randn(2, 3, 35, 35)
    with torch.no_grad():
        ref = plain(pix, output_hidden_states=True).hidden_states[-2].numpy()
    assert rel_l2(np.asarray(ie.encode_pixels(pix)), ref) <= 1e-5
    convert(tmp_path / "plain_jax", tmp_path / "plain_back", to="torch", progress=False)
    psrc = load_safetensors(tmp_path / "plain" / "model.safetensors")
    pback = load_safetensors(tmp_path / "plain_back" / "model.safetensors")
    assert pback.keys() == {f"vision_model.{k}" for k in psrc}
    for k, v in psrc.items():
        assert bits(pback[f"vision_model.{k}"]) == bits(v), k
    assert type(CLIPVisionModel.from_pretrained(tmp_path / "plain_back")).__name__ == "CLIPVisionModel"


def test_bad_input(hf):
    _, root = hf
    ie = yume_jax.load_image_encoder(root / "jax")
    with pytest.raises(ValueError, match="must be uint8"):
        ie.encode(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"channels last.*got shape \(1, 3, 32, 32\)"):
        ie.encode(np.zeros((1, 3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"got shape \(32, 32, 3\)"):
        ie.encode(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"must be \(B, 3, 35, 35\)"):
        ie.encode_pixels(np.zeros((1, 3, 224, 224), np.float32))
    with pytest.raises(ValueError, match="floating point"):
        ie.encode_pixels(np.zeros((1, 3, 35, 35), np.uint8))
    with pytest.raises(ConversionError, match="holds a 'clip' model, not 't5'"):
        yume_jax.load_text_encoder(root / "jax")
