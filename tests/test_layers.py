"""layers.matmul: the mixed-precision matmul whose backward stays in the compute dtype."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yume_jax.models.layers import Linear, matmul


def _loss(fn, dt):
    return lambda x, w: jnp.sum(jnp.sin(fn(x, w, dt).astype(dt).astype(jnp.float32)))


def _jax_own(x, w, dt):
    return jnp.dot(x.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)


@pytest.fixture
def xw():
    rng = np.random.default_rng(7)
    return (jnp.asarray(rng.standard_normal((2, 7, 24)), jnp.float32),
            jnp.asarray(rng.standard_normal((24, 5)), jnp.float32))


def test_float32_equals_jax_transpose(xw):
    x, w = xw
    want = jax.grad(_loss(_jax_own, jnp.float32), argnums=(0, 1))(x, w)
    got = jax.grad(_loss(matmul, jnp.float32), argnums=(0, 1))(x, w)
    np.testing.assert_array_equal(matmul(x, w, jnp.float32), _jax_own(x, w, jnp.float32))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_bf16_backward_runs_in_bf16_and_matches_float64(xw):
    """Every backward dot takes bf16 operands (JAX's own transpose upcasts them to f32); the float32
    master kernel gets a float32 gradient within bf16 rounding of the float64 one (measured ~4e-3)."""
    x, w = xw
    f = jax.grad(_loss(matmul, jnp.bfloat16), argnums=(0, 1))
    jaxpr = jax.make_jaxpr(f)(x, w)
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert len(dots) == 3  # forward, dx, dkernel
    assert all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars), [
        [v.aval.dtype for v in e.invars] for e in dots]
    own = jax.make_jaxpr(jax.grad(_loss(_jax_own, jnp.bfloat16), argnums=(0, 1)))(x, w)
    assert any(v.aval.dtype == jnp.float32 for e in own.eqns if e.primitive.name == "dot_general" for v in e.invars)
    dx, dw = f(x, w)
    assert dx.dtype == dw.dtype == jnp.float32
    # float64 reference on the bf16-rounded operands
    xb, wb = (np.asarray(a.astype(jnp.bfloat16), np.float64) for a in (x, w))
    y = np.asarray(jnp.asarray(xb @ wb, jnp.bfloat16), np.float64)
    g = np.cos(y)
    rel = lambda a, b: np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)  # noqa: E731
    assert rel(dw, xb.reshape(-1, 24).T @ g.reshape(-1, 5)) < 1e-2
    assert rel(dx, g @ wb.T) < 1e-2


def test_linear_gradients_flow_under_jit_and_vmap():
    from flax import nnx
    lin = Linear(8, 3, rngs=nnx.Rngs(0))
    x = jnp.ones((4, 8), jnp.bfloat16)
    g = jax.jit(jax.grad(lambda k: jnp.sum(jax.vmap(lambda r: matmul(r, k, jnp.bfloat16))(x))))(lin.kernel[...])
    assert g.dtype == jnp.float32 and g.shape == (8, 3)
    np.testing.assert_allclose(g, np.full((8, 3), 4.0), rtol=0)
