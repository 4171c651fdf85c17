"""Tiny random diffusers Wan models and an independent diffusers -> original-Wan key renamer (from
spec/wan.md's table), shared by the DiT tests."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from yume_jax.core.tensors import save_safetensors

TINY = dict(num_attention_heads=4, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=96, num_layers=2,
            patch_size=(1, 2, 2), cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)
KINDS = {
    "t2v": dict(in_channels=16, out_channels=16),
    "i2v": dict(in_channels=36, out_channels=16, image_dim=48, added_kv_proj_dim=64),
    "ti2v": dict(in_channels=48, out_channels=48),
}


def tiny_diffusers(kind: str, seed: int = 0, **over):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    m = WanTransformer3DModel(**{**TINY, **KINDS[kind], **over}).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # every parameter random, so a swapped or dropped tensor cannot hide
        for name, p in m.named_parameters():
            scale = 0.5 if p.ndim == 1 else (1.0 / max(p.shape[-1], 1)) ** 0.5
            base = 1.0 if ("norm" in name and name.endswith("weight")) else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))
    return m


def to_numpy(sd: dict) -> dict[str, np.ndarray]:
    import ml_dtypes

    out = {}
    for k, v in sd.items():
        v = v.detach().contiguous()
        out[k] = v.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if v.dtype == torch.bfloat16 else v.numpy()
    return out


_D2W = [  # diffusers -> original Wan (spec/wan.md "State-dict names"), block-local first
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.to_q\.", ".self_attn.q."), (r"\.attn1\.to_k\.", ".self_attn.k."),
    (r"\.attn1\.to_v\.", ".self_attn.v."), (r"\.attn1\.to_out\.0\.", ".self_attn.o."),
    (r"\.attn1\.norm_q\.", ".self_attn.norm_q."), (r"\.attn1\.norm_k\.", ".self_attn.norm_k."),
    (r"\.attn2\.to_q\.", ".cross_attn.q."), (r"\.attn2\.to_k\.", ".cross_attn.k."),
    (r"\.attn2\.to_v\.", ".cross_attn.v."), (r"\.attn2\.to_out\.0\.", ".cross_attn.o."),
    (r"\.attn2\.norm_q\.", ".cross_attn.norm_q."), (r"\.attn2\.norm_k\.", ".cross_attn.norm_k."),
    (r"\.attn2\.add_k_proj\.", ".cross_attn.k_img."), (r"\.attn2\.add_v_proj\.", ".cross_attn.v_img."),
    (r"\.attn2\.norm_added_k\.", ".cross_attn.norm_k_img."),
    (r"\.norm2\.", ".norm3."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."), (r"\.ffn\.net\.2\.", ".ffn.2."),
]


def diffusers_to_wan_name(k: str) -> str:
    for pat, rep in _D2W:
        k = re.sub(pat, rep, k)
    return k


def wan_to_diffusers_sd(sd_wan: dict) -> dict:
    inverse = {diffusers_to_wan_name(k): k for k in _ALL_DIFFUSERS_KEYS}
    return {inverse[k]: v for k, v in sd_wan.items()}


_ALL_DIFFUSERS_KEYS: list[str] = []


def save_diffusers_dir(model, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


def save_wan_file(model, path: Path) -> Path:
    """The model's weights under original Wan names, one .safetensors, no config (like Yume's release)."""
    sd = to_numpy(model.state_dict())
    _ALL_DIFFUSERS_KEYS[:] = list(sd)
    save_safetensors(path, {diffusers_to_wan_name(k): v for k, v in sd.items()})
    return path


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def load_json(p: Path) -> dict:
    return json.loads(Path(p).read_text())
