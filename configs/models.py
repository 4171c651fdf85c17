"""Named DiT presets (spec/wan.md "DiT configurations"; Yume extras from spec/yume.md).

``get("wan2.1-i2v-14b")`` returns a :class:`yume_jax.models.config.DiTConfig`; ``get(name, key=value)``
overrides fields (``num_layers=4`` for a reduced-depth benchmark).
"""
from __future__ import annotations

from yume_jax.models.config import DiTConfig

YUME_TIERS = ("2x", "4x", "8x", "16x", "2x_f")

PRESETS: dict[str, DiTConfig] = {
    "wan2.1-t2v-1.3b": DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_channels=16, out_channels=16),
    "wan2.1-t2v-14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_channels=16, out_channels=16),
    "wan2.1-i2v-14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_channels=36, out_channels=16,
                                image_dim=1280),
    "wan2.2-ti2v-5b": DiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_channels=48, out_channels=48),
    # Yume: the bases above plus history embeddings (and training extras)
    "yume-i2v-14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_channels=36, out_channels=16,
                              image_dim=1280, history_tiers=YUME_TIERS, sideblock=True, mask_token=True),
    "yume-5b": DiTConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_channels=48, out_channels=48,
                         history_tiers=YUME_TIERS, sideblock=True, mask_token=True),
    # tiny ones for tests and CPU demos (head_dim 16 keeps RoPE's three axes non-trivial)
    "tiny-t2v": DiTConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2, in_channels=16, out_channels=16, text_dim=32,
                          freq_dim=32),
    "tiny-i2v": DiTConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2, in_channels=36, out_channels=16, text_dim=32,
                          freq_dim=32, image_dim=48),
    "tiny-ti2v": DiTConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=2, in_channels=48, out_channels=48, text_dim=32,
                           freq_dim=32),
    "tiny-yume": DiTConfig(dim=64, ffn_dim=96, num_heads=4, num_layers=4, in_channels=36, out_channels=16, text_dim=32,
                           freq_dim=32, image_dim=48, history_tiers=YUME_TIERS, sideblock=True, mask_token=True),
}


def get(name: str, **overrides) -> DiTConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    cfg = PRESETS[name]
    return cfg.replace(**overrides) if overrides else cfg
