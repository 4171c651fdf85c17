"""Typed configuration of the Wan 2.1 / 2.2 VAE (spec/wan.md "VAE"); named presets: :mod:`yume_jax.presets`.

Field names follow diffusers' ``AutoencoderKLWan`` config (``temperal_downsample`` spelled
correctly here), so a diffusers ``config.json`` maps onto :class:`VAEConfig` one to one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# Per-channel latent statistics, (z - mean) / std (spec/wan.md "VAE"; Wan's vae.py / vae2_2.py).
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
WAN22_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
              0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
              -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
              -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
             0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
             0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
             0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)
LATENT_STATS = {16: (WAN21_MEAN, WAN21_STD), 48: (WAN22_MEAN, WAN22_STD)}


@dataclass(frozen=True)
class VAEConfig:
    base_dim: int = 96
    decoder_base_dim: int | None = None  # None: same as base_dim (Wan 2.1); 256 for Wan 2.2
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    is_residual: bool = False  # Wan 2.2: residual down/up blocks with parameter-free shortcuts
    in_channels: int = 3  # encoder input channels after patchify (12 for Wan 2.2)
    out_channels: int = 3
    patch_size: int | None = None  # 2 for Wan 2.2: 2x2 pixels -> channels before the encoder
    latents_mean: tuple[float, ...] = WAN21_MEAN
    latents_std: tuple[float, ...] = WAN21_STD
    scale_factor_temporal: int = 4
    scale_factor_spatial: int = 8

    def __post_init__(self):
        for name in ("dim_mult", "temporal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.dim_mult)
        if n < 1 or len(self.temporal_downsample) != n - 1:
            raise ValueError(f"temporal_downsample needs {n - 1} entries for dim_mult {self.dim_mult}")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/std need {self.z_dim} entries (z_dim), got "
                             f"{len(self.latents_mean)}/{len(self.latents_std)}")
        p = self.patch
        if self.in_channels % (p * p) or self.out_channels % (p * p):
            raise ValueError(f"in/out channels {self.in_channels}/{self.out_channels} are not multiples of "
                             f"patch_size^2 = {p * p}")
        if self.scale_factor_spatial != self.spatial_stride or self.scale_factor_temporal != self.temporal_stride:
            raise ValueError(f"scale factors t{self.scale_factor_temporal} s{self.scale_factor_spatial} disagree "
                             f"with the architecture (t{self.temporal_stride} s{self.spatial_stride})")

    @property
    def patch(self) -> int:
        return self.patch_size or 1

    @property
    def dec_dim(self) -> int:
        return self.decoder_base_dim or self.base_dim

    @property
    def video_channels(self) -> int:
        return self.in_channels // (self.patch * self.patch)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * self.patch

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)

    @property
    def temporal_upsample(self) -> tuple[bool, ...]:
        return self.temporal_downsample[::-1]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        from yume_jax.configlib import from_dict

        return from_dict(cls, d, "VAE config")

    # diffusers AutoencoderKLWan config.json <-> VAEConfig
    DIFFUSERS_IGNORED = ("_class_name", "_diffusers_version", "_name_or_path", "dropout", "clip_output")

    @classmethod
    def from_diffusers(cls, hf: dict) -> "VAEConfig":
        d = {k: v for k, v in hf.items() if k not in cls.DIFFUSERS_IGNORED}
        if d.pop("attn_scales", []) not in ([], None):
            raise ValueError("attn_scales is not supported (every Wan VAE has attn_scales=[])")
        if "temperal_downsample" in d:
            d["temporal_downsample"] = d.pop("temperal_downsample")
        return cls.from_dict(d)

    def to_diffusers(self) -> dict:
        d = self.to_dict()
        d["temperal_downsample"] = d.pop("temporal_downsample")
        return {"_class_name": "AutoencoderKLWan", "attn_scales": [], "dropout": 0.0, **d}

    def replace(self, **kw) -> "VAEConfig":
        return dataclasses.replace(self, **kw)
