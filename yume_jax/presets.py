"""Every named model configuration in one place: DiT (spec/wan.md "DiT configurations", Yume extras from
spec/yume.md), VAE (spec/wan.md "VAE") and encoders (spec/wan.md "Text encoder", "Image encoder").

``dit("wan2.1-i2v-14b")``, ``vae("wan2.2")``, ``encoder("umt5-xxl")`` return typed configs;
keyword arguments override fields (``dit("wan2.1-t2v-14b", num_layers=4)`` for a reduced-depth
benchmark). The ``tiny-*`` presets are for tests and CPU demos. ``names(kind)`` lists a kind's presets.
"""
from __future__ import annotations

from yume_jax.encoders.config import BYT5_VOCAB, CLIPVisionConfig, UMT5Config
from yume_jax.models.config import DiTConfig
from yume_jax.vae.config import WAN22_MEAN, WAN22_STD, VAEConfig

YUME_TIERS = ("2x", "4x", "8x", "16x", "2x_f")

DIT: dict[str, DiTConfig] = {
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
    # the embedded default world model of the sandbox (docs/default_model.md): Yume I2V layout, small
    # (history tiers up to 4x: its pipeline.json caps the history at 22 latent frames, the longest that needs
    # no 8x tier, spec/yume.md "History memory"; the 8x and 16x kernels would be 3/4 of the parameters)
    "sandbox-yume": DiTConfig(dim=192, ffn_dim=576, num_heads=3, num_layers=8, in_channels=36, out_channels=16,
                              text_dim=64, freq_dim=128, image_dim=64, history_tiers=("2x", "4x"), sideblock=True,
                              mask_token=True),
}

VAE: dict[str, VAEConfig] = {
    # Wan2.1_VAE.pth: z 16, 96 x [1, 2, 4, 4], stride t4 x s8
    "wan2.1": VAEConfig(),
    # Wan2.2_VAE.pth: z 48, encoder 160 / decoder 256 channels, residual blocks, 2x2 patchify, stride t4 x s16
    "wan2.2": VAEConfig(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12,
                        out_channels=12, patch_size=2, latents_mean=WAN22_MEAN, latents_std=WAN22_STD,
                        scale_factor_spatial=16),
    # tiny versions with the real strides (tests, CPU demos)
    "tiny-2.1": VAEConfig(base_dim=8),
    # the embedded default's VAE: Wan 2.1 architecture at a small width, trained on sandbox frames
    "sandbox-2.1": VAEConfig(base_dim=16),
    "tiny-2.2": VAEConfig(base_dim=8, decoder_base_dim=12, z_dim=48, is_residual=True, in_channels=12,
                          out_channels=12, patch_size=2, latents_mean=WAN22_MEAN, latents_std=WAN22_STD,
                          scale_factor_spatial=16),
}

ENCODERS: dict[str, UMT5Config | CLIPVisionConfig] = {
    "umt5-xxl": UMT5Config(),
    "tiny-umt5": UMT5Config(vocab_size=BYT5_VOCAB, dim=32, ffn_dim=48, num_heads=4, head_dim=8, num_layers=2,
                            tokenizer="byt5"),
    # the embedded default's encoders: frozen random weights (the DiT learns to read them; ByT5 bytes)
    "sandbox-umt5": UMT5Config(vocab_size=BYT5_VOCAB, dim=64, ffn_dim=128, num_heads=4, head_dim=16, num_layers=2,
                               tokenizer="byt5"),
    "sandbox-clip": CLIPVisionConfig(image_size=56, patch_size=14, dim=64, mlp_dim=128, num_heads=4, num_layers=2,
                                     proj_dim=64),
    "clip-vit-h-14": CLIPVisionConfig(),
    "tiny-clip": CLIPVisionConfig(image_size=42, patch_size=14, dim=32, mlp_dim=64, num_heads=4, num_layers=3,
                                  proj_dim=16),
}

_KINDS = {"dit": (DIT, "model"), "vae": (VAE, "VAE"), "encoder": (ENCODERS, "encoder")}


def _get(kind: str, name: str, overrides: dict):
    table, what = _KINDS[kind]
    if name not in table:
        raise KeyError(f"unknown {what} preset {name!r}; known: {sorted(table)}")
    cfg = table[name]
    return cfg.replace(**overrides) if overrides else cfg


def dit(name: str, **overrides) -> DiTConfig:
    return _get("dit", name, overrides)


def vae(name: str, **overrides) -> VAEConfig:
    return _get("vae", name, overrides)


def encoder(name: str, **overrides) -> UMT5Config | CLIPVisionConfig:
    return _get("encoder", name, overrides)


def names(kind: str) -> list[str]:
    """The preset names of ``kind`` ("dit", "vae" or "encoder")."""
    if kind not in _KINDS:
        raise KeyError(f"unknown preset kind {kind!r}; known: {sorted(_KINDS)}")
    return sorted(_KINDS[kind][0])
