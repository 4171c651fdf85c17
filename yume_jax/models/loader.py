"""``load_dit``: a converted checkpoint as a callable, jit-compiled, optionally sharded model.

    dit = yume_jax.load_dit("ckpt/", dtype="bfloat16")
    v = dit(hidden_states, timestep, text_context, image_context=None)

Inputs are NumPy or JAX arrays in the diffusers layout; the output equals diffusers'
``WanTransformer3DModel(...)(hidden_states, timestep, encoder_hidden_states,
encoder_hidden_states_image).sample``. The forward is compiled once per input shape.
"""
from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from yume_jax import sharding
from yume_jax.core import params as P
from yume_jax.core.checkpoint import fill, open_checkpoint, save_module
from yume_jax.models.config import DiTConfig, Runtime


def build(cfg: DiTConfig, *, seed: int = 0, param_dtype="float32", abstract: bool = False):
    """A randomly initialised model for ``cfg`` (Yume model when the config has history tiers)."""
    from yume_jax.models.yume import YumeDiT

    def make():
        return YumeDiT(cfg, rngs=nnx.Rngs(seed), param_dtype=jnp.dtype(param_dtype))

    return nnx.eval_shape(make) if abstract else make()


class DiT:
    """A DiT bound to its parameters, run-time policy and (optional) mesh."""

    def __init__(self, model: nnx.Module, runtime: Runtime = Runtime(), mesh=None):
        self.config: DiTConfig = model.cfg
        self.runtime = runtime
        self.mesh = mesh
        self.graphdef, self.params = nnx.split(model)
        if mesh is not None:
            self.params = shard_params(self.params, mesh)
        self._forward = jax.jit(self._apply, static_argnames=("chunk", "history_timestep"))

    @property
    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params)

    def _apply(self, params, hidden_states, timestep, text, image, chunk=None, history_timestep=None):
        with sharding.use_mesh(self.mesh):
            model = nnx.merge(self.graphdef, params)
            if self.mesh is not None:
                hidden_states = sharding.constrain(hidden_states, ("batch", None, None, None, None))
            return model(hidden_states, timestep, text, image, chunk=chunk, history_timestep=history_timestep,
                         runtime=self.runtime)

    def __call__(self, hidden_states, timestep, text_context, image_context=None, chunk: int | None = None,
                 history_timestep: float | None = None):
        """Velocity (B, C_out, F, H, W); with ``chunk=N`` the first F-N frames are compressed history and
        the output covers the last N frames. ``history_timestep=0.0``: clean history (Yume 1.5)."""
        x, t, txt, img = validate_inputs(self.config, hidden_states, timestep, text_context, image_context, chunk)
        if chunk is not None and chunk == x.shape[2]:
            chunk = None  # no history: exactly the plain forward (and the same compiled program)
        ht = None if history_timestep is None or chunk is None else float(history_timestep)
        return self._forward(self.params, x, t, txt, img, chunk=chunk, history_timestep=ht)


def validate_inputs(cfg: DiTConfig, hidden_states, timestep, text_context, image_context, chunk=None):
    """Shapes checked up front, with errors that name the argument (never a trace from inside JAX)."""
    x = jnp.asarray(hidden_states)
    if x.ndim != 5:
        raise ValueError(f"hidden_states must be (B, C, F, H, W); got shape {tuple(x.shape)}")
    b, c, f, h, w = x.shape
    if c != cfg.in_channels:
        raise ValueError(f"hidden_states has {c} channels; this model takes {cfg.in_channels}")
    pt, ph, pw = cfg.patch_size
    if f % pt or h % ph or w % pw:
        raise ValueError(f"hidden_states F, H, W = {f}, {h}, {w} must be multiples of the patch {cfg.patch_size}")
    if chunk is not None and not (0 < chunk <= f):
        raise ValueError(f"chunk={chunk} must be in 1..F={f}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"hidden_states must be floating point, got {x.dtype}")
    t = jnp.asarray(timestep, jnp.float32)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (b,))
    if t.ndim not in (1, 2) or t.shape[0] != b:
        raise ValueError(f"timestep must be (B,) or (B, tokens) with B={b}; got shape {tuple(t.shape)}")
    if t.ndim == 2 and chunk is None:
        tokens = (f // pt) * (h // ph) * (w // pw)
        if t.shape[1] != tokens:
            raise ValueError(f"per-token timestep has {t.shape[1]} entries; the input has {tokens} tokens")
    txt = jnp.asarray(text_context)
    if txt.ndim != 3 or txt.shape[0] != b or txt.shape[2] != cfg.text_dim:
        raise ValueError(f"text_context must be (B={b}, L, {cfg.text_dim}); got shape {tuple(txt.shape)}")
    img = None
    if cfg.image_dim is not None:
        if image_context is None:
            raise ValueError(f"this model has image cross-attention: image_context (B, 257, {cfg.image_dim}) "
                             "is required")
        img = jnp.asarray(image_context)
        if img.ndim != 3 or img.shape[0] != b or img.shape[2] != cfg.image_dim:
            raise ValueError(f"image_context must be (B={b}, N, {cfg.image_dim}); got shape {tuple(img.shape)}")
    elif image_context is not None:
        raise ValueError("this model has no image cross-attention; image_context must be None")
    return x, t, txt, img


def shard_params(state, mesh):
    flat = P.flatten(state)
    shardings = sharding.param_shardings({k: v.shape for k, v in flat.items()}, mesh)
    return P.map_named(state, lambda name, leaf: jax.device_put(leaf, shardings[name]))


def load_dit(path: str | os.PathLike, dtype: str = "float32", *, param_dtype: str | None = None,
             attention: str = "auto", remat: str = "none", mesh=None, seq_parallel: str = "auto") -> DiT:
    """Load a converted DiT checkpoint (``python -m yume_jax.convert`` output).

    ``dtype`` is the compute dtype; parameters are held in ``param_dtype`` (default: ``dtype``).
    With ``mesh`` (see :func:`yume_jax.sharding.make_mesh`) parameters are placed by the logical
    axis table and the forward runs sharded; ``seq_parallel`` picks the self-attention's strategy over the
    mesh's context axis (``Runtime.seq_parallel``: auto, ulysses, gather; yume_jax/models/attention.py).
    """
    src = open_checkpoint(path, "dit")
    cfg = DiTConfig.from_dict(src.meta["config"])
    abstract = build(cfg, param_dtype=jnp.dtype(param_dtype or dtype), abstract=True)
    place = None
    if mesh is not None:
        flat = P.flatten(nnx.state(abstract))
        shardings = sharding.param_shardings({k: v.shape for k, v in flat.items()}, mesh)
        place = lambda name, arr: jax.device_put(arr, shardings[name])  # noqa: E731
    model = fill(abstract, src, place=place)
    return DiT(model, Runtime(dtype=dtype, attention=attention, remat=remat, seq_parallel=seq_parallel), mesh=mesh)


def save_dit(model: nnx.Module, path: str | os.PathLike) -> Path:
    """Write a model as a yume_jax checkpoint directory (params in their current dtype)."""
    return save_module(path, "dit", model.cfg.to_dict(), model)
