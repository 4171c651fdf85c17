"""Typed configs of the conditioning encoders (spec/wan.md "Text encoder", "Image encoder").

``UMT5Config`` and ``CLIPVisionConfig`` are architectures: what a converted checkpoint records in
``yume_jax.json``. Named presets (``umt5-xxl``, ``clip-vit-h-14``, ``tiny-*``): :mod:`yume_jax.presets`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

TOKENIZERS = ("umt5", "byt5", "none")  # umt5: files from a local directory; byt5: needs no files; none: ids only
ACTIVATIONS = ("gelu", "quick_gelu")
BYT5_VOCAB = 384  # 3 specials + 256 bytes + 125 sentinels


class _Config:
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        from yume_jax.configlib import from_dict

        return from_dict(cls, d, cls.__name__)

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class UMT5Config(_Config):
    """umT5 encoder: gated-GELU(tanh) FFN, a relative position bias table in EVERY layer, no 1/sqrt(d)
    attention scaling, RMS norms (eps 1e-6) and a final norm."""

    vocab_size: int = 256384
    dim: int = 4096
    ffn_dim: int = 10240
    num_heads: int = 64
    head_dim: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    tokenizer: str = "umt5"

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {TOKENIZERS}, not {self.tokenizer!r}")
        if self.tokenizer == "byt5" and self.vocab_size < BYT5_VOCAB:
            raise ValueError(f"the byt5 tokenizer needs vocab_size >= {BYT5_VOCAB}, got {self.vocab_size}")
        if self.num_buckets < 4 or self.num_buckets % 2:
            raise ValueError(f"num_buckets must be even and >= 4, got {self.num_buckets}")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.head_dim


@dataclass(frozen=True)
class CLIPVisionConfig(_Config):
    """open-clip ViT visual tower: pre-norm right after the embeddings, pre-LN blocks, LayerNorm eps 1e-5.
    Wan uses the output of the first ``num_layers - 1`` blocks, without the post-norm."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    mlp_dim: int = 5120
    num_heads: int = 16
    num_layers: int = 32
    eps: float = 1e-5
    activation: str = "gelu"
    proj_dim: int | None = 1024  # open-clip's `head` (transformers' visual_projection); not used by Wan

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {self.activation!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_layers < 2:
            raise ValueError("num_layers must be >= 2 (Wan uses the output of the second-to-last block)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1
