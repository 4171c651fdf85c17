"""yume_jax.presets: every named config in one place; configs.models re-exports the DiT ones."""
from __future__ import annotations

import pytest

from yume_jax import presets
from yume_jax.encoders.config import CLIPVisionConfig, UMT5Config
from yume_jax.models.config import DiTConfig
from yume_jax.vae.config import VAEConfig


def test_presets_by_kind_with_overrides():
    assert isinstance(presets.dit("wan2.1-i2v-14b"), DiTConfig) and presets.dit("wan2.1-i2v-14b").image_dim == 1280
    assert presets.dit("wan2.1-t2v-14b", num_layers=4).num_layers == 4
    assert presets.vae("wan2.2").z_dim == 48 and isinstance(presets.vae("tiny-2.1"), VAEConfig)
    assert isinstance(presets.encoder("umt5-xxl"), UMT5Config)
    assert isinstance(presets.encoder("tiny-clip"), CLIPVisionConfig)
    assert "yume-i2v-14b" in presets.names("dit") and presets.names("vae") == sorted(presets.VAE)
    with pytest.raises(KeyError, match="unknown VAE preset 'wan9'"):
        presets.vae("wan9")
    with pytest.raises(KeyError, match="unknown preset kind"):
        presets.names("sampler")


def test_configs_models_is_the_same_table():
    from configs import models

    assert models.PRESETS is presets.DIT and models.get("tiny-yume", num_layers=2) == presets.dit("tiny-yume",
                                                                                                num_layers=2)
    with pytest.raises(KeyError, match="unknown model preset"):
        models.get("nope")
