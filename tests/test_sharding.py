"""Sharded forward on 8 CPU devices equals the single-device forward (fsdp x tensor, context mesh)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from dit_reference import rel_l2

from configs.models import get
from yume_jax import sharding
from yume_jax.models.loader import DiT, build


@pytest.fixture(scope="module")
def model_and_inputs():
    assert len(jax.devices()) == 8, "tests/conftest.py sets 8 host devices"
    model = build(get("tiny-i2v", num_layers=2), seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 36, 3, 8, 12), dtype=np.float32)
    t = np.array([100.0, 900.0], np.float32)
    ctx = rng.standard_normal((2, 9, 32), dtype=np.float32)
    img = rng.standard_normal((2, 257, 48), dtype=np.float32)
    ref = np.asarray(DiT(model)(x, t, ctx, img))
    return model, (x, t, ctx, img), ref


@pytest.mark.parametrize("mesh_shape", [
    {"fsdp": 2, "tensor": 4},
    {"context": 8},
    {"data": 2, "context": 4},
    {"fsdp": 2, "context": 2, "tensor": 2},
])
def test_sharded_forward_matches_one_device(model_and_inputs, mesh_shape):
    model, inputs, ref = model_and_inputs
    mesh = sharding.make_mesh(mesh_shape)
    dit = DiT(model, mesh=mesh)
    # parameters really are sharded as the logical table says
    k = dit.params["blocks"]["ffn"]["fc1"]["kernel"][...]
    if mesh.shape["tensor"] > 1:
        assert k.sharding.spec[2] == "tensor"
    if mesh.shape["fsdp"] > 1:
        assert k.sharding.spec[1] == "fsdp"
    out = dit(*inputs)
    assert rel_l2(np.asarray(out), ref) <= 1e-5


def test_mesh_errors():
    with pytest.raises(ValueError, match="does not divide"):
        sharding.make_mesh({"fsdp": 3, "tensor": -1})
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.make_mesh({"model": 8})
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh({"fsdp": 4, "tensor": 4})


def test_every_parameter_has_a_rule():
    from yume_jax.core import params as P
    from flax import nnx

    model = build(get("tiny-yume"), abstract=True)
    for name, leaf in P.flatten(nnx.state(model)).items():
        axes = sharding.param_axes(name, len(leaf.shape))
        assert len(axes) == len(leaf.shape)


@pytest.mark.parametrize("family,preset", [("t5", "umt5-xxl"), ("clip", "clip-vit-h-14"), ("vae", "wan2.2")])
def test_every_encoder_and_vae_parameter_has_a_rule(family, preset):
    """Each family's table covers its real-size model (abstract); umT5 and CLIP put heads and FFN units on
    "tensor" and the width on "fsdp", the VAE is replicated."""
    import jax.numpy as jnp
    from flax import nnx

    from yume_jax import presets
    from yume_jax.core import params as P
    from yume_jax.encoders.clip import VisionTransformer
    from yume_jax.encoders.t5 import UMT5Encoder
    from yume_jax.vae.model import WanVAEModel

    if family == "vae":
        make = lambda: WanVAEModel(presets.vae(preset), rngs=nnx.Rngs(0))  # noqa: E731
    else:
        cls = UMT5Encoder if family == "t5" else VisionTransformer
        make = lambda: cls(presets.encoder(preset), rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)  # noqa: E731
    flat = {k: tuple(v.shape) for k, v in P.flatten(nnx.state(nnx.eval_shape(make))).items()}
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
    specs = {k: s.spec for k, s in sharding.param_shardings(flat, mesh, family).items()}
    if family == "vae":
        assert all(all(a is None for a in spec) for spec in specs.values())
    else:
        q = next(k for k in flat if k.endswith("attn.q.kernel"))
        assert tuple(specs[q]) == (None, "fsdp", "tensor")
    with pytest.raises(KeyError, match="no sharding rules for model family"):
        sharding.param_axes("x.kernel", 2, "discriminator")
    with pytest.raises(KeyError, match="no sharding rule for dit parameter"):
        sharding.param_axes("surprise.weight", 2)


# -- sequence-parallel attention strategies (yume_jax/models/attention.py) -----------------------------
# Cases: (mesh, sequence length, heads). 16 divides context=4; 13 and 10 do not (a replicated sequence for
# Ulysses, padded queries for the gather path); context=2 x tensor=2 splits the heads over both for Ulysses.
ATTN_CASES = [({"context": 4}, 16, 4), ({"context": 4}, 13, 4), ({"context": 2, "tensor": 2}, 10, 4),
              ({"data": 2, "context": 4}, 12, 8)]


def _sharded_attention(mesh, strategy, q, k, v):
    """The attention as the DiT runs it: inputs laid out (batch, seq, heads, d) by the logical axes, jitted
    under the mesh; returns the compiled program and its output."""
    from jax.sharding import NamedSharding

    from yume_jax.models.attention import attention

    def f(q, k, v):
        with sharding.use_mesh(mesh):
            return attention(q, k, v, "xla", strategy)

    layout = NamedSharding(mesh, sharding.spec(("batch", "seq", "act_heads", None), q.shape, mesh))
    args = [jax.device_put(t, layout) for t in (q, k, v)]
    compiled = jax.jit(f).lower(*args).compile()
    return compiled, compiled(*args)


@pytest.mark.parametrize("mesh_shape,length,heads", ATTN_CASES)
def test_seq_parallel_strategies_equal_unsharded(mesh_shape, length, heads):
    """Ulysses (all-to-all head split) and the K/V gather both give the one-device attention (float32,
    max abs error <= 1e-5 on unit-scale inputs), also for sequence lengths the context axis does not divide."""
    from yume_jax.models.attention import reference_attention

    mesh = sharding.make_mesh(mesh_shape, jax.devices()[:int(np.prod(list(mesh_shape.values())))])
    rng = np.random.default_rng(length)
    q, k, v = (rng.standard_normal((2, length, heads, 8), dtype=np.float32) for _ in range(3))
    want = np.asarray(reference_attention(q, k, v))
    for strategy in ("ulysses", "gather"):
        _, got = _sharded_attention(mesh, strategy, q, k, v)
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0, err_msg=strategy)


def test_seq_parallel_collectives_in_hlo():
    """The mechanism, read from the compiled program (context=4, sequence-sharded inputs): Ulysses reshards
    with all-to-all and gathers nothing; the fallback all-gathers K/V and has no all-to-all."""
    mesh = sharding.make_mesh({"context": 4}, jax.devices()[:4])
    q = k = v = np.ones((1, 16, 4, 8), np.float32)
    hlo = {s: _sharded_attention(mesh, s, q, k, v)[0].as_text() for s in ("ulysses", "gather")}
    assert "all-to-all" in hlo["ulysses"] and "all-gather" not in hlo["ulysses"]
    assert "all-gather" in hlo["gather"] and "all-to-all" not in hlo["gather"]


def test_seq_parallel_choice():
    from yume_jax.models.attention import seq_parallel_strategy
    from yume_jax.models.config import Runtime

    ctx4 = sharding.make_mesh({"context": 4}, jax.devices()[:4])
    ctx8 = sharding.make_mesh({"context": 8})
    ctx2_t2 = sharding.make_mesh({"context": 2, "tensor": 2}, jax.devices()[:4])
    assert seq_parallel_strategy(ctx4, 4) == "ulysses"  # heads divide: Ulysses
    assert seq_parallel_strategy(ctx4, 6) == "gather"  # they do not: the gather fallback
    assert seq_parallel_strategy(ctx8, 4) == "gather"
    assert seq_parallel_strategy(ctx2_t2, 4) == "ulysses" and seq_parallel_strategy(ctx2_t2, 2) == "gather"
    assert seq_parallel_strategy(ctx4, 4, "gather") == "gather"  # the override
    assert seq_parallel_strategy(sharding.make_mesh({"tensor": 8}), 8) == "gather"  # no context axis
    assert seq_parallel_strategy(None, 4, "ulysses") == "gather"  # one device: nothing to split
    with pytest.raises(ValueError, match="does not divide") as e:
        seq_parallel_strategy(ctx8, 4, "ulysses")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="seq_parallel must be one of"):
        Runtime(seq_parallel="ring")
