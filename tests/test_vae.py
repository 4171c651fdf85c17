"""Wan VAE parity with diffusers AutoencoderKLWan (spec/wan.md "VAE"), float32 and bfloat16, and input checks."""
import copy

import numpy as np
import pytest
import torch

from yume_jax import presets
from yume_jax.vae import WanVAE
from yume_jax.vae.reference import diffusers_model, params_from_diffusers

# tiny configs with the real strides; non-square frames
CASES = {"tiny-2.1": (24, 40), "tiny-2.2": (32, 48)}
BF16_TOL = 3e-2  # stated: relative L2 of our bfloat16 against the float32 reference


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    cfg = presets.vae(request.param)
    ref = diffusers_model(cfg, seed=1)
    return request.param, cfg, ref, WanVAE(cfg, params_from_diffusers(ref, cfg))


def test_parity_float32(case):
    name, cfg, ref, vae = case
    h, w = CASES[name]
    g = torch.Generator().manual_seed(2)
    for t in (1, 5, 9, 13):
        video = torch.rand(2, 3, t, h, w, generator=g) * 2 - 1
        z = torch.randn(2, cfg.z_dim, 1 + (t - 1) // 4, h // cfg.spatial_stride, w // cfg.spatial_stride, generator=g)
        with torch.no_grad():
            want_z = ref.encode(video).latent_dist.mode().numpy()
            want_x = ref.decode(z).sample.numpy()
        got_z = vae.encode(video.numpy(), normalize=False)
        got_x = vae.decode(z.numpy(), normalize=False)
        assert got_z.shape == want_z.shape == (2, cfg.z_dim, 1 + (t - 1) // 4, h // cfg.spatial_stride,
                                               w // cfg.spatial_stride)
        assert got_x.shape == want_x.shape == (2, 3, t, h, w)
        assert np.mean(np.abs(want_x) < 1) > 0.5, "reference output mostly clamped: the decode check would be weak"
        assert rel(got_z, want_z) <= 1e-5, (name, t, rel(got_z, want_z))
        assert rel(got_x, want_x) <= 1e-5, (name, t, rel(got_x, want_x))
    # compiled once per chunk shape: the first chunk and the steady state, for each direction
    assert vae.traces == {"encode": 2, "decode": 2, "assemble": 0}


def test_normalize(case):
    name, cfg, ref, vae = case
    h, w = CASES[name]
    rng = np.random.default_rng(3)
    video = rng.uniform(-1, 1, (2, 3, 5, h, w)).astype(np.float32)
    mean = np.asarray(cfg.latents_mean, np.float32)[None, :, None, None, None]
    std = np.asarray(cfg.latents_std, np.float32)[None, :, None, None, None]
    raw = np.asarray(vae.encode(video, normalize=False))
    np.testing.assert_allclose(vae.encode(video), (raw - mean) / std, rtol=1e-6, atol=1e-6)
    zn = rng.standard_normal(raw.shape).astype(np.float32)
    np.testing.assert_allclose(vae.decode(zn), vae.decode(zn * std + mean, normalize=False), rtol=1e-5, atol=1e-6)
    out = np.asarray(vae.decode(zn))
    assert out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1
    assert vae.traces["encode"] == 2 and vae.traces["decode"] == 2  # normalize is data, not a new compile


def test_bfloat16(case):
    """bf16 compute (RMS norm and softmax in fp32) against the fp32 reference; diffusers' own bf16 for scale."""
    name, cfg, ref, vae = case
    h, w = CASES[name]
    g = torch.Generator().manual_seed(4)
    video = torch.rand(1, 3, 9, h, w, generator=g) * 2 - 1
    z = torch.randn(1, cfg.z_dim, 3, h // cfg.spatial_stride, w // cfg.spatial_stride, generator=g)
    with torch.no_grad():
        want_z, want_x = ref.encode(video).latent_dist.mode().numpy(), ref.decode(z).sample.numpy()
        ref16 = copy.deepcopy(ref).to(torch.bfloat16)
        tz = ref16.encode(video.bfloat16()).latent_dist.mode().float().numpy()
        tx = ref16.decode(z.bfloat16()).sample.float().numpy()
    vae16 = WanVAE(cfg, vae.params, dtype="bfloat16")
    got_z = vae16.encode(video.numpy(), normalize=False)
    got_x = vae16.decode(z.numpy(), normalize=False)
    ez, ex = rel(got_z, want_z), rel(got_x, want_x)
    print(f"{name} bf16 rel L2: ours enc {ez:.2e} dec {ex:.2e}; diffusers bf16 enc {rel(tz, want_z):.2e} "
          f"dec {rel(tx, want_x):.2e}")
    assert ez <= BF16_TOL and ex <= BF16_TOL
    assert ez <= 2 * rel(tz, want_z) + 1e-3 and ex <= 2 * rel(tx, want_x) + 1e-3


def test_bad_input(case):
    name, cfg, ref, vae = case
    h, w = CASES[name]
    s = cfg.spatial_stride
    ok = np.zeros((1, 3, 5, h, w), np.float32)
    with pytest.raises(ValueError, match="channels"):
        vae.encode(np.zeros((1, 4, 5, h, w), np.float32))
    with pytest.raises(ValueError, match="4n \\+ 1"):
        vae.encode(np.zeros((1, 3, 4, h, w), np.float32))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        vae.encode(ok + 2)
    with pytest.raises(ValueError, match="multiples"):
        vae.encode(np.zeros((1, 3, 5, h + s // 2, w), np.float32))
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        vae.encode(ok[0])
    with pytest.raises(ValueError, match="floating"):
        vae.encode(ok.astype(np.int32))
    with pytest.raises(ValueError, match="z_dim"):
        vae.decode(np.zeros((1, cfg.z_dim + 1, 2, h // s, w // s), np.float32))
    with pytest.raises(ValueError, match="T=0"):
        vae.decode(np.zeros((1, cfg.z_dim, 0, h // s, w // s), np.float32))
    _, state = vae.stream_encode(ok)
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.stream_encode(ok, state)
    with pytest.raises(ValueError, match="stream started"):
        vae.stream_encode(np.zeros((2, 3, 4, h, w), np.float32), state)
    with pytest.raises(ValueError, match="cannot continue"):
        vae.stream_decode(np.zeros((1, cfg.z_dim, 1, h // s, w // s), np.float32), state)
    with pytest.raises(ValueError, match="dtype"):
        WanVAE(cfg, vae.params, dtype="int8")


@pytest.mark.parametrize("shape,kernel,stride", [((2, 7, 9, 11, 5), (3, 3, 3), (1, 1, 1)),
                                                 ((1, 5, 6, 10, 4), (3, 1, 1), (2, 1, 1)),
                                                 ((1, 6, 7, 5, 3), (2, 3, 3), (1, 2, 2))])
def test_temporal_taps_conv_equals_the_3d_convolution(shape, kernel, stride):
    """The CPU path of CausalConv3d (a sum of 2D convolutions over the temporal taps) is the 3D convolution."""
    import jax

    from yume_jax.vae.layers import temporal_taps_conv

    x = jax.random.normal(jax.random.key(np.random.randint(1 << 30)), shape)
    k = jax.random.normal(jax.random.key(7), (*kernel, shape[-1], 6))
    pad = ((kernel[1] // 2, kernel[1] // 2), (kernel[2] // 2, kernel[2] // 2))
    ref = jax.lax.conv_general_dilated(x, k, stride, ((0, 0), *pad), dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                       precision="highest")
    got = temporal_taps_conv(x, k, stride, pad)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_causal_conv_taps_option_lowers_to_2d_convolutions(monkeypatch):
    """YUME_JAX_VAE_CONV_TAPS=1: CausalConv3d lowers to one 2D convolution per temporal tap; unset, one 3D
    convolution (the default)."""
    import jax
    from flax import nnx

    from yume_jax.vae.layers import TAPS_ENV, CausalConv3d

    conv = CausalConv3d(4, 5, rngs=nnx.Rngs(0))

    def ranks():
        jaxpr = jax.make_jaxpr(lambda x: conv(x))(np.zeros((1, 3, 6, 7, 4), np.float32))
        return [e.invars[0].aval.ndim for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]

    monkeypatch.delenv(TAPS_ENV, raising=False)
    assert ranks() == [5]
    monkeypatch.setenv(TAPS_ENV, "1")
    assert ranks() == [4, 4, 4]
