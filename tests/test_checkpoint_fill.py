"""yume_jax.core.checkpoint.fill: the one way a model is filled from a checkpoint (missing, unknown,
partial-layer and shape errors; dtype; created parameters; extras), and the checkpoint format."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yume_jax.core import CheckpointError, ConversionError, fill, open_checkpoint, write_checkpoint
from yume_jax.core.tensors import JAX_META, open_source


def abstract():
    return {"blocks": {"w": jax.ShapeDtypeStruct((3, 2, 4), jnp.float32)},
            "head": {"kernel": jax.ShapeDtypeStruct((4, 5), jnp.bfloat16)}}


def tensors(rng=np.random.default_rng(0)):
    t = {f"blocks.{i}.w": rng.standard_normal((2, 4)).astype(np.float32) for i in range(3)}
    t["head.kernel"] = rng.standard_normal((4, 5)).astype(np.float32)
    return t


def test_fill_stacks_layers_and_casts_to_the_model_dtype():
    t = tensors()
    out = fill(abstract(), t)
    np.testing.assert_array_equal(np.asarray(out["blocks"]["w"]), np.stack([t[f"blocks.{i}.w"] for i in range(3)]))
    assert out["head"]["kernel"].dtype == jnp.bfloat16
    assert fill(abstract(), t, dtype="float32")["head"]["kernel"].dtype == jnp.float32


@pytest.mark.parametrize("case,message", [
    ("missing", "head.kernel: missing key"),
    ("partial", "blocks.w: checkpoint holds only some layers"),
    ("unknown", "surprise: unexpected key"),
    ("shape", r"blocks.1.w: shape \[4, 2\], model expects \[2, 4\]"),
])
def test_fill_errors_name_the_key(case, message):
    t = tensors()
    if case == "missing":
        del t["head.kernel"]
    elif case == "partial":
        del t["blocks.2.w"]
    elif case == "unknown":
        t["surprise"] = np.zeros(1, np.float32)
    else:
        t["blocks.1.w"] = np.zeros((4, 2), np.float32)
    with pytest.raises(CheckpointError, match=message):
        fill(abstract(), t)
    assert ConversionError is CheckpointError


def test_fill_creates_what_the_source_lacks_only_through_the_callback():
    t = tensors()
    del t["head.kernel"]
    for n in range(3):
        del t[f"blocks.{n}.w"]
    seen = []

    def create(name, leaf):
        seen.append(name)
        if name == "head.kernel":
            return np.ones(leaf.shape, np.float32)  # NumPy: cast to the model dtype and placed
        return jnp.full(leaf.shape, 2.0, leaf.dtype)  # a JAX array: kept as it is

    out = fill(abstract(), t, create=create)
    assert sorted(seen) == ["blocks.w", "head.kernel"]
    assert out["head"]["kernel"].dtype == jnp.bfloat16 and float(out["head"]["kernel"].sum()) == 20
    assert float(out["blocks"]["w"][0, 0, 0]) == 2.0
    with pytest.raises(CheckpointError, match="missing key"):
        fill(abstract(), t, create=lambda name, leaf: None)


def test_checkpoint_round_trip_with_extras_and_family_check(tmp_path):
    t = tensors()
    write_checkpoint(tmp_path / "c", "dit", {"dim": 4}, {**t, "unused.weight": np.zeros(2, np.float32)},
                     source_naming="wan", extras=["unused.weight", "head.kernel"])
    meta = json.loads((tmp_path / "c" / JAX_META).read_text())
    assert meta == {"format": 1, "family": "dit", "config": {"dim": 4}, "source_naming": "wan",
                    "extras": ["unused.weight", "head.kernel"]}
    src = open_checkpoint(tmp_path / "c", "dit")
    out = fill(abstract(), src)  # an extra the model lacks is no unexpected key; one it has is read
    np.testing.assert_array_equal(np.asarray(out["blocks"]["w"][2]), t["blocks.2.w"])
    np.testing.assert_array_equal(np.asarray(out["head"]["kernel"], np.float32),
                                  t["head.kernel"].astype(jnp.bfloat16).astype(np.float32))
    with pytest.raises(CheckpointError, match="holds a 'dit' model, not 'vae'"):
        open_checkpoint(tmp_path / "c", "vae")
    write_checkpoint(tmp_path / "d", "dit", {}, {"x": np.zeros(1, np.float32)})
    (tmp_path / "d" / JAX_META).unlink()
    with pytest.raises(CheckpointError, match="not a yume_jax checkpoint"):
        open_checkpoint(tmp_path / "d", "dit")
    assert open_source(tmp_path / "d").meta is None


def test_fill_an_nnx_module(tmp_path):
    from flax import nnx

    from yume_jax.core.checkpoint import save_module

    m = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    save_module(tmp_path / "m", "toy", {}, m)
    out = fill(nnx.eval_shape(lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(1))), open_checkpoint(tmp_path / "m", "toy"))
    np.testing.assert_array_equal(np.asarray(out.kernel[...]), np.asarray(m.kernel[...]))
    x = jnp.ones((1, 3))
    np.testing.assert_allclose(np.asarray(out(x)), np.asarray(m(x)))
