"""The rectified-flow + MVDT task on one Yume / Wan DiT (objective: :mod:`yume_jax.train.objective`,
spec/yume.md "Training objective", "MVDT", "History memory").

State: one trainable model ``"dit"`` (float32 master parameters, AdamW with warmup + schedule +
global-norm clipping from :func:`yume_jax.train.state.make_optimizer`, optional EMA). Data: the
sources of :mod:`yume_jax.train.data`. Per step, on the host: the history is rounded down to a bucket
agreed by all processes and the MVDT kept-token count is drawn (:func:`objective.keep_for_step`); the
pair (chunk, keep) is the static variant of the step. bf16 compute with fp32 master weights: the model
casts each matmul kernel to the compute dtype where it is used, so gradients of a kernel used in
several places (plain and MVDT pass) are summed in float32.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import optax
from flax import nnx

from yume_jax.data.pipeline import RawConfig
from yume_jax.models.config import DiTConfig, Runtime
from yume_jax.train import data as data_lib
from yume_jax.train import metrics as mt
from yume_jax.train import objective
from yume_jax.train import state as state_lib
from yume_jax.train import step as step_lib
from yume_jax.train.task import Env, Prepared

MODEL = "dit"
IDS = ("clip", "start", "item")


def flow_step(graphdef, optimizer: optax.GradientTransformation, schedule: optax.Schedule, *, objective_cfg,
              runtime: Runtime | None, chunk: int, keep: int | None, ema_decay: float = 0.0, grad_shardings=None):
    """step(state, batch) -> (state, metrics) of the flow objective for one static (chunk, keep), to jit with
    :func:`yume_jax.train.step.jit_step`. ``batch``: (A, B/A, ...) latents, text and (image models) image."""
    ob = objective_cfg

    def micro_loss(params, mb, key):
        model = nnx.merge(graphdef, params)
        return objective.loss(model, mb, key, chunk=chunk, keep=keep, history=ob.history, t_mean=ob.t_mean,
                              t_std=ob.t_std, shift=ob.shift, i2v=ob.i2v, runtime=runtime)

    def step(state, batch):
        entry = state[MODEL]
        loss, aux, grads = step_lib.accumulate(micro_loss, entry["params"], batch, step_lib.step_key(state),
                                               grad_shardings)
        grad_norm = optax.tree.norm(grads)
        new = {**state, "step": state["step"] + 1, MODEL: step_lib.apply_gradients(entry, grads, optimizer, ema_decay)}
        return new, {"loss": loss, **aux, "grad_norm": grad_norm, "lr": schedule(state["step"])}

    return step


@dataclasses.dataclass
class FlowTask:
    """Sections: ``data`` (``configs.train.DataConfig``), ``objective`` (ObjectiveConfig), ``optim``
    (OptimConfig; its ``grad_accum`` is the trainer's); ``init``: a converted Wan/Yume checkpoint to
    start from (None: random init with ``model_seed``); ``seed``: noise, timesteps, mask ratios."""

    dit: DiTConfig
    raw: RawConfig
    data: Any
    objective: Any
    optim: Any
    runtime: Runtime
    steps: int  # total optimizer steps (the learning-rate schedule)
    seed: int = 0
    init: str | None = None
    model_seed: int = 0

    device_keys = ("latents", "text", "image", "gray")  # gray: I2V channels continuation (data/latents.py)

    env: Env | None = None  # set by setup

    # built on first use, so that constructing the task traces nothing (setup errors come first)
    @functools.cached_property
    def _opt(self) -> tuple[optax.GradientTransformation, optax.Schedule]:
        return state_lib.make_optimizer(self.optim, self.steps)

    @property
    def optimizer(self) -> optax.GradientTransformation:
        return self._opt[0]

    @property
    def schedule(self) -> optax.Schedule:
        return self._opt[1]

    @functools.cached_property
    def models(self) -> dict[str, state_lib.Model]:
        graphdef, params = state_lib.graphdef_and_abstract(self.dit)
        return {MODEL: state_lib.Model(graphdef, params, self.optimizer, self.optim.ema_decay)}

    @property
    def graphdef(self):
        return self.models[MODEL].graphdef

    @functools.cached_property
    def _abstract(self):
        return state_lib.abstract_state(self.models)

    # -- data ----------------------------------------------------------------------------------------
    def setup(self, env: Env):
        d = self.data
        self.env = env
        self.global_batch = env.local_batch * env.shard_count
        if d.source == "synthetic" and d.history_latents and d.synthetic_history not in d.history_latents:
            raise ValueError(f"--data.synthetic_history={d.synthetic_history} is not one of --data.history_latents")
        path = Path(d.path).absolute() if d.path else env.run_dir / "world"
        if d.source == "pool":
            return self._pool(env, path)
        try:
            if d.source == "sandbox":
                if env.is_main:
                    data_lib.ensure_world(path, d, self.raw)
                env.barrier("world")
            self.shapes = data_lib.describe(d, self.raw, self.dit, path)
            return data_lib.dataset(d, self.raw, self.dit, env.local_batch, env.shard_index, env.shard_count, path)
        except (ValueError, OSError) as e:  # no clips, wrong dataset, shapes that do not fit the model
            raise ValueError(f"--data: {e}") from None

    def _pool(self, env: Env, encoders: Path):
        """--data.source=pool: walks rendered on the device, encoded per batch by the frozen VAE, text and image
        encoders of the pipeline directory --data.path (yume_jax/train/sandbox.py)."""
        from yume_jax.data import world
        from yume_jax.train import sandbox

        d, raw = self.data, self.raw
        if not (encoders / "vae").is_dir() or not (encoders / "text_encoder").is_dir():
            raise ValueError(f"--data.path={encoders}: --data.source=pool needs a pipeline directory with the frozen "
                             "vae/ and text_encoder/ (and image_encoder/ for an image model)")
        st, sh, sw = d.vae_stride
        chunk = (raw.chunk_frames - 1) // st + 1
        self.shapes = data_lib.Shapes(chunk, (raw.height // sh, raw.width // sw), d.latent_channels, d.text_len,
                                      self.dit.text_dim, d.image_tokens if self.dit.image_dim is not None else 0)
        wcfg = world.PRESETS[d.world].replace(height=raw.height, width=raw.width)
        env.log(f"rendering {d.generate} sandbox walks of {d.generate_frames} frames at {raw.height}x{raw.width}")
        pool = sandbox.render_pool(d.generate, d.generate_frames, wcfg, seed=d.seed, progress=env.is_main)
        return sandbox.pool_dataset(pool, encoders, env.local_batch, chunk, d.history_latents or (1,), raw, d.seed,
                                    env.shard_index, env.shard_count, i2v_prob=raw.i2v_prob, text_len=d.text_len,
                                    log=env.log)

    # -- state ---------------------------------------------------------------------------------------
    def abstract_state(self):
        return self._abstract

    def state_shardings(self, mesh):
        return state_lib.state_shardings(self.models, self._abstract, mesh)

    def init_state(self, shardings):
        psh = shardings[MODEL]["params"]
        if self.init:
            params, created = state_lib.checkpoint_params(self.init, self.dit, self.model_seed, psh)
            self.env.log(f"initialised from {self.init}" + (f"; new: {', '.join(created)}" if created else ""))
        else:
            params = state_lib.random_params(self.dit, self.model_seed, psh)
        return state_lib.init_state(self.models, {MODEL: params}, self.seed, shardings)

    # -- steps ---------------------------------------------------------------------------------------
    def prepare(self, batch: dict, step: int) -> Prepared:
        """History bucketing (identical on all processes) and the static MVDT kept-token count."""
        nh = int(batch["num_history"][0])
        keep_h = self.env.agree_min(data_lib.history_bucket(nh, self.data.history_latents))
        if keep_h != nh:
            batch = data_lib.trim_history(batch, keep_h)
        chunk, (h, w) = self.shapes.chunk, self.shapes.latent_hw
        f = batch["latents"].shape[2]
        tokens = objective.num_tokens(f, h, w, chunk)
        keep = None
        if self.objective.mvdt:
            ob = self.objective
            keep = objective.keep_for_step(self.seed, step, tokens, ob.mask_low, ob.mask_width, ob.mask_buckets)
        fw = mt.forward_flops(self.dit, f, h, w, chunk, self.shapes.text_len, self.shapes.image_tokens, keep)
        dev = {k: np.asarray(batch[k], np.float32) for k in self.device_keys if k in batch}
        return Prepared(batch=dev, key=(chunk, keep), flops=self.global_batch * mt.train_flops(fw),
                        tokens=self.global_batch * tokens, ids={k: batch[k] for k in IDS if k in batch})

    def make_step(self, key, mesh, state_sh, batch_sh):
        chunk, keep = key
        fn = flow_step(self.graphdef, self.optimizer, self.schedule, objective_cfg=self.objective,
                       runtime=self.runtime, chunk=chunk, keep=keep, ema_decay=self.optim.ema_decay,
                       grad_shardings=state_sh[MODEL]["params"])
        return step_lib.jit_step(fn, mesh, state_sh, batch_sh)
