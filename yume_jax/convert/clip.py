"""Key names of the CLIP ViT visual tower: Wan's ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``
<-> transformers ``CLIPVisionModel`` / ``CLIPVisionModelWithProjection`` <-> yume_jax
(spec/wan.md "Image encoder").

| yume_jax | Wan (open-clip, under ``visual.``) | transformers (under ``vision_model.``) |
| --- | --- | --- |
| patch_embedding.kernel [p,p,3,W] | patch_embedding.weight [W,3,p,p] | embeddings.patch_embedding.weight |
| cls_embedding [W] | cls_embedding [1,1,W] | embeddings.class_embedding [W] |
| pos_embedding [N,W] | pos_embedding [1,N,W] | embeddings.position_embedding.weight [N,W] |
| pre_norm | pre_norm | pre_layrnorm |
| blocks.i.norm1 / norm2 | transformer.i.norm1 / norm2 | encoder.layers.i.layer_norm1 / layer_norm2 |
| blocks.i.attn.{q,k,v} | transformer.i.attn.to_qkv (fused, rows q, k, v) | encoder.layers.i.self_attn.{q,k,v}_proj |
| blocks.i.attn.o | transformer.i.attn.proj | encoder.layers.i.self_attn.out_proj |
| blocks.i.mlp.fc1 / fc2 | transformer.i.mlp.0 / mlp.2 | encoder.layers.i.mlp.fc1 / fc2 |
| post_norm | post_norm | post_layernorm |
| head.kernel [W,P] | head [W,P] | visual_projection.weight [P,W] (top level, WithProjection only) |

Linear weights are transposed, norms map weight -> scale. transformers checkpoints come with or
without the ``vision_model.`` prefix (transformers 5 saves CLIPVisionModel without it); exports
write it. Wan's file also holds the XLM-RoBERTa text tower (``textual.*``) and ``log_scale``: they
are carried as ``extras`` (not loaded) so that Wan -> yume_jax -> Wan is bit-exact. Heads cannot be
read from shapes: config.json, else ``--num-heads``, else open-clip's rule (width/64 up to width 1024,
16 above: ViT-H/14 has 16).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from yume_jax.convert.core import Family, Op, Plan, identity, transpose
from yume_jax.core.tensors import FLOAT_DTYPES, ConversionError, TensorSource
from yume_jax.encoders.config import ACTIVATIONS, CLIPVisionConfig

HF = "vision_model."


@dataclass(frozen=True)
class Row:
    """One torch tensor <-> one or more yume_jax tensors."""

    torch: str
    torch_shape: tuple[int, ...]
    jax: tuple[str, ...]
    jax_shapes: tuple[tuple[int, ...], ...]
    to_jax: tuple[Callable, ...]  # one per jax tensor, each from [torch array]
    to_torch: Callable  # from [jax arrays]


def _plain(t, j, shape):
    return Row(t, shape, (j,), (shape,), (identity,), identity)


def _linear(t, j, d_in, d_out, bias=True):
    rows = [Row(f"{t}.weight", (d_out, d_in), (f"{j}.kernel",), ((d_in, d_out),), (transpose,), transpose)]
    return rows + ([_plain(f"{t}.bias", f"{j}.bias", (d_out,))] if bias else [])


def _norm(t, j, d):
    return [_plain(f"{t}.weight", f"{j}.scale", (d,)), _plain(f"{t}.bias", f"{j}.bias", (d,))]


def _conv(t, j, w, p):
    return Row(t, (w, 3, p, p), (j,), ((p, p, 3, w),), (lambda xs: np.ascontiguousarray(xs[0].transpose(2, 3, 1, 0)),),
               lambda xs: np.ascontiguousarray(xs[0].transpose(3, 2, 0, 1)))


def _reshaped(t, j, torch_shape, jax_shape):
    return Row(t, torch_shape, (j,), (jax_shape,), (lambda xs: xs[0].reshape(jax_shape),),
               lambda xs: xs[0].reshape(torch_shape))


def _fused_qkv(t, j, w):
    """Wan's to_qkv [3W, W] (+ bias [3W]) <-> q, k, v kernels [W, W] (+ biases [W])."""
    part = lambda n: (lambda xs: np.ascontiguousarray(xs[0][n * w:(n + 1) * w].T))  # noqa: E731
    bpart = lambda n: (lambda xs: xs[0][n * w:(n + 1) * w].copy())  # noqa: E731
    return [
        Row(f"{t}.weight", (3 * w, w), tuple(f"{j}.{n}.kernel" for n in "qkv"), ((w, w),) * 3,
            tuple(part(n) for n in range(3)), lambda xs: np.concatenate([x.T for x in xs], axis=0)),
        Row(f"{t}.bias", (3 * w,), tuple(f"{j}.{n}.bias" for n in "qkv"), ((w,),) * 3,
            tuple(bpart(n) for n in range(3)), lambda xs: np.concatenate(xs, axis=0)),
    ]


def rows(cfg: CLIPVisionConfig, naming: str, prefix: str = HF) -> list[Row]:
    w, m, p, n = cfg.dim, cfg.mlp_dim, cfg.patch_size, cfg.num_tokens
    out: list[Row] = []
    if naming == "wan":
        v = "visual."
        out += [_conv(f"{v}patch_embedding.weight", "patch_embedding.kernel", w, p),
                _reshaped(f"{v}cls_embedding", "cls_embedding", (1, 1, w), (w,)),
                _reshaped(f"{v}pos_embedding", "pos_embedding", (1, n, w), (n, w))]
        out += _norm(f"{v}pre_norm", "pre_norm", w)
        for i in range(cfg.num_layers):
            t, j = f"{v}transformer.{i}", f"blocks.{i}"
            out += _norm(f"{t}.norm1", f"{j}.norm1", w) + _fused_qkv(f"{t}.attn.to_qkv", f"{j}.attn", w)
            out += _linear(f"{t}.attn.proj", f"{j}.attn.o", w, w) + _norm(f"{t}.norm2", f"{j}.norm2", w)
            out += _linear(f"{t}.mlp.0", f"{j}.mlp.fc1", w, m) + _linear(f"{t}.mlp.2", f"{j}.mlp.fc2", m, w)
        out += _norm(f"{v}post_norm", "post_norm", w)
        if cfg.proj_dim:
            out.append(_plain(f"{v}head", "head.kernel", (w, cfg.proj_dim)))
        return out
    e = f"{prefix}embeddings."
    out += [_conv(f"{e}patch_embedding.weight", "patch_embedding.kernel", w, p),
            _plain(f"{e}class_embedding", "cls_embedding", (w,)),
            _plain(f"{e}position_embedding.weight", "pos_embedding", (n, w))]
    out += _norm(f"{prefix}pre_layrnorm", "pre_norm", w)
    for i in range(cfg.num_layers):
        t, j = f"{prefix}encoder.layers.{i}", f"blocks.{i}"
        out += _norm(f"{t}.layer_norm1", f"{j}.norm1", w)
        for ours, theirs in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "out_proj")):
            out += _linear(f"{t}.self_attn.{theirs}", f"{j}.attn.{ours}", w, w)
        out += _norm(f"{t}.layer_norm2", f"{j}.norm2", w)
        out += _linear(f"{t}.mlp.fc1", f"{j}.mlp.fc1", w, m) + _linear(f"{t}.mlp.fc2", f"{j}.mlp.fc2", m, w)
    out += _norm(f"{prefix}post_layernorm", "post_norm", w)
    if cfg.proj_dim:
        out += _linear("visual_projection", "head", w, cfg.proj_dim, bias=False)
    return out


def _hf_prefix(keys) -> str | None:
    for pre in (HF, ""):
        if f"{pre}embeddings.patch_embedding.weight" in keys and f"{pre}pre_layrnorm.weight" in keys:
            return pre
    return None


def default_heads(width: int) -> int:
    return max(width // 64, 1) if width <= 1024 else 16


def infer_config(src: TensorSource, naming: str, options: dict) -> CLIPVisionConfig:
    s = src.shapes()
    w_ = naming == "wan"
    pre = "visual." if w_ else _hf_prefix(s)
    if pre is None:
        raise ConversionError("no CLIP vision embeddings found", file=src.path)

    def shape(k):
        if k not in s:
            raise ConversionError("missing key (needed to infer the config)", file=src.path, key=k)
        return s[k]

    if w_:
        pe, pos = shape(f"{pre}patch_embedding.weight"), shape(f"{pre}pos_embedding")[-2]
        pat, fc1 = r"visual\.transformer\.(\d+)\.norm1\.weight$", f"{pre}transformer.0.mlp.0.weight"
        proj = s[f"{pre}head"][1] if f"{pre}head" in s else None
    else:
        pe = shape(f"{pre}embeddings.patch_embedding.weight")
        pos = shape(f"{pre}embeddings.position_embedding.weight")[0]
        pat = rf"{re.escape(pre)}encoder\.layers\.(\d+)\.layer_norm1\.weight$"
        fc1 = f"{pre}encoder.layers.0.mlp.fc1.weight"
        proj = s["visual_projection.weight"][0] if "visual_projection.weight" in s else None
    if len(pe) != 4 or pe[1] != 3 or pe[2] != pe[3]:
        raise ConversionError(f"patch embedding has shape {list(pe)}, expected [W, 3, p, p]", file=src.path)
    width, patch = pe[0], pe[2]
    side = int(round((pos - 1) ** 0.5))
    if side * side != pos - 1:
        raise ConversionError(f"{pos} position embeddings is not 1 + a square number of patches", file=src.path)
    layers = sorted(int(mm.group(1)) for k in s if (mm := re.match(pat, k)))
    if not layers or layers != list(range(len(layers))):
        raise ConversionError(f"transformer blocks missing or not contiguous ({layers[:4]})", file=src.path)
    hf = src.hf_config or {}
    hf = hf.get("vision_config", hf)
    heads = options.get("num_heads") or hf.get("num_attention_heads") or default_heads(width)
    act = hf.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ConversionError(f"unsupported hidden_act {act!r} (supported: {ACTIVATIONS})", file=src.path)
    try:
        return CLIPVisionConfig(image_size=side * patch, patch_size=patch, dim=width, mlp_dim=shape(fc1)[0],
                                num_heads=heads, num_layers=len(layers), eps=float(hf.get("layer_norm_eps", 1e-5)),
                                activation=act, proj_dim=proj)
    except ValueError as e:
        raise ConversionError(f"{e} (pass --num-heads?)", file=src.path) from None


def hf_config(cfg: CLIPVisionConfig) -> dict:
    arch = "CLIPVisionModelWithProjection" if cfg.proj_dim else "CLIPVisionModel"
    d = {"architectures": [arch], "model_type": "clip_vision_model", "hidden_size": cfg.dim,
         "intermediate_size": cfg.mlp_dim, "num_attention_heads": cfg.num_heads, "num_hidden_layers": cfg.num_layers,
         "image_size": cfg.image_size, "patch_size": cfg.patch_size, "num_channels": 3, "hidden_act": cfg.activation,
         "layer_norm_eps": cfg.eps}
    if cfg.proj_dim:
        d["projection_dim"] = cfg.proj_dim
    return d


class CLIPFamily(Family):
    name = "clip"
    namings = ("wan", "transformers")

    def detect(self, src: TensorSource) -> str | None:
        keys = set(src.keys())
        if "visual.patch_embedding.weight" in keys and "visual.transformer.0.attn.to_qkv.weight" in keys:
            return "wan"
        if _hf_prefix(keys) is not None:
            return "transformers"
        return None

    def plan_to_jax(self, src: TensorSource, naming: str, options: dict) -> Plan:
        if naming not in self.namings:
            raise ConversionError(f"naming {naming!r} not known for CLIP; use one of {self.namings}")
        cfg = infer_config(src, naming, options)
        keys = src.keys()
        prefix = _hf_prefix(set(keys)) if naming == "transformers" else HF
        ops = [Op(j, (r.torch,), js, f, (r.torch_shape,))
               for r in rows(cfg, naming, prefix) for j, js, f in zip(r.jax, r.jax_shapes, r.to_jax)]
        extras, ignore = [], set()
        if naming == "wan":  # the text tower and logit scale of Wan's full CLIP file
            others = [k for k in keys if not k.startswith("visual.")]
            # dropped: non-float buffers (the converter reads float tensors only)
            ignore = {k for k in others if src.info(k).dtype.name not in FLOAT_DTYPES}
            extras = [k for k in others if k not in ignore]
            ops += [Op(k, (k,), src.info(k).shape) for k in extras]
        else:  # a non-persistent buffer older transformers versions saved; transformers ignores it too
            ignore = {k for k in keys if k == f"{prefix}embeddings.position_ids"}
        return Plan(ops, cfg.to_dict(), extras=extras, ignore=ignore)

    def plan_to_torch(self, src: TensorSource, naming: str, options: dict) -> Plan:
        cfg = CLIPVisionConfig.from_dict(src.meta["config"])
        ops = [Op(r.torch, r.jax, r.torch_shape, r.to_torch, r.jax_shapes) for r in rows(cfg, naming)]
        extras = list(src.meta.get("extras", []))
        ignore = set()
        if naming == "wan":
            ops += [Op(k, (k,), src.info(k).shape) for k in extras]
        else:  # transformers' vision model has no text tower
            ignore = set(extras)
        return Plan(ops, cfg.to_dict(), hf_config=hf_config(cfg) if naming == "transformers" else None,
                    filename="model.safetensors", ignore=ignore)
