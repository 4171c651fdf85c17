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
    keep = n
    a = model(x, t, ctx, chunk=3)
    b = model.forward_masked(x, t, ctx, key=jax.random.key(0), keep=keep, chunk=3)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_side_interpolator_leaves_kept_tokens_alone(setup):
    model, x, t, ctx = setup
    rt = Runtime()
    tokens, pos, _, _ = model.embed(x, 3, rt)
    n = tokens.shape[1]
    idx = masking.sample_keep(jax.random.key(1), 2, n, masking.keep_count(n, 0.4, 0.5))
    cond = model.condition(t, ctx, None, rt)
    cos, sin = rope_lib.rope_tables(pos, model.cfg.head_dim)
    kept = masking.gather(tokens, idx)
    full, masked = masking.scatter_with_mask_token(kept, idx, n, model.mask_token[...])
    side = model.sideblock(full, cond.e0, cond.ctx, None, cos, sin, rt)
    out = jnp.where(masked[..., None], side, full)
    assert np.array_equal(np.asarray(masking.gather(out, idx)), np.asarray(kept))
    m = np.asarray(masked)
    assert 0.3 <= m.mean() <= 0.5 and np.all(m.sum(1) == m.sum(1)[0])
    assert np.array_equal(np.asarray(out)[m], np.asarray(side)[m])
    # removed places entered the side block as the mask token
    assert np.allclose(np.asarray(full)[m], np.asarray(model.mask_token[...]).reshape(-1))


def test_gradients_reach_mask_token_and_side_block(setup):
    model, x, t, ctx = setup
    graphdef, state = nnx.split(model)
    n = sum(model.token_layout(7, 6, 10, 3).values())
    keep = masking.keep_count(n, 0.45, 0.5)

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
        keep = masking.draw_keep(rng, n)
        assert 0.3 <= (n - keep) / n <= 0.5
        keeps.append(keep)
        fwd(state, jax.random.key(i), keep)
    assert len(traces) == len(set(keeps)) <= masking.DEFAULT_BUCKETS, (len(traces), n)


@pytest.mark.parametrize("n,buckets", [(1560, 5), (300, 5), (64, 4), (7200, 9)])
def test_applied_ratio_keeps_the_law(n, buckets):
    """Over 10,000 draws the applied ratio has the law's mean 0.4 (+- 0.005) and stays in [0.3, 0.5];
    the distinct kept counts (compiled shapes) are at most ``buckets``."""
    rng = np.random.default_rng(1)
    keeps = np.asarray([masking.draw_keep(rng, n, 0.3, 0.2, buckets) for _ in range(10_000)])
    ratio = (n - keeps) / n
    assert abs(ratio.mean() - 0.4) <= 0.005, ratio.mean()
    assert ratio.min() >= 0.3 and ratio.max() <= 0.5
    assert 2 <= len(set(keeps.tolist())) <= buckets
    # independent reference of the law: E[r] = 0.3 + 0.2 / 2; the variance of r is 0.2**2 / 12, and
    # randomised rounding only adds to it
    assert ratio.var() >= 0.2 ** 2 / 12 * 0.95


def test_randomised_rounding_is_unbiased_per_ratio():
    n, ratio = 1000, 0.337
    grid = masking.mask_grid(n)
    assert grid.tolist() == [300, 350, 400, 450, 500]
    us = np.linspace(0, 1, 1000, endpoint=False)
    masked = np.asarray([n - masking.keep_count(n, ratio, u) for u in us])
    assert set(masked.tolist()) == {300, 350} and abs(masked.mean() - ratio * n) < 0.1
    assert masking.keep_count(n, 0.35, 0.999) == 650  # on a grid point: no rounding


def test_keep_count_validation():
    with pytest.raises(ValueError, match="mask ratio"):
        masking.keep_count(100, 1.0, 0.5)
    with pytest.raises(ValueError, match="buckets"):
        masking.mask_grid(100, buckets=0)
    assert masking.mask_grid(1).tolist() == [0, 1]  # no integer in [0.3, 0.5]: the two around it
    assert masking.mask_grid(100, buckets=1).tolist() == [40]
    assert masking.split_layer(40) == 19  # blocks 1..19 (1-indexed) on kept tokens, side block before block 20
