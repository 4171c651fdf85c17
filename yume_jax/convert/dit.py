"""Key names of the Wan DiT: original Wan / Yume layout <-> diffusers <-> yume_jax (spec/wan.md "State-dict names").

Yume's extra tensors (spec/yume.md "Models and checkpoints") are converted too: the history patch
embeddings ``patch_embedding_{2x,4x,8x,16x,2x_f}``, the MVDT ``sideblock.*`` (a full block) and
``mask_token``. In a diffusers-named export they keep their Yume names (the sideblock in diffusers
block naming), since diffusers has no such modules.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from yume_jax.convert.core import Family, Op, Plan, identity, transpose
from yume_jax.core.tensors import ConversionError, TensorSource
from yume_jax.models.config import DiTConfig

HISTORY_TIERS = ("2x", "4x", "8x", "16x", "2x_f")
HISTORY_KERNEL = {"2x": 4, "4x": 8, "8x": 16, "16x": 32, "2x_f": 4}

# kinds: how a tensor is laid out on each side
#   linear: torch [out, in]           <-> jax [in, out]
#   conv:   torch [out, in, t, h, w]  <-> jax [t, h, w, in, out]
#   mod:    torch [1, n, dim]         <-> jax [n, dim]
#   same:   identical


def _to_jax(kind: str):
    if kind == "linear":
        return transpose
    if kind == "conv":
        return lambda xs: np.ascontiguousarray(xs[0].transpose(2, 3, 4, 1, 0))
    if kind == "mod":
        return lambda xs: xs[0].reshape(xs[0].shape[1:])
    return identity


def _to_torch(kind: str):
    if kind == "linear":
        return transpose
    if kind == "conv":
        return lambda xs: np.ascontiguousarray(xs[0].transpose(4, 3, 0, 1, 2))
    if kind == "mod":
        return lambda xs: xs[0][None]
    return identity


def _jax_shape(kind: str, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    if kind == "linear":
        return torch_shape[::-1]
    if kind == "conv":
        o, i, t, h, w = torch_shape
        return (t, h, w, i, o)
    if kind == "mod":
        return torch_shape[1:]
    return torch_shape


@dataclass(frozen=True)
class Entry:
    jax: str
    wan: str
    diffusers: str
    kind: str
    torch_shape: tuple[int, ...]

    def name(self, naming: str) -> str:
        return self.wan if naming == "wan" else self.diffusers


def _linear(jax_p, wan_p, dif_p, d_in, d_out):
    return [Entry(f"{jax_p}.kernel", f"{wan_p}.weight", f"{dif_p}.weight", "linear", (d_out, d_in)),
            Entry(f"{jax_p}.bias", f"{wan_p}.bias", f"{dif_p}.bias", "same", (d_out,))]


def _norm(jax_p, wan_p, dif_p, d, bias=False):
    out = [Entry(f"{jax_p}.scale", f"{wan_p}.weight", f"{dif_p}.weight", "same", (d,))]
    if bias:
        out.append(Entry(f"{jax_p}.bias", f"{wan_p}.bias", f"{dif_p}.bias", "same", (d,)))
    return out


def block_entries(cfg: DiTConfig, jp: str, wp: str, dp: str) -> list[Entry]:
    d = cfg.dim
    e = [Entry(f"{jp}.modulation", f"{wp}.modulation", f"{dp}.scale_shift_table", "mod", (1, 6, d))]
    for ours, wan, dif in (("q", "q", "to_q"), ("k", "k", "to_k"), ("v", "v", "to_v"), ("o", "o", "to_out.0")):
        e += _linear(f"{jp}.self_attn.{ours}", f"{wp}.self_attn.{wan}", f"{dp}.attn1.{dif}", d, d)
        e += _linear(f"{jp}.cross_attn.{ours}", f"{wp}.cross_attn.{wan}", f"{dp}.attn2.{dif}", d, d)
    if cfg.qk_norm:
        for attn, dif in (("self_attn", "attn1"), ("cross_attn", "attn2")):
            e += _norm(f"{jp}.{attn}.norm_q", f"{wp}.{attn}.norm_q", f"{dp}.{dif}.norm_q", d)
            e += _norm(f"{jp}.{attn}.norm_k", f"{wp}.{attn}.norm_k", f"{dp}.{dif}.norm_k", d)
    if cfg.image_dim is not None:
        e += _linear(f"{jp}.cross_attn.k_img", f"{wp}.cross_attn.k_img", f"{dp}.attn2.add_k_proj", d, d)
        e += _linear(f"{jp}.cross_attn.v_img", f"{wp}.cross_attn.v_img", f"{dp}.attn2.add_v_proj", d, d)
        if cfg.qk_norm:
            e += _norm(f"{jp}.cross_attn.norm_k_img", f"{wp}.cross_attn.norm_k_img", f"{dp}.attn2.norm_added_k", d)
    if cfg.cross_attn_norm:  # the affine norm before cross-attention: norm3 in Wan, norm2 in diffusers
        e += _norm(f"{jp}.norm3", f"{wp}.norm3", f"{dp}.norm2", d, bias=True)
    e += _linear(f"{jp}.ffn.fc1", f"{wp}.ffn.0", f"{dp}.ffn.net.0.proj", d, cfg.ffn_dim)
    e += _linear(f"{jp}.ffn.fc2", f"{wp}.ffn.2", f"{dp}.ffn.net.2", cfg.ffn_dim, d)
    return e


def entries(cfg: DiTConfig) -> list[Entry]:
    """Every tensor of a DiT with ``cfg``, in a stable order."""
    d = cfg.dim
    pe = (d, cfg.in_channels, *cfg.patch_size)
    e = [Entry("patch_embedding.kernel", "patch_embedding.weight", "patch_embedding.weight", "conv", pe),
         Entry("patch_embedding.bias", "patch_embedding.bias", "patch_embedding.bias", "same", (d,))]
    ce = "condition_embedder"
    e += _linear("text_embedding.fc1", "text_embedding.0", f"{ce}.text_embedder.linear_1", cfg.text_dim, d)
    e += _linear("text_embedding.fc2", "text_embedding.2", f"{ce}.text_embedder.linear_2", d, d)
    e += _linear("time_embedding.fc1", "time_embedding.0", f"{ce}.time_embedder.linear_1", cfg.freq_dim, d)
    e += _linear("time_embedding.fc2", "time_embedding.2", f"{ce}.time_embedder.linear_2", d, d)
    e += _linear("time_projection", "time_projection.1", f"{ce}.time_proj", d, 6 * d)
    if cfg.image_dim is not None:
        i = cfg.image_dim
        ie = f"{ce}.image_embedder"
        e += _norm("img_emb.norm1", "img_emb.proj.0", f"{ie}.norm1", i, bias=True)
        e += _linear("img_emb.fc1", "img_emb.proj.1", f"{ie}.ff.net.0.proj", i, i)
        e += _linear("img_emb.fc2", "img_emb.proj.3", f"{ie}.ff.net.2", i, d)
        e += _norm("img_emb.norm2", "img_emb.proj.4", f"{ie}.norm2", d, bias=True)
    for n in range(cfg.num_layers):
        e += block_entries(cfg, f"blocks.{n}", f"blocks.{n}", f"blocks.{n}")
    e += [Entry("head.modulation", "head.modulation", "scale_shift_table", "mod", (1, 2, d))]
    e += _linear("head.proj", "head.head", "proj_out", d, cfg.out_channels * cfg.patch_features)
    # Yume extras: same names on both torch sides
    for tier in cfg.history_tiers:
        k = HISTORY_KERNEL[tier]
        c_out = cfg.in_channels if tier == "2x_f" else d
        e += [Entry(f"history_embedding.x{tier}.kernel", f"patch_embedding_{tier}.weight",
                    f"patch_embedding_{tier}.weight", "conv", (c_out, cfg.in_channels, 1, k, k)),
              Entry(f"history_embedding.x{tier}.bias", f"patch_embedding_{tier}.bias",
                    f"patch_embedding_{tier}.bias", "same", (c_out,))]
    if cfg.sideblock:
        e += block_entries(cfg, "sideblock", "sideblock", "sideblock")
    if cfg.mask_token:
        e += [Entry("mask_token", "mask_token", "mask_token", "same", (1, 1, d))]
    return e


# ----------------------------------------------------------------------------------------------


def _hf_int(hf: dict | None, *names):
    for n in names:
        if hf and n in hf and hf[n] is not None:
            return hf[n]
    return None


def infer_config(src: TensorSource, naming: str, num_heads: int | None = None) -> DiTConfig:
    """Architecture from tensor shapes (+ config.json when present). Heads: option > config.json > dim/128."""
    s = src.shapes()
    w = naming == "wan"

    def shape(wan_key, dif_key):
        k = wan_key if w else dif_key
        if k not in s:
            raise ConversionError("missing key (needed to infer the config)", file=src.path, key=k)
        return s[k]

    pe = shape("patch_embedding.weight", "patch_embedding.weight")
    if len(pe) != 5:
        raise ConversionError(f"patch_embedding.weight has shape {list(pe)}, expected 5-d", file=src.path)
    dim, c_in, patch = pe[0], pe[1], tuple(pe[2:])
    layers = sorted({int(m.group(1)) for k in s if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not layers:
        raise ConversionError("no transformer blocks (blocks.N.*) found", file=src.path)
    if layers != list(range(len(layers))):
        missing = sorted(set(range(layers[-1] + 1)) - set(layers))
        raise ConversionError(f"blocks are not contiguous (missing block {missing[0]})", file=src.path,
                              key=f"blocks.{missing[0]}")
    ffn = shape("blocks.0.ffn.0.weight", "blocks.0.ffn.net.0.proj.weight")[0]
    text_dim = shape("text_embedding.0.weight", "condition_embedder.text_embedder.linear_1.weight")[1]
    freq_dim = shape("time_embedding.0.weight", "condition_embedder.time_embedder.linear_1.weight")[1]
    head = shape("head.head.weight", "proj_out.weight")[0]
    pf = int(np.prod(patch))
    if head % pf:
        raise ConversionError(f"head output {head} is not a multiple of the patch volume {pf}", file=src.path)
    img_key = "img_emb.proj.0.weight" if w else "condition_embedder.image_embedder.norm1.weight"
    image_dim = s[img_key][0] if img_key in s else None
    hf = src.hf_config
    heads = num_heads or _hf_int(hf, "num_attention_heads", "num_heads") or max(dim // 128, 1)
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise ConversionError(f"attention heads must be a positive integer, got {heads!r}", file=src.path)
    if dim % heads:
        raise ConversionError(f"dim {dim} is not divisible by {heads} heads (pass --num-heads)", file=src.path)
    eps = _hf_int(hf, "eps") or 1e-6
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ConversionError(f"config.json: eps must be a number in (0, 1), got {eps!r}", file=src.path)
    eps = float(eps)
    tiers = tuple(t for t in HISTORY_TIERS if f"patch_embedding_{t}.weight" in s)
    return DiTConfig(
        dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=len(layers), in_channels=c_in, out_channels=head // pf,
        text_dim=text_dim, freq_dim=freq_dim, patch_size=patch, eps=eps, image_dim=image_dim,
        cross_attn_norm=("blocks.0.norm3.weight" if w else "blocks.0.norm2.weight") in s,
        qk_norm=("blocks.0.self_attn.norm_q.weight" if w else "blocks.0.attn1.norm_q.weight") in s,
        history_tiers=tiers, sideblock=any(k.startswith("sideblock.") for k in s), mask_token="mask_token" in s)


def diffusers_config(cfg: DiTConfig) -> dict:
    return {
        "_class_name": "WanTransformer3DModel", "patch_size": list(cfg.patch_size),
        "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim,
        "num_layers": cfg.num_layers, "cross_attn_norm": cfg.cross_attn_norm,
        "qk_norm": "rms_norm_across_heads" if cfg.qk_norm else None, "eps": cfg.eps, "image_dim": cfg.image_dim,
        "added_kv_proj_dim": cfg.dim if cfg.image_dim is not None else None, "rope_max_seq_len": 1024,
    }


def wan_config(cfg: DiTConfig) -> dict:
    kind = "i2v" if cfg.image_dim is not None else ("ti2v" if cfg.in_channels == 48 else "t2v")
    return {"_class_name": "WanModel", "model_type": kind, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
            "freq_dim": cfg.freq_dim, "in_dim": cfg.in_channels, "out_dim": cfg.out_channels,
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "text_dim": cfg.text_dim, "text_len": 512,
            "patch_size": list(cfg.patch_size), "eps": cfg.eps, "cross_attn_norm": cfg.cross_attn_norm,
            "qk_norm": cfg.qk_norm}


IGNORED_DIFFUSERS = re.compile(r"blocks\.\d+\.attn2\.norm_added_q\.weight$")  # diffusers ignores it too

EXTRA_PREFIXES = ("history_embedding.", "sideblock.", "mask_token")


class DiTFamily(Family):
    name = "dit"
    namings = ("wan", "diffusers")

    def detect(self, src: TensorSource) -> str | None:
        keys = set(src.keys())
        if "patch_embedding.weight" not in keys:
            return None
        if "blocks.0.self_attn.q.weight" in keys:
            return "wan"
        if "blocks.0.attn1.to_q.weight" in keys:
            return "diffusers"
        return None

    def plan_to_jax(self, src: TensorSource, naming: str, options: dict) -> Plan:
        if naming not in self.namings:
            raise ConversionError(f"naming {naming!r} not known for the DiT; use one of {self.namings}")
        cfg = infer_config(src, naming, options.get("num_heads"))
        ops = [Op(e.jax, (e.name(naming),), _jax_shape(e.kind, e.torch_shape), _to_jax(e.kind), (e.torch_shape,))
               for e in entries(cfg)]
        ignore = {k for k in src.keys() if IGNORED_DIFFUSERS.search(k)} if naming == "diffusers" else set()
        extras = [op.out for op in ops if op.out.startswith(EXTRA_PREFIXES)]
        return Plan(ops, cfg.to_dict(), extras=extras, ignore=ignore)

    def plan_to_torch(self, src: TensorSource, naming: str, options: dict) -> Plan:
        cfg = DiTConfig.from_dict(src.meta["config"])
        ops = [Op(e.name(naming), (e.jax,), e.torch_shape, _to_torch(e.kind), (_jax_shape(e.kind, e.torch_shape),))
               for e in entries(cfg)]
        hf = diffusers_config(cfg) if naming == "diffusers" else wan_config(cfg)
        return Plan(ops, cfg.to_dict(), hf_config=hf, filename="diffusion_pytorch_model.safetensors")
