"""Anti-Artifact Mechanism with a real low-pass projector (paper Sec. 5.3; spec/yume.md "Sampling")."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from yume_jax import sampling as S
from yume_jax.sampling import aam, analytic
from yume_jax.sampling.frozen import history_mask, history_renoised

SHAPE = (2, 3, 4, 9, 14)  # [B, C, F, H, W], odd H
X = jax.random.normal(jax.random.key(0), SHAPE)
R = jax.random.normal(jax.random.key(1), SHAPE)


def _spectrum(x):
    return np.fft.rfft2(np.asarray(x, np.float64), axes=(-2, -1))


@pytest.mark.parametrize("project", [aam.projector("fft", cutoff=0.3), aam.projector("fft", cutoff=0.8),
                                     aam.projector("pool", factor=2), aam.projector("pool", factor=4)])
def test_projector_is_idempotent_symmetric_and_not_the_identity(project):
    px = project(X)
    np.testing.assert_allclose(np.asarray(project(px)), np.asarray(px), rtol=1e-5, atol=1e-5)
    # orthogonal: <P x, r> = <x, P r>
    np.testing.assert_allclose(float(jnp.vdot(px, R)), float(jnp.vdot(X, project(R))), rtol=1e-4)
    residual = float(jnp.linalg.norm(X - px) / jnp.linalg.norm(X))
    assert residual > 0.1  # a real projector, unlike the public code's P = I


@pytest.mark.parametrize("cutoff", [0.2, 0.5, 1.0])
def test_fft_projector_changes_only_frequencies_above_its_cutoff(cutoff):
    px = aam.lowpass_fft(X, cutoff)
    keep = aam.fft_mask(SHAPE[-2], SHAPE[-1], cutoff)
    assert 0 < keep.sum() < keep.size
    diff, out = _spectrum(X - px), _spectrum(px)
    scale = np.abs(_spectrum(X)).max()
    assert np.abs(diff[..., keep]).max() < 1e-5 * scale  # frequencies at or below the cutoff untouched
    assert np.abs(out[..., ~keep]).max() < 1e-5 * scale  # frequencies above it removed
    assert np.abs(diff[..., ~keep]).min() > 0 or np.abs(diff[..., ~keep]).max() > 1e-2 * scale


def test_fft_projector_on_other_axes_matches_after_transposition():
    y = jnp.moveaxis(X, (-2, -1), (1, 2))  # [B, H, W, C, F]
    got = aam.lowpass_fft(y, 0.4, axes=(1, 2))
    np.testing.assert_allclose(np.asarray(jnp.moveaxis(got, (1, 2), (-2, -1))), np.asarray(aam.lowpass_fft(X, 0.4)),
                               rtol=1e-6, atol=1e-6)


def test_pool_projector_keeps_block_means_and_removes_everything_else():
    f = 4
    px = np.asarray(aam.lowpass_pool(X, f))
    x = np.asarray(X)
    for i in range(0, SHAPE[-2], f):  # border blocks are smaller (9 = 4 + 4 + 1, 14 = 4 + 4 + 4 + 2)
        for j in range(0, SHAPE[-1], f):
            blk, pblk = x[..., i:i + f, j:j + f], px[..., i:i + f, j:j + f]
            np.testing.assert_allclose(pblk.mean((-2, -1)), blk.mean((-2, -1)), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(pblk, np.broadcast_to(pblk[..., :1, :1], pblk.shape), rtol=1e-6, atol=1e-6)


def test_mix_takes_low_frequencies_from_the_renoised_pass_and_high_ones_from_the_latent():
    project = aam.projector("fft", cutoff=0.35)
    m = aam.mix(project, R, X)
    keep = aam.fft_mask(SHAPE[-2], SHAPE[-1], 0.35)
    scale = np.abs(_spectrum(X)).max()
    assert np.abs(_spectrum(m - R)[..., keep]).max() < 1e-5 * scale
    assert np.abs(_spectrum(m - X)[..., ~keep]).max() < 1e-5 * scale


def test_projector_errors():
    with pytest.raises(ValueError, match="cutoff"):
        aam.projector("fft", cutoff=0.0)
    with pytest.raises(ValueError, match="factor"):
        aam.projector("pool", factor=1)
    with pytest.raises(ValueError, match="projector must be"):
        aam.projector("svd")
    with pytest.raises(ValueError, match="distinct axes"):
        aam.lowpass_fft(X, 0.5, axes=(1, 1))
    with pytest.raises(ValueError, match="AAM steps"):
        S.AAMConfig(steps=-1)


# Gaussian data with a spatial pattern in the mean: the sampled field is smooth + per-pixel noise.
_H, _W = 8, 10
_MU = np.cos(np.linspace(0, np.pi, _H))[:, None] * np.sin(np.linspace(0, 2 * np.pi, _W))[None, :]
VEL = analytic.gaussian_velocity(_MU.astype(np.float32), 0.5)
NOISE = jax.random.normal(jax.random.key(5), (2, 3, 4, _H, _W))


def _sample(config, key=jax.random.key(9), frozen=None, noise=NOISE):
    return np.asarray(jax.jit(lambda x, k, f: S.sample(config, VEL, x, key=k, frozen=f))(noise, key, frozen))


@pytest.mark.parametrize("name,projector", [("euler", "fft"), ("sde", "pool"), ("tts", "pool"), ("tts-sde", "fft")])
def test_aam_with_k_zero_equals_plain_sampling_exactly(name, projector):
    plain = S.SamplerConfig(name=name, steps=8)
    with_aam = plain.replace(aam=S.AAMConfig(steps=0, projector=projector))
    np.testing.assert_array_equal(_sample(with_aam), _sample(plain))


def test_aam_runs_two_passes_and_replaces_only_the_first_k_steps():
    calls = []

    def spy(x, t):
        jax.debug.callback(lambda t: calls.append(float(t)), t)
        return VEL(x, t)

    config = S.SamplerConfig(steps=6, aam=S.AAMConfig(steps=2, projector="fft", cutoff=0.3))
    out = np.asarray(jax.jit(lambda x: S.sample(config, spy, x))(NOISE))
    jax.effects_barrier()
    assert len(calls) == config.evaluations == 12
    assert not np.allclose(out, _sample(config.replace(aam=None)))
    # With P = I (the cutoff covers every frequency) and all K = N steps replaced, the last step starts from
    # the first pass re-noised to sigma_{N-1}: the output is one Euler step from there.
    identity = config.replace(aam=S.AAMConfig(steps=6, projector="fft", cutoff=float(np.sqrt(2))))
    z_first = _sample(config.replace(aam=None))
    s = S.shifted_sigmas(6, 3.0)[-2]
    x = s * np.asarray(NOISE) + (1 - s) * z_first
    np.testing.assert_allclose(_sample(identity), x - s * np.asarray(VEL(jnp.asarray(x), s)), rtol=1e-5, atol=1e-5)


def test_aam_leaves_the_frozen_history_to_the_frozen_region():
    x = NOISE
    hist = jax.random.normal(jax.random.key(6), x.shape)
    frozen = history_renoised(history_mask(x.shape, 2, axis=2), hist, jax.random.normal(jax.random.key(7), x.shape))
    out = _sample(S.SamplerConfig(name="sde", steps=6, aam=S.AAMConfig(steps=3)), frozen=frozen)
    np.testing.assert_array_equal(out[:, :, :2], np.asarray(hist)[:, :, :2])
