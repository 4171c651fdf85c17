"""Training the Wan 2.1-architecture VAE (spec/wan.md "VAE": causal 3D convolutions, 4x temporal and 8x spatial
compression, z channels) on sandbox clips: the first stage of the embedded default model (docs/default_model.md).

The forward pass is the one inference runs (:class:`yume_jax.vae.stream.WanVAE`): the encoder takes the
frames in causal chunks of 1, 4, 4, ... threading its feature cache, the posterior moments come from
``quant_conv``; a latent z = mu + sigma * eps (the reparameterisation) is decoded one latent frame at a
time, threading the decoder's cache. Loss per sample (pixels in [-1, 1])::

    L = w_mse * mean (x_hat - x)^2 + w_l1 * mean |x_hat - x| + w_grad * mean |grad x_hat - grad x| + w_kl * KL

``w_grad`` weights an image-gradient (edge) term: finite differences along height and width, a cheap
sharpness term (no perceptual network can be fetched here). KL is the mean over latent elements of
KL(N(mu, sigma) || N(0, 1)). After training, :func:`latent_stats` measures the per-channel mean and std of
the latents (the config's ``latents_mean`` / ``latents_std``, so the DiT sees unit-scale latents) and
:func:`export` writes the VAE checkpoint that ``yume_jax.load_vae`` reads.

Data: a pool of sandbox walks rendered on the device at setup (:mod:`yume_jax.train.sandbox`), windows of
``frames`` = 4n + 1 consecutive frames at random starts, through the shared Grain pipeline (shuffled,
resumable, sharded per process).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from yume_jax.data import pipeline as pl
from yume_jax.train import state as state_lib
from yume_jax.train import step as step_lib
from yume_jax.train.task import Env, Prepared
from yume_jax.vae.config import VAEConfig
from yume_jax.vae.layers import Cache
from yume_jax.vae.model import WanVAEModel

MODEL = "vae"


@dataclasses.dataclass(frozen=True)
class VAETaskConfig:
    """``--vae.*`` of a ``--task=vae`` run."""

    preset: str = "sandbox-2.1"  # yume_jax.presets.VAE name
    arch: dict = dataclasses.field(default_factory=dict)  # VAEConfig overrides, e.g. {"base_dim": 24}
    frames: int = 9  # 4n + 1 frames per training window
    mse_weight: float = 1.0
    l1_weight: float = 1.0
    grad_weight: float = 0.5
    kl_weight: float = 1e-6
    clips: int = 64  # sandbox walks rendered at setup (the pool)
    clip_frames: int = 48  # frames per walk
    world: str = "default"  # yume_jax.data.world.PRESETS name (its size is the training resolution)
    dtype: str = "bfloat16"  # compute dtype (parameters stay float32)


# ------------------------------------------------------------------------------------------------ model

def chunks(frames: int) -> list[tuple[int, int]]:
    """The encoder's causal chunks of a 4n + 1-frame clip: [0, 1), [1, 5), [5, 9), ..."""
    if frames < 1 or frames % 4 != 1:
        raise ValueError(f"a VAE clip has 4n + 1 frames, got {frames}")
    return [(0, 1)] + [(s, s + 4) for s in range(1, frames, 4)]


def encode_moments(model: WanVAEModel, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Channels-last pixels (B, T, H, W, 3) -> (mu, logvar), each (B, n + 1, h, w, z): the inference encoder's
    chunking (:meth:`WanVAEModel.encode_chunk` per chunk), both halves of ``quant_conv``."""
    prev, out = None, []
    for a, b in chunks(x.shape[1]):
        c = Cache(prev)
        out.append(model.quant_conv(model.encoder(x[:, a:b], c)))
        prev = tuple(c.next)
    m = jnp.concatenate(out, axis=1).astype(jnp.float32)
    z = model.cfg.z_dim
    return m[..., :z], jnp.clip(m[..., z:], -30.0, 20.0)


def decode(model: WanVAEModel, z: jax.Array) -> jax.Array:
    """Latents (B, t, h, w, z) -> pixels (B, 4 (t - 1) + 1, H, W, 3), one latent frame at a time (the inference
    decoder's chunking), not clamped."""
    prev, out = None, []
    for i in range(z.shape[1]):
        c = Cache(prev)
        out.append(model.decode_chunk(z[:, i:i + 1], c))
        prev = tuple(c.next)
    return jnp.concatenate(out, axis=1)


def loss_fn(model: WanVAEModel, x: jax.Array, key, cfg: VAETaskConfig, dtype) -> tuple[jax.Array, dict]:
    """The objective of the module docstring for pixels ``x`` (B, T, H, W, 3) in [-1, 1]."""
    mu, logvar = encode_moments(model, x.astype(dtype))
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, jnp.float32)
    y = decode(model, z.astype(dtype)).astype(jnp.float32)
    d = y - x
    mse = jnp.mean(jnp.square(d))
    l1 = jnp.mean(jnp.abs(d))

    def grads(a):
        return a[:, :, 1:, :] - a[:, :, :-1, :], a[:, :, :, 1:] - a[:, :, :, :-1]

    (gy, gx), (ty, tx) = grads(y), grads(x)
    edge = 0.5 * (jnp.mean(jnp.abs(gy - ty)) + jnp.mean(jnp.abs(gx - tx)))
    kl = 0.5 * jnp.mean(jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar)
    loss = cfg.mse_weight * mse + cfg.l1_weight * l1 + cfg.grad_weight * edge + cfg.kl_weight * kl
    psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(jnp.mean(jnp.square(jnp.clip(y, -1, 1) - x)), 1e-10))
    return loss, {"mse": mse, "l1": l1, "edge": edge, "kl": kl, "psnr": psnr,
                  "sigma": jnp.mean(jnp.exp(0.5 * logvar))}


# ------------------------------------------------------------------------------------------------ data

class Window:
    """``random_map`` function: item -> a ``frames``-long window of a random pool walk, (T, H, W, 3) in [-1, 1]."""

    def __init__(self, frames: np.ndarray, length: int):
        self.frames, self.length = frames, length

    def __call__(self, index, rng: np.random.Generator) -> dict:
        n, t = self.frames.shape[:2]
        clip = int(index) % n
        start = int(rng.integers(0, t - self.length + 1))
        x = self.frames[clip, start:start + self.length].astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)
        return {"video": x, "clip": np.int32(clip), "start": np.int32(start)}


def _stack(items: list[dict]) -> dict:
    return {k: np.stack([x[k] for x in items]) for k in items[0]}


# ------------------------------------------------------------------------------------------------ task

def _replicated(params, mesh):
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), params)


@dataclasses.dataclass
class VAETask:
    """The trainer's task (:class:`yume_jax.train.task.Task`) for the VAE. ``optim``: configs.train.OptimConfig;
    ``world``: the yume_jax.data.world.WorldConfig of the pool; parameters are replicated (a small model:
    data parallel over every mesh axis)."""

    vae: VAEConfig
    task: VAETaskConfig
    optim: Any
    world: Any
    steps: int
    seed: int = 0
    model_seed: int = 0

    device_keys = ("video",)
    env: Env | None = None

    def __post_init__(self):
        chunks(self.task.frames)
        if self.task.clip_frames < self.task.frames:
            raise ValueError(f"--vae.clip_frames={self.task.clip_frames} is shorter than --vae.frames={self.task.frames}")
        s = self.vae.spatial_stride
        if self.world.height % s or self.world.width % s:
            raise ValueError(f"world size {self.world.height}x{self.world.width} is not a multiple of the VAE's "
                             f"spatial stride {s}")

    @functools.cached_property
    def _opt(self):
        return state_lib.make_optimizer(self.optim, self.steps)

    @functools.cached_property
    def graphdef(self):
        return nnx.split(nnx.eval_shape(lambda: WanVAEModel(self.vae, rngs=nnx.Rngs(0))))[0]

    @functools.cached_property
    def models(self) -> dict[str, state_lib.Model]:
        _, st = nnx.split(nnx.eval_shape(lambda: WanVAEModel(self.vae, rngs=nnx.Rngs(0))))
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), nnx.to_pure_dict(st))
        return {MODEL: state_lib.Model(self.graphdef, abstract, self._opt[0], self.optim.ema_decay,
                                       shardings=_replicated)}

    @functools.cached_property
    def _abstract(self):
        return state_lib.abstract_state(self.models)

    def setup(self, env: Env):
        from yume_jax.train.sandbox import render_pool

        self.env = env
        t = self.task
        env.log(f"rendering {t.clips} sandbox walks of {t.clip_frames} frames at {self.world.height}x{self.world.width}")
        # every process renders the same pool (seeded) and reads its own shard of the items
        self.pool = render_pool(t.clips, t.clip_frames, self.world, seed=self.seed + 1000, progress=env.is_main)
        loader = pl.LoaderConfig(seed=self.seed, batch_size=env.local_batch, read_threads=1, read_buffer=2)
        return pl.build(1 << 30, Window(self.pool.frames, t.frames), loader, env.shard_index, env.shard_count,
                        collate_fn=_stack)

    def abstract_state(self):
        return self._abstract

    def state_shardings(self, mesh):
        return state_lib.state_shardings(self.models, self._abstract, mesh)

    def init_state(self, shardings):
        model = WanVAEModel(self.vae, rngs=nnx.Rngs(self.model_seed))
        params = jax.device_put(nnx.to_pure_dict(nnx.state(model)), shardings[MODEL]["params"])
        return state_lib.init_state(self.models, {MODEL: params}, self.seed, shardings)

    def prepare(self, batch: dict, step: int) -> Prepared:
        x = np.asarray(batch["video"], np.float32)
        return Prepared(batch={"video": x}, key=x.shape[1:], flops=0.0,
                        ids={k: batch[k] for k in ("clip", "start") if k in batch})

    def make_step(self, key, mesh, state_sh, batch_sh):
        graphdef, cfg, opt, schedule = self.graphdef, self.task, self._opt[0], self._opt[1]
        dtype = jnp.dtype(cfg.dtype)
        ema = self.optim.ema_decay

        def micro(params, mb, k):  # compute in ``dtype`` (as WanVAE casts its parameters), float32 master weights
            cast = jax.tree.map(lambda p: p.astype(dtype), params)
            return loss_fn(nnx.merge(graphdef, cast), mb["video"], k, cfg, dtype)

        def step(state, batch):
            entry = state[MODEL]
            loss, aux, grads = step_lib.accumulate(micro, entry["params"], batch, step_lib.step_key(state))
            new = {**state, "step": state["step"] + 1,
                   MODEL: step_lib.apply_gradients(entry, grads, opt, ema)}
            return new, {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"])}

        return step_lib.jit_step(step, mesh, state_sh, batch_sh)


# ------------------------------------------------------------------------------------------------ export

def trained_params(run_dir, use_ema: bool = True) -> tuple[dict, int]:
    """The flat ``{name: array}`` parameters of the newest checkpoint of a ``--task=vae`` run, and its step."""
    from yume_jax.core import params as Pm
    from yume_jax.train.checkpoint import read_state

    step, state = read_state(Path(run_dir) / "checkpoints")
    entry = state[MODEL]
    tree = entry["ema"] if use_ema and entry.get("ema") else entry["params"]
    return {k: np.asarray(v, np.float32) for k, v in Pm.flatten(tree).items()}, step


def latent_stats(cfg: VAEConfig, params: dict, videos: np.ndarray, batch: int = 8) -> tuple[tuple, tuple]:
    """Per-channel mean and std of the posterior means of ``videos`` (N, 3, T, H, W) in [-1, 1]."""
    from yume_jax.vae import WanVAE

    vae = WanVAE(cfg, params)
    z = np.concatenate([np.asarray(vae.encode(videos[i:i + batch], normalize=False))
                        for i in range(0, len(videos), batch)])
    axes = (0, 2, 3, 4)
    return tuple(float(v) for v in z.mean(axes)), tuple(float(v) for v in z.std(axes))


def export(out, cfg: VAEConfig, params: dict, videos: np.ndarray | None = None, dtype: str | None = None) -> Path:
    """Write a VAE checkpoint (``yume_jax.load_vae(out)``); with ``videos`` the config's latent statistics are
    measured on them first. ``dtype``: storage dtype (default float32)."""
    from yume_jax.core.checkpoint import write_checkpoint

    if videos is not None:
        mean, std = latent_stats(cfg, params, videos)
        cfg = dataclasses.replace(cfg, latents_mean=mean, latents_std=std)
    arrays = params
    if dtype is not None:
        import ml_dtypes
        arrays = {k: np.asarray(v).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
                  for k, v in params.items()}
    write_checkpoint(Path(out), "vae", cfg.to_dict(), arrays)
    return Path(out)
