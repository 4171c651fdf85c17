"""Classifier-free guidance (one batch, and split over a mesh axis) and the compiled ``Sampler`` front door:
compile counts over a multi-chunk rollout-like sequence, determinism (spec/yume.md "Sampling")."""
import numpy as np
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import Mesh

from yume_jax import sampling as S
from yume_jax.sampling import cfg
from yume_jax.sampling.frozen import history_clean, history_mask, history_renoised

C, HW, L, E = 4, 6, 5, 8  # latent channels, pixels per frame, text length, text width
SEEN = []  # batch sizes the toy model was traced with


def toy_model(params, x, sigma, ctx):
    """x [B, C, F, HW]; sigma scalar or [B, 1, F, 1]; ctx {"text": [B, L, E]}."""
    SEEN.append(x.shape[0])
    b = x.shape[0]
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (b, 1, x.shape[2], 1))
    h = jnp.einsum("bcfp,cd->bdfp", x, params["w"]) + jnp.einsum("ble,ec->bc", ctx["text"], params["u"])[:, :, None, None]
    return jnp.tanh(h * (1.0 + sigma)) - x


def _setup(b=2, f=5, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    params = {"w": jax.random.normal(k[0], (C, C)) / 2, "u": jax.random.normal(k[1], (E, C)) / 4}
    x = jax.random.normal(k[2], (b, C, f, HW))
    cond = {"text": jax.random.normal(k[3], (b, L, E))}
    uncond = {"text": jax.random.normal(k[4], (b, L, E))}
    return params, x, cond, uncond


def _reference(params, x, sigma, cond, uncond, scale):
    v_c, v_u = toy_model(params, x, sigma, cond), toy_model(params, x, sigma, uncond)
    return v_u + scale * (v_c - v_u)


@pytest.mark.parametrize("per_token", [False, True])
def test_guided_is_one_batched_call_equal_to_two_calls(per_token):
    params, x, cond, uncond = _setup()
    sigma = (jnp.where(jnp.arange(5) < 2, 0.0, 0.7).reshape(1, 1, 5, 1) if per_token else jnp.float32(0.7))
    SEEN.clear()
    got = jax.jit(lambda x, s: cfg.guided(toy_model, params, cond, uncond, 5.0)(x, s))(x, sigma)
    assert SEEN == [2 * x.shape[0]]  # one model call on the 2B batch
    np.testing.assert_allclose(np.asarray(got), np.asarray(_reference(params, x, sigma, cond, uncond, 5.0)),
                               rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("mesh_shape,names", [((2,), ("cfg",)), ((2, 4), ("cfg", "data"))])
@pytest.mark.parametrize("per_token", [False, True])
def test_guided_split_runs_each_half_on_its_own_devices(mesh_shape, names, per_token):
    mesh = Mesh(np.array(jax.devices()[: int(np.prod(mesh_shape))]).reshape(mesh_shape), names)
    params, x, cond, uncond = _setup()
    sigma = (jnp.where(jnp.arange(5) < 2, 0.0, 0.3).reshape(1, 1, 5, 1) if per_token else jnp.float32(0.3))
    SEEN.clear()
    got = jax.jit(lambda x, s: cfg.guided_split(toy_model, params, cond, uncond, 5.0, mesh)(x, s))(x, sigma)
    assert SEEN == [x.shape[0]]  # the model body is traced per device group with B samples, not 2B
    np.testing.assert_allclose(np.asarray(got), np.asarray(_reference(params, x, sigma, cond, uncond, 5.0)),
                               rtol=1e-5, atol=1e-5)


def test_guidance_input_errors():
    params, x, cond, uncond = _setup()
    with pytest.raises(ValueError, match="same length"):
        cfg.guided(toy_model, params, cond, {"text": jnp.zeros((2, L + 1, E))}, 5.0)
    with pytest.raises(ValueError, match="size 2"):
        cfg.guided_split(toy_model, params, cond, uncond, 5.0, Mesh(np.array(jax.devices()[:4]), ("cfg",)))


@pytest.mark.parametrize("name", ["euler", "tts-sde"])
@pytest.mark.parametrize("mode", ["renoise", "clean"])
def test_sampler_compiles_once_for_a_five_chunk_rollout(name, mode):
    ticks = []
    sampler = S.Sampler(S.preset("yume", name=name, steps=6), toy_model, on_step=ticks.append)
    params, _, cond, uncond = _setup()
    hist_frames = 3
    for chunk in range(5):  # same shapes, new history / noise / prompt each chunk
        _, x, cond, _ = _setup(seed=10 + chunk)
        mask = history_mask(x.shape, hist_frames, axis=2)
        frozen = (history_renoised(mask, x + chunk, jax.random.normal(jax.random.key(chunk), x.shape))
                  if mode == "renoise" else history_clean(mask, x + chunk))
        out = sampler(params, x, cond, uncond, key=jax.random.key(chunk), frozen=frozen)
        np.testing.assert_array_equal(np.asarray(out)[:, :, :hist_frames], np.asarray(x + chunk)[:, :, :hist_frames])
    jax.effects_barrier()
    assert sampler.traces == 1 and sampler._run._cache_size() == 1
    assert len(ticks) == 5 * 6
    _, x, cond, uncond = _setup(f=7)  # a longer history: one more compile, then cached again
    for _ in range(2):
        sampler(params, x, cond, uncond, key=jax.random.key(0),
                frozen=history_clean(history_mask(x.shape, 4, axis=2), x))
    assert sampler.traces == 2


def test_sampler_is_deterministic_and_mesh_split_matches():
    params, x, cond, uncond = _setup()
    config = S.preset("yume-tts-sde", steps=8)
    outs = [S.Sampler(config, toy_model)(params, x, cond, uncond, key=jax.random.key(3)) for _ in range(2)]
    np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(outs[1]))
    mesh = Mesh(np.array(jax.devices()[:2]), ("cfg",))
    split = S.Sampler(config, toy_model, mesh=mesh)(params, x, cond, uncond, key=jax.random.key(3))
    np.testing.assert_allclose(np.asarray(split), np.asarray(outs[0]), rtol=1e-4, atol=1e-4)


def test_samplers_with_one_share_key_share_one_program():
    """Sampler(share=k): equal (config, k, mesh, cfg_axis, on_step) reuse the first sampler's program (no trace)
    and give the same result; another key or no key traces its own."""
    from yume_jax.sampling.api import clear_shared

    params, x, cond, uncond = _setup()
    config = S.preset("yume", steps=2)
    clear_shared()
    a, b = S.Sampler(config, toy_model, share="toy"), S.Sampler(config, toy_model, share="toy")
    other, own = S.Sampler(config, toy_model, share="other"), S.Sampler(config, toy_model)
    outs = [s(params, x, cond, uncond) for s in (a, b, other, own)]
    assert (a.traces, b.traces, other.traces, own.traces) == (1, 0, 1, 1) and b._run is a._run
    for o in outs[1:]:
        np.testing.assert_array_equal(np.asarray(o), np.asarray(outs[0]))


def test_sampler_without_guidance_and_argument_errors():
    params, x, cond, uncond = _setup()
    SEEN.clear()
    plain = S.Sampler(S.preset("yume", cfg_scale=1.0, steps=3), toy_model)(params, x, cond)
    assert set(SEEN) == {x.shape[0]}  # no unconditional half
    sigmas = S.shifted_sigmas(3, 3.0)
    want = x
    for i in range(3):
        want = want + (sigmas[i + 1] - sigmas[i]) * toy_model(params, want, sigmas[i], cond)
    np.testing.assert_allclose(np.asarray(plain), np.asarray(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unconditional"):
        S.Sampler(S.preset("yume"), toy_model)(params, x, cond)
    with pytest.raises(ValueError, match="PRNG key"):
        S.Sampler(S.preset("yume-sde"), toy_model)(params, x, cond, uncond)
    with pytest.raises(ValueError, match="does not broadcast"):
        S.Sampler(S.preset("yume"), toy_model)(params, x, cond, uncond,
                                               frozen=history_clean(jnp.ones((1, 1, 9, 1), bool), x))
