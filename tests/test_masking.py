"""MVDT (spec/yume.md "MVDT"): masking, side-interpolator, gradients, bounded compilation."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.models import get
from yume_jax.models import masking
from yume_jax.models import rope as rope_lib
from yume_jax.models.config import Runtime
from yume_jax.models.loader import build


@pytest.fixture(scope="module")
def setup():
    model = build(get("tiny-yume", in_channels=16, image_dim=None), seed=3)
    model.mask_token[...] = jax.random.normal(jax.random.key(9), model.mask_token.shape)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 16, 7, 6, 10), dtype=np.float32))
    t = jnp.asarray([250.0, 750.0])
    ctx = jnp.asarray(rng.standard_normal((2, 5, 32), dtype=np.float32))
    return model, x, t, ctx


def test_ratio_zero_equals_unmasked_forward(setup):
    model, x, t, ctx = setup
    n = sum(model.token_layout(7, 6, 10, 3).values())
    keep = masking.keep_count(n, 0.0)
    assert keep == n
    a = model(x, t, ctx, chunk=3)
    b = model.forward_masked(x, t, ctx, key=jax.random.key(0), keep=keep, chunk=3)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_side_interpolator_leaves_kept_tokens_alone(setup):
    model, x, t, ctx = setup
    rt = Runtime()
    tokens, pos, _, _ = model.embed(x, 3, rt)
    n = tokens.shape[1]
    idx = masking.sample_keep(jax.random.key(1), 2, n, masking.keep_count(n, 0.4))
    cond = model.condition(t, ctx, None, rt)
    cos, sin = rope_lib.rope_tables(pos, model.cfg.head_dim)
    kept = masking.gather(tokens, idx)
    full, masked = masking.scatter_with_mask_token(kept, idx, n, model.mask_token[...])
    side = model.sideblock(full, cond.e0, cond.ctx, None, cos, sin, rt)
    out = jnp.where(masked[..., None], side, full)
    assert np.array_equal(np.asarray(masking.gather(out, idx)), np.asarray(kept))
    m = np.asarray(masked)
    assert 0.3 <= m.mean() <= 0.45 and np.all(m.sum(1) == m.sum(1)[0])
    assert np.array_equal(np.asarray(out)[m], np.asarray(side)[m])
    # removed places entered the side block as the mask token
    assert np.allclose(np.asarray(full)[m], np.asarray(model.mask_token[...]).reshape(-1))


def test_gradients_reach_mask_token_and_side_block(setup):
    model, x, t, ctx = setup
    graphdef, state = nnx.split(model)
    n = sum(model.token_layout(7, 6, 10, 3).values())
    keep = masking.keep_count(n, 0.45)

    def loss(st):
        m = nnx.merge(graphdef, st)
        v = m.forward_masked(x, t, ctx, key=jax.random.key(2), keep=keep, chunk=3)
        return jnp.mean(jnp.square(v))

    g = jax.grad(loss)(state)
    assert float(jnp.abs(g["mask_token"][...]).sum()) > 0
    side = jax.tree.leaves(g["sideblock"])
    assert all(float(jnp.abs(leaf).sum()) > 0 for leaf in side)


def test_compilations_bounded_over_random_ratios(setup):
    model, x, t, ctx = setup
    graphdef, state = nnx.split(model)
    n = sum(model.token_layout(7, 6, 10, 3).values())
    traces = []

    fwd = jax.jit(lambda st, key, keep: (traces.append(keep),
                                         nnx.merge(graphdef, st).forward_masked(x, t, ctx, key=key, keep=keep,
                                                                                 chunk=3))[1],
                  static_argnums=2)
    rng = np.random.default_rng(0)
    keeps = []
    for i in range(50):
        ratio = masking.sample_ratio(rng)
        assert 0.3 <= ratio <= 0.5
        keep = masking.keep_count(n, ratio)
        assert n - keep <= ratio * n  # realised ratio never above the sampled one
        keeps.append(keep)
        fwd(state, jax.random.key(i), keep)
    assert len(traces) == len(set(keeps)) <= 5, (len(traces), n)


def test_keep_count_validation():
    with pytest.raises(ValueError, match="mask ratio"):
        masking.keep_count(100, 1.0)
    assert masking.split_layer(40) == 19  # blocks 1..19 (1-indexed) on kept tokens, side block before block 20
