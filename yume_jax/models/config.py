"""Typed configuration of the Wan DiT (spec/wan.md "DiT configurations") and its run-time policy.

``DiTConfig`` is the architecture: it is what a checkpoint records. ``Runtime`` is how to run it
(compute dtype, attention backend, remat): chosen at load time, never stored in a checkpoint.
Named presets live in :mod:`yume_jax.presets`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DiTConfig:
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    image_dim: int | None = None  # 1280 for Wan2.1 I2V (CLIP tokens + second cross-attention)
    cross_attn_norm: bool = True
    qk_norm: bool = True
    rope_theta: float = 10000.0
    # Yume additions (spec/yume.md "Models and checkpoints"); absent in a plain Wan checkpoint.
    history_tiers: tuple[str, ...] = ()  # e.g. ("2x", "4x", "8x", "16x", "2x_f")
    sideblock: bool = False
    mask_token: bool = False

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        object.__setattr__(self, "history_tiers", tuple(self.history_tiers))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_features(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["history_tiers"] = list(self.history_tiers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DiTConfig":
        from yume_jax.configlib import from_dict

        return from_dict(cls, d, "DiT config")

    def replace(self, **kw) -> "DiTConfig":
        return dataclasses.replace(self, **kw)


ATTENTION_BACKENDS = ("auto", "xla", "cudnn", "splash", "reference")
SEQ_PARALLEL = ("auto", "ulysses", "gather")  # yume_jax/models/attention.py: sequence-parallel strategies
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclass(frozen=True)
class Runtime:
    """How to run a model. ``dtype`` is the compute dtype of matmuls and attention; norms, modulation,
    RoPE, the time embedding, the head and the residual stream stay float32 (the original Wan rule)."""

    dtype: str = "float32"
    attention: str = "auto"  # auto: cudnn on GPU, splash on TPU, xla elsewhere
    # self-attention over a mesh's context axis: auto (Ulysses all-to-all head split where the heads divide,
    # else the K/V all-gather), ulysses, gather (yume_jax/models/attention.py)
    seq_parallel: str = "auto"
    remat: str = "none"
    scan_layers: bool = True
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, not {self.dtype!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {ATTENTION_BACKENDS}, not {self.attention!r}")
        if self.seq_parallel not in SEQ_PARALLEL:
            raise ValueError(f"seq_parallel must be one of {SEQ_PARALLEL}, not {self.seq_parallel!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {REMAT_POLICIES}, not {self.remat!r}")
