"""Parameters of the VAE as a flat ``{"encoder.conv_in.kernel": array}`` mapping and back to a Flax state."""
from __future__ import annotations

from functools import lru_cache

import jax
import numpy as np
from flax import nnx

from yume_jax.core.checkpoint import fill
from yume_jax.vae.config import VAEConfig
from yume_jax.vae.model import WanVAEModel


def _name(path) -> str:
    return ".".join(str(p) for p in path)


@lru_cache(maxsize=16)
def _abstract(cfg: VAEConfig):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: WanVAEModel(cfg, rngs=nnx.Rngs(0))))
    return graphdef, {_name(p): tuple(v.shape) for p, v in nnx.to_flat_state(state)}, state


def _abstract_state(cfg: VAEConfig) -> nnx.State:
    return _abstract(cfg)[2]


def abstract_params(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter name and shape of a VAE with ``cfg``, in module order."""
    return dict(_abstract(cfg)[1])


def graphdef(cfg: VAEConfig):
    return _abstract(cfg)[0]


def init_params(cfg: VAEConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random parameters (benchmarks, tests; NumPy, so no per-shape eager compiles): kernels N(0, 1/fan_in),
    biases 0, RMS gammas 1. Real ones come from a converted checkpoint."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in abstract_params(cfg).items():
        leaf = k.rsplit(".", 1)[-1]
        if leaf == "kernel":
            out[k] = (rng.standard_normal(shape, np.float32) * np.prod(shape[:-1]) ** -0.5).astype(np.float32)
        else:
            out[k] = (np.ones if leaf == "gamma" else np.zeros)(shape, np.float32)
    return out


def to_state(cfg: VAEConfig, params: dict, dtype, *, file=None) -> nnx.State:
    """Check names and shapes against the model (a mismatched checkpoint fails here, naming the key)."""
    return fill(_abstract_state(cfg), params, dtype=dtype, file=file)


def cast_state(state: nnx.State, dtype) -> nnx.State:
    return jax.tree.map(lambda a: a.astype(dtype), state)
