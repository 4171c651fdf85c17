"""The SDE step and TTS-SDE (spec/yume.md "Sampling", SDE step with eta, no noise on the final step)."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from yume_jax import sampling as S
from yume_jax.sampling import analytic, sde

D = 16
RNG = np.random.default_rng(0)
MU = RNG.normal(size=D).astype(np.float32)
STD = RNG.uniform(0.5, 2.0, size=D).astype(np.float32)
VEL = analytic.gaussian_velocity(MU, STD)
X1 = jax.random.normal(jax.random.key(0), (8192, D), jnp.float32)


def _run(config, x=X1, key=jax.random.key(7)):
    return np.asarray(jax.jit(lambda x, k: S.sample(config, VEL, x, key=k))(x, key))


def _moment_errors(out):
    return float(np.abs(out.mean(0) - MU).max()), float(np.abs(out.std(0) / STD - 1).max())


def test_sde_step_is_the_spec_formula():
    x = jax.random.normal(jax.random.key(1), (3, 5, 7))
    v = jax.random.normal(jax.random.key(2), (3, 5, 7))
    key, eta = jax.random.key(3), 0.3
    z = np.asarray(jax.random.normal(key, x.shape, jnp.float32), np.float64)
    xn, vn = np.asarray(x, np.float64), np.asarray(v, np.float64)
    for s, sn in [(0.9, 0.75), (0.2, 0.05), (0.06, 0.0)]:
        x0 = xn - s * vn
        score = -(xn - (1 - s) * x0) / s**2
        mean = xn + (sn - s) * vn + (-0.5 * eta**2 * score) * (sn - s)
        want = mean + (eta * np.sqrt(s - sn) * z if sn > 0 else 0.0)
        got = sde.step(x, v, jnp.float32(s), jnp.float32(sn), key, eta=eta)
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=2e-5)
    # no noise on the final step: the key does not matter there, and it does elsewhere
    last = [np.asarray(sde.step(x, v, jnp.float32(0.06), jnp.float32(0.0), jax.random.key(k), eta=eta)) for k in (4, 5)]
    np.testing.assert_array_equal(*last)
    mid = [np.asarray(sde.step(x, v, jnp.float32(0.5), jnp.float32(0.4), jax.random.key(k), eta=eta)) for k in (4, 5)]
    assert not np.array_equal(*mid)


@pytest.mark.parametrize("name", ["sde", "tts-sde"])
def test_sde_samplers_map_noise_to_the_data_distribution(name):
    out = _run(S.SamplerConfig(name=name, steps=200, eta=0.3))
    mean_err, std_err = _moment_errors(out)
    print(f"{name} 200 steps eta 0.3: max |mean - mu| {mean_err:.4f}, max |std / s - 1| {std_err:.4f}")
    assert mean_err < 0.07  # sample-mean noise: 2 * std / sqrt(8192) = 0.044 at std 2
    assert std_err < 0.04


def test_sde_with_eta_zero_is_euler():
    np.testing.assert_allclose(_run(S.SamplerConfig(name="sde", steps=20, eta=0.0)),
                               _run(S.SamplerConfig(name="euler", steps=20)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_run(S.SamplerConfig(name="tts-sde", steps=20, eta=0.0)),
                               _run(S.SamplerConfig(name="tts", steps=20)), rtol=1e-6, atol=1e-6)


def test_final_step_without_noise_but_with_score_term_is_biased():
    # The spec's final step keeps the score drift while dropping the noise; last="ode" drops both.
    errs = {last: _moment_errors(_run(S.SamplerConfig(name="sde", steps=50, eta=1.0, sde_last=last)))[1]
            for last in ("spec", "ode")}
    print(f"sde 50 steps eta 1.0, max |std / s - 1|: spec final step {errs['spec']:.4f}, ode final step "
          f"{errs['ode']:.4f}")
    assert errs["ode"] < 0.6 * errs["spec"]


@pytest.mark.parametrize("name", ["sde", "tts-sde"])
def test_same_key_same_output_bit_exact_other_key_differs(name):
    cfg = S.SamplerConfig(name=name, steps=12)
    x = X1[:64]
    a, b = _run(cfg, x, jax.random.key(11)), _run(cfg, x, jax.random.key(11))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _run(cfg, x, jax.random.key(12)))
