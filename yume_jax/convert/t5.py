"""Key names of the umT5 encoder: Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` <-> transformers
``UMT5EncoderModel`` <-> yume_jax (spec/wan.md "Text encoder: umT5-XXL encoder").

| yume_jax | Wan | transformers |
| --- | --- | --- |
| token_embedding.embedding | token_embedding.weight | shared.weight (and encoder.embed_tokens.weight, tied) |
| blocks.i.norm1.scale | blocks.i.norm1.weight | encoder.block.i.layer.0.layer_norm.weight |
| blocks.i.attn.{q,k,v,o}.kernel (T) | blocks.i.attn.{q,k,v,o}.weight | ...layer.0.SelfAttention.{q,k,v,o}.weight |
| blocks.i.pos_embedding.embedding | blocks.i.pos_embedding.embedding.weight | ...relative_attention_bias.weight |
| blocks.i.norm2.scale | blocks.i.norm2.weight | ...layer.1.layer_norm.weight |
| blocks.i.ffn.{gate,fc1,fc2}.kernel (T) | blocks.i.ffn.{gate.0,fc1,fc2}.weight | ...DenseReluDense.{wi_0,wi_1,wo}.weight |
| norm.scale | norm.weight | encoder.final_layer_norm.weight |

(T): Linear, transposed. Heads come from the bias tables ([buckets, heads]); max distance and eps
from config.json when there is one (else 128 and 1e-6). The tokenizer recorded in the config is the
``tokenizer`` option, else ``umt5`` for the real vocabulary (256384) and ``byt5`` otherwise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from yume_jax.convert.core import Family, Op, Plan, identity, transpose
from yume_jax.core.tensors import ConversionError, TensorSource
from yume_jax.encoders.config import BYT5_VOCAB, TOKENIZERS, UMT5Config

UMT5_VOCAB = 256384


@dataclass(frozen=True)
class Entry:
    jax: str
    wan: str
    hf: str
    linear: bool
    torch_shape: tuple[int, ...]

    def name(self, naming: str) -> str:
        return self.wan if naming == "wan" else self.hf

    @property
    def jax_shape(self) -> tuple[int, ...]:
        return self.torch_shape[::-1] if self.linear else self.torch_shape


def entries(cfg: UMT5Config) -> list[Entry]:
    d, inner, f = cfg.dim, cfg.inner_dim, cfg.ffn_dim
    e = [Entry("token_embedding.embedding", "token_embedding.weight", "shared.weight", False, (cfg.vocab_size, d))]
    for i in range(cfg.num_layers):
        j, w, h = f"blocks.{i}", f"blocks.{i}", f"encoder.block.{i}.layer"
        e.append(Entry(f"{j}.norm1.scale", f"{w}.norm1.weight", f"{h}.0.layer_norm.weight", False, (d,)))
        for p in "qkv":
            e.append(Entry(f"{j}.attn.{p}.kernel", f"{w}.attn.{p}.weight", f"{h}.0.SelfAttention.{p}.weight", True,
                           (inner, d)))
        e.append(Entry(f"{j}.attn.o.kernel", f"{w}.attn.o.weight", f"{h}.0.SelfAttention.o.weight", True, (d, inner)))
        e.append(Entry(f"{j}.pos_embedding.embedding", f"{w}.pos_embedding.embedding.weight",
                       f"{h}.0.SelfAttention.relative_attention_bias.weight", False, (cfg.num_buckets, cfg.num_heads)))
        e.append(Entry(f"{j}.norm2.scale", f"{w}.norm2.weight", f"{h}.1.layer_norm.weight", False, (d,)))
        e.append(Entry(f"{j}.ffn.gate.kernel", f"{w}.ffn.gate.0.weight", f"{h}.1.DenseReluDense.wi_0.weight", True,
                       (f, d)))
        e.append(Entry(f"{j}.ffn.fc1.kernel", f"{w}.ffn.fc1.weight", f"{h}.1.DenseReluDense.wi_1.weight", True, (f, d)))
        e.append(Entry(f"{j}.ffn.fc2.kernel", f"{w}.ffn.fc2.weight", f"{h}.1.DenseReluDense.wo.weight", True, (d, f)))
    e.append(Entry("norm.scale", "norm.weight", "encoder.final_layer_norm.weight", False, (d,)))
    return e


def _same_tied(xs):
    """shared.weight and its tied copy encoder.embed_tokens.weight: must be equal."""
    if not np.array_equal(xs[0], xs[1]):
        raise ConversionError("shared.weight and encoder.embed_tokens.weight differ (expected tied weights)",
                              key="encoder.embed_tokens.weight")
    return xs[0]


def infer_config(src: TensorSource, naming: str, options: dict) -> UMT5Config:
    s = src.shapes()
    w = naming == "wan"
    emb = ("token_embedding.weight" if w else
           "shared.weight" if "shared.weight" in s else "encoder.embed_tokens.weight")
    pat = r"blocks\.(\d+)\.norm1\.weight$" if w else r"encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight$"
    layers = sorted(int(m.group(1)) for k in s if (m := re.match(pat, k)))
    if not layers:
        raise ConversionError("no encoder blocks found", file=src.path)
    if layers != list(range(len(layers))):
        raise ConversionError(f"blocks are not contiguous (have {layers[:4]}...)", file=src.path)
    probe = {
        "q": ("blocks.0.attn.q.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"),
        "bias": ("blocks.0.pos_embedding.embedding.weight",
                 "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        "gate": ("blocks.0.ffn.gate.0.weight", "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"),
    }

    def shape(what):
        k = probe[what][0 if w else 1]
        if k not in s:
            raise ConversionError("missing key (needed to infer the config)", file=src.path, key=k)
        return s[k]

    if emb not in s:
        raise ConversionError("missing key (needed to infer the config)", file=src.path, key=emb)
    vocab, dim = s[emb]
    inner = shape("q")[0]
    buckets, heads = shape("bias")
    ffn = shape("gate")[0]
    if inner % heads:
        raise ConversionError(f"attention width {inner} is not divisible by {heads} heads", file=src.path)
    if options.get("num_heads") not in (None, heads):
        raise ConversionError(f"--num-heads {options['num_heads']} disagrees with the checkpoint ({heads} heads)")
    hf = src.hf_config or {}
    if hf and (hf.get("feed_forward_proj", "gated-gelu") != "gated-gelu" or hf.get("dense_act_fn") not in
               (None, "gelu_new", "gelu_pytorch_tanh")):
        raise ConversionError(f"unsupported FFN {hf.get('feed_forward_proj')}/{hf.get('dense_act_fn')} "
                              "(umT5 uses gated-gelu with tanh GELU)", file=src.path)
    tok = options.get("tokenizer") or ("umt5" if vocab == UMT5_VOCAB else "byt5" if vocab >= BYT5_VOCAB else "none")
    if tok not in TOKENIZERS:
        raise ConversionError(f"tokenizer must be one of {TOKENIZERS}, not {tok!r}")
    try:
        return UMT5Config(vocab_size=vocab, dim=dim, ffn_dim=ffn, num_heads=heads, head_dim=inner // heads,
                          num_layers=len(layers), num_buckets=buckets,
                          max_distance=int(hf.get("relative_attention_max_distance", 128)),
                          eps=float(hf.get("layer_norm_epsilon", 1e-6)), tokenizer=tok)
    except ValueError as e:
        raise ConversionError(str(e), file=src.path) from None


def hf_config(cfg: UMT5Config) -> dict:
    return {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", "vocab_size": cfg.vocab_size,
            "d_model": cfg.dim, "d_kv": cfg.head_dim, "d_ff": cfg.ffn_dim, "num_layers": cfg.num_layers,
            "num_heads": cfg.num_heads, "relative_attention_num_buckets": cfg.num_buckets,
            "relative_attention_max_distance": cfg.max_distance, "layer_norm_epsilon": cfg.eps,
            "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
            "tie_word_embeddings": True, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


class T5Family(Family):
    name = "t5"
    namings = ("wan", "transformers")

    def detect(self, src: TensorSource) -> str | None:
        keys = set(src.keys())
        if "token_embedding.weight" in keys and "blocks.0.pos_embedding.embedding.weight" in keys:
            return "wan"
        bias = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
        if bias.format(0) in keys and not any(k.startswith("decoder.") for k in keys):
            # umT5 has a bias table in every block; plain T5 only in block 0
            if "encoder.block.1.layer.0.layer_norm.weight" not in keys or bias.format(1) in keys:
                return "transformers"
        return None

    def plan_to_jax(self, src: TensorSource, naming: str, options: dict) -> Plan:
        if naming not in self.namings:
            raise ConversionError(f"naming {naming!r} not known for umT5; use one of {self.namings}")
        cfg = infer_config(src, naming, options)
        ops = []
        keys = set(src.keys())
        for e in entries(cfg):
            ins = (e.name(naming),)
            fn = transpose if e.linear else identity
            if e.jax == "token_embedding.embedding" and naming == "transformers":
                tied = tuple(k for k in ("shared.weight", "encoder.embed_tokens.weight") if k in keys)
                ins, fn = (tied, _same_tied) if len(tied) == 2 else (tied, identity)
            ops.append(Op(e.jax, ins, e.jax_shape, fn, (e.torch_shape,) * len(ins)))
        return Plan(ops, cfg.to_dict())

    def plan_to_torch(self, src: TensorSource, naming: str, options: dict) -> Plan:
        cfg = UMT5Config.from_dict(src.meta["config"])
        ops = [Op(e.name(naming), (e.jax,), e.torch_shape, transpose if e.linear else identity, (e.jax_shape,))
               for e in entries(cfg)]
        return Plan(ops, cfg.to_dict(), hf_config=hf_config(cfg) if naming == "transformers" else None,
                    filename="model.safetensors")
