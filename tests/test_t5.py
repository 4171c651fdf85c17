"""umT5 text encoder: parity with transformers UMT5EncoderModel, Wan's encode semantics, tokenizers,
conversion (Wan and transformers namings, both directions, bit-exact round trips), bad input."""
import io
import json
import warnings

import ml_dtypes
import numpy as np
import pytest
import torch
from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

import yume_jax
from yume_jax.convert import ConversionError, convert, load_safetensors
from yume_jax.convert.__main__ import main as convert_main
from yume_jax.encoders import PromptCache
from yume_jax.encoders.t5 import relative_position_buckets
from yume_jax.encoders.tokenizer import clean

# odd sizes; max_distance 20 so that the log-spaced and the clamped buckets both occur at short lengths
HF_KW = dict(vocab_size=389, d_model=40, d_kv=6, d_ff=56, num_layers=3, num_heads=3, relative_attention_num_buckets=32,
             relative_attention_max_distance=20)


def rel_l2(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def wan_rename(sd: dict) -> dict:
    """transformers UMT5EncoderModel state dict -> Wan's T5Encoder names (spec/wan.md table)."""
    out = {}
    for k, v in sd.items():
        if k == "encoder.embed_tokens.weight":
            continue
        k2 = {"shared.weight": "token_embedding.weight", "encoder.final_layer_norm.weight": "norm.weight"}.get(k)
        if k2 is None:
            i = k.split(".")[2]
            rest = k.split(".", 3)[3]
            k2 = f"blocks.{i}." + {
                "layer.0.layer_norm.weight": "norm1.weight", "layer.0.SelfAttention.q.weight": "attn.q.weight",
                "layer.0.SelfAttention.k.weight": "attn.k.weight", "layer.0.SelfAttention.v.weight": "attn.v.weight",
                "layer.0.SelfAttention.o.weight": "attn.o.weight",
                "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
                "layer.1.layer_norm.weight": "norm2.weight", "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
                "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight", "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
            }[rest]
        out[k2] = v.clone()
    return out


def bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).tobytes(), a.dtype.str if a.dtype != ml_dtypes.bfloat16 else "bf16", a.shape


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A tiny random UMT5EncoderModel (norm weights randomised too), its save_pretrained dir and our conversion."""
    torch.manual_seed(0)
    model = UMT5EncoderModel(UMT5Config(**HF_KW)).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "layer_norm" in n:
                p.copy_(1 + 0.2 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("t5")
    model.save_pretrained(root / "hf")
    assert convert_main([str(root / "hf"), str(root / "jax"), "--no-progress"]) == 0
    return model, root


def padded_batch(rng, lengths, total, vocab):
    ids = rng.integers(2, vocab, (len(lengths), total))
    mask = (np.arange(total)[None] < np.array(lengths)[:, None]).astype(np.int64)
    ids[mask == 0] = 0
    return ids, mask


def test_buckets_match_transformers():
    from transformers.models.umt5.modeling_umt5 import UMT5Attention

    for nb, md in ((32, 128), (32, 20), (16, 64)):
        att = UMT5Attention(UMT5Config(d_model=8, d_kv=4, num_heads=2, relative_attention_num_buckets=nb,
                                       relative_attention_max_distance=md), has_relative_attention_bias=True)
        rel = torch.arange(700)[None, :] - torch.arange(600)[:, None]
        np.testing.assert_array_equal(relative_position_buckets(600, 700, nb, md),
                                      att._relative_position_bucket(rel).numpy())


def test_umt5_xxl_preset_matches_conversion_table():
    """The real-size preset (abstract, nothing allocated): 5.7B parameters, and every converted tensor name and
    shape is the model's."""
    from flax import nnx

    from yume_jax.convert.t5 import entries
    from yume_jax.presets import encoder as get
    from yume_jax.encoders.t5 import UMT5Encoder
    from yume_jax.core import params as P

    cfg = get("umt5-xxl")
    assert (cfg.vocab_size, cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.head_dim, cfg.num_layers) == (
        256384, 4096, 10240, 64, 64, 24)
    flat = P.flatten(nnx.state(nnx.eval_shape(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0)))))
    assert 5.6e9 < sum(int(np.prod(v.shape)) for v in flat.values()) < 5.8e9
    want = {}
    for e in entries(cfg):
        want.setdefault(e.jax.replace(e.jax.split(".")[1] + ".", "", 1) if e.jax.startswith("blocks.") else e.jax,
                        []).append(e.jax_shape)
    assert set(want) == set(flat)
    for k, shapes in want.items():
        assert {tuple(flat[k].shape)} == {(len(shapes), *s) if k.startswith("blocks.") else s for s in shapes}, k


def test_parity_fp32_padded(hf):
    model, root = hf
    te = yume_jax.load_text_encoder(root / "jax", cache=None)
    assert te.dtype == np.float32 and te.config.num_heads == 3 and te.config.max_distance == 20
    assert te.config.tokenizer == "byt5"
    ids, mask = padded_batch(np.random.default_rng(1), [45, 17], 45, HF_KW["vocab_size"])
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).last_hidden_state.numpy()
    out = np.asarray(te.encode_ids(ids, mask))
    assert out.shape == (2, 45, 40) and out.dtype == np.float32
    assert rel_l2(out, ref) <= 1e-5
    assert rel_l2(out[1, :17], ref[1, :17]) <= 1e-5  # the real tokens of the padded row alone


def test_bf16_vs_fp32(hf):
    """Stated tolerance: bf16 (params + matmul inputs; fp32 residual, norms, softmax) within 2e-2 rel L2 of fp32."""
    _, root = hf
    t32 = yume_jax.load_text_encoder(root / "jax", cache=None)
    t16 = yume_jax.load_text_encoder(root / "jax", dtype="bfloat16", cache=None)
    ids, mask = padded_batch(np.random.default_rng(2), [31, 9], 31, HF_KW["vocab_size"])
    a, b = np.asarray(t32.encode_ids(ids, mask)), t16.encode_ids(ids, mask)
    assert b.dtype == np.dtype(ml_dtypes.bfloat16)
    err = rel_l2(np.asarray(b, np.float32), a)
    assert 0 < err <= 2e-2, err


def test_encode_wan_semantics(hf):
    """encode = clean, tokenize (EOS), run, keep the real tokens, zero-pad to 512: vs transformers run Wan's way
    (ByT5 tokenizer padded to 512, UMT5EncoderModel, trimmed, zero-padded)."""
    model, root = hf
    te = yume_jax.load_text_encoder(root / "jax", cache=None)
    texts = ["  The camera  turns left,\n slowly. ", "Ünïcode &amp; a longer prompt: walk forward along the street"]
    out = np.asarray(te.encode(texts))
    assert out.shape == (2, 512, 40)
    tok = ByT5Tokenizer()
    enc = tok([clean(t) for t in texts], padding="max_length", truncation=True, max_length=512, return_tensors="pt")
    assert clean(texts[0]) == "The camera turns left, slowly." and "&" in clean(texts[1])
    with torch.no_grad():
        ref = model(enc.input_ids, enc.attention_mask).last_hidden_state.numpy()
    ref = ref * enc.attention_mask.numpy()[..., None]
    assert rel_l2(out, ref) <= 1e-5
    n = enc.attention_mask.sum(1).numpy()
    for i in range(2):
        assert np.all(out[i, n[i]:] == 0) and np.all(np.abs(out[i, :n[i]]).sum(-1) > 0)


def test_truncation_warns(hf):
    model, root = hf
    te = yume_jax.load_text_encoder(root / "jax", cache=None)
    long = "walk forward " * 60  # cleaned: 779 bytes -> 780 ByT5 tokens with EOS
    with pytest.warns(UserWarning, match=r"780 tokens long; truncated to 512"):
        out = np.asarray(te.encode([long, "stop"]))
    assert out.shape == (2, 512, 40) and np.all(np.abs(out[0]).sum(-1) > 0) and np.all(out[1, 5:] == 0)
    enc = ByT5Tokenizer()([clean(long)], truncation=True, max_length=512, return_tensors="pt")
    assert enc.input_ids[0, -1] == 1  # EOS kept at the end, as Wan's (transformers') truncation does
    with torch.no_grad():
        ref = model(enc.input_ids).last_hidden_state.numpy()
    assert rel_l2(out[:1], ref) <= 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        te.encode(["short prompt"])  # no warning below the limit


def test_wan_naming_and_round_trips(hf, tmp_path):
    model, root = hf
    wan_sd = wan_rename(model.state_dict())
    torch.save(wan_sd, tmp_path / "models_t5_umt5-xxl-enc.pth")
    assert convert_main([str(tmp_path / "models_t5_umt5-xxl-enc.pth"), str(tmp_path / "jax"), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "jax" / "yume_jax.json").read_text())
    assert meta["family"] == "t5" and meta["source_naming"] == "wan"
    ours_hf = load_safetensors(root / "jax" / "params.safetensors")
    ours_wan = load_safetensors(tmp_path / "jax" / "params.safetensors")
    assert ours_hf.keys() == ours_wan.keys()
    for k in ours_hf:
        assert bits(ours_hf[k]) == bits(ours_wan[k]), k
    # back to Wan: bit-exact
    convert(tmp_path / "jax", tmp_path / "wan_back", to="torch", progress=False)
    back = load_safetensors(tmp_path / "wan_back" / "model.safetensors")
    assert back.keys() == wan_sd.keys()
    for k, v in wan_sd.items():
        assert bits(back[k]) == bits(v.numpy()), k
    # back to transformers: bit-exact vs save_pretrained, loadable, same outputs
    convert(root / "jax", tmp_path / "hf_back", to="torch", progress=False)
    src = load_safetensors(root / "hf" / "model.safetensors")
    hb = load_safetensors(tmp_path / "hf_back" / "model.safetensors")
    assert hb.keys() == src.keys()
    for k in src:
        assert bits(hb[k]) == bits(src[k]), k
    again = UMT5EncoderModel.from_pretrained(tmp_path / "hf_back").eval()
    ids = torch.randint(0, HF_KW["vocab_size"], (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).last_hidden_state, model(ids).last_hidden_state, rtol=0, atol=0)


def test_bf16_source_round_trip_and_state_dict_with_tied_copy(hf, tmp_path):
    model, _ = hf
    sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}  # has both shared + embed_tokens
    assert "encoder.embed_tokens.weight" in sd
    torch.save(sd, tmp_path / "pytorch_model.bin")
    convert(tmp_path / "pytorch_model.bin", tmp_path / "jax", progress=False)
    te = yume_jax.load_text_encoder(tmp_path / "jax", cache=None)
    assert te.dtype == ml_dtypes.bfloat16
    convert(tmp_path / "jax", tmp_path / "back", to="torch", progress=False)
    back = load_safetensors(tmp_path / "back" / "model.safetensors")
    want = {k: v for k, v in sd.items() if k != "encoder.embed_tokens.weight"}
    assert back.keys() == want.keys()
    for k, v in want.items():
        assert bits(back[k]) == bits(v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)), k
    # a tied copy that is not a copy is refused
    sd["encoder.embed_tokens.weight"] = sd["encoder.embed_tokens.weight"] + 1
    torch.save(sd, tmp_path / "bad.bin")
    with pytest.raises(ConversionError, match="differ"):
        convert(tmp_path / "bad.bin", tmp_path / "bad", progress=False)


def test_conversion_errors(hf, tmp_path, capsys):
    model, _ = hf
    sd = wan_rename(model.state_dict())
    del sd["blocks.1.ffn.fc2.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    assert convert_main([str(tmp_path / "broken.pth"), str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "blocks.1.ffn.fc2.weight" in err and "missing key" in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConversionError, match="not a yume_jax checkpoint"):
        yume_jax.load_text_encoder(tmp_path / "broken.pth")


def _sentencepiece_dir(path):
    """A local directory in the umT5 tokenizer's format (spiece.model + tokenizer_config.json), trained here."""
    import sentencepiece as spm

    text = ["the camera moves forward", "turn left slowly", "a city street at night", "look up at the sky"] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=30, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    path.mkdir()
    (path / "spiece.model").write_bytes(buf.getvalue())
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0}))
    return path


def test_umt5_tokenizer_from_local_directory(hf, tmp_path):
    from transformers import AutoTokenizer

    model, root = hf
    convert(root / "hf", tmp_path / "jax", progress=False, tokenizer="umt5")
    assert json.loads((tmp_path / "jax" / "yume_jax.json").read_text())["config"]["tokenizer"] == "umt5"
    with pytest.raises(ValueError, match="pass tokenizer_dir"):
        yume_jax.load_text_encoder(tmp_path / "jax")
    with pytest.raises(ValueError, match="does not exist"):
        yume_jax.load_text_encoder(tmp_path / "jax", tokenizer_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds neither tokenizer.json nor spiece.model"):
        yume_jax.load_text_encoder(tmp_path / "jax", tokenizer_dir=tmp_path / "empty")
    tok_dir = _sentencepiece_dir(tmp_path / "jax" / "tokenizer")  # <checkpoint>/tokenizer is found by itself
    te = yume_jax.load_text_encoder(tmp_path / "jax", cache=None)
    ref_tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
    ids, lengths = te.tokenize(["turn left slowly", "the camera moves forward"])
    assert list(ids[0, :lengths[0]]) == ref_tok("turn left slowly")["input_ids"]
    enc = ref_tok(["turn left slowly"], padding="max_length", max_length=512, return_tensors="pt")
    with torch.no_grad():
        ref = model(enc.input_ids, enc.attention_mask).last_hidden_state.numpy() * enc.attention_mask.numpy()[..., None]
    assert rel_l2(np.asarray(te.encode(["turn left slowly"])), ref) <= 1e-5


def test_bad_ids(hf):
    _, root = hf
    te = yume_jax.load_text_encoder(root / "jax", cache=None)
    with pytest.raises(ValueError, match=r"integer \(B, L\)"):
        te.encode_ids(np.zeros((4,), np.int32))
    with pytest.raises(ValueError, match=r"integer \(B, L\)"):
        te.encode_ids(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"must be in \[0, 389\)"):
        te.encode_ids(np.full((1, 4), 389))
    with pytest.raises(ValueError, match="attention_mask shape"):
        te.encode_ids(np.ones((2, 4), np.int32), np.ones((2, 5)))
    with pytest.raises(ValueError, match="only 0 and 1"):
        te.encode_ids(np.ones((1, 4), np.int32), np.full((1, 4), 2))
    with pytest.raises(ValueError, match="row 1 has no tokens"):
        te.encode_ids(np.ones((2, 4), np.int32), np.array([[1, 1, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="non-empty list of strings"):
        te.encode([])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        te.encode(["ok", 3])
    none = yume_jax.load_text_encoder(root / "jax", tokenizer="none", cache=PromptCache())
    with pytest.raises(ValueError, match="no tokenizer"):
        none.encode(["a"])
