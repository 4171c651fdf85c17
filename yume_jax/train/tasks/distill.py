"""Few-step distillation of a Yume / Wan DiT: DMD2 distribution matching + an adversarial hinge loss whose
discriminator reads DiT features (spec/yume.md "Distillation and caching"; docs/distillation.md).

State (:mod:`yume_jax.train.state`): ``student`` (trainable, EMA), ``teacher`` (frozen: parameters only),
``critic`` = {"dit": the fake-score DiT, "disc": the discriminator head} (trainable, one optimizer). The
student and the critic start from the teacher's weights; all three DiTs are FSDP-sharded by the logical
table of :mod:`yume_jax.sharding`, the small head is replicated.

One optimizer step, per micro-batch (data: the flow task's batches; real latents are the discriminator's
real examples and the conditioning source):

1. **Train as it samples** (no gradient): the last ``g = min(chunk, history - 1)`` history frames are
   replaced by the student's own ``K``-step Euler sample after the earlier history (``self_history``),
   then the student runs its rollout of the chunk at its exact sigmas from noise; step ``i ~ U{0..K-1}``
   per sample is picked (backward simulation) and the student's prediction from ``x_{sigma_i}``,
   ``x0 = x - sigma_i v``, is the fake sample (at the last step this is the sampler's output). History
   mode (static per step): ``noised`` (history re-noised at the chunk's sigma with a fixed draw, Yume 1.0)
   or ``clean`` (t = 0 on history tokens, Yume 1.5); ``both`` alternates by step.
2. ``critic_steps`` times: critic loss = flow loss of the critic on the fake samples (x_t = t eps + (1 - t)
   x0, shifted logit-normal t, target eps - x0) + ``disc_weight`` * hinge(D(real), D(fake)); D = head on
   the chosen blocks' outputs (chunk tokens) of the critic (or frozen teacher) at a sampled noise level.
3. Student loss = ``dmd_weight`` * 0.5 ||x0 - sg(x0 - grad)||^2 (mean), grad = (p_fake - p_real) /
   mean|x0 - p_real| with p = x_t - t v the x0-predictions of the critic and of the CFG-guided teacher on
   the re-noised sample (t ~ U[t_min, t_max]), + ``adv_weight`` * (-D(fake)); the gradient flows only
   through the student's last step.

The teacher's unconditional context is zero text features (the batch carries no negative-prompt
embedding; same image / I2V channels).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from yume_jax.models.conditioning import i2v_channels
from yume_jax.models.layers import F32, layer_norm
from yume_jax.sampling.schedules import explicit_sigmas, shifted_sigmas
from yume_jax.train import data as data_lib
from yume_jax.train import metrics as mt
from yume_jax.train import objective
from yume_jax.train import state as state_lib
from yume_jax.train import step as step_lib
from yume_jax.train.task import Prepared
from yume_jax.train.tasks.flow import IDS, FlowTask

STUDENT, TEACHER, CRITIC = "student", "teacher", "critic"
MODES = ("noised", "clean")


# ------------------------------------------------------------------------------------------------
# the pieces (pure functions; the analytic tests drive them with closed-form velocities)

def student_sigmas(d) -> np.ndarray:
    """The student's N + 1 sigmas: ``d.sigmas`` if given, else the shifted schedule of ``d.student_steps``."""
    return explicit_sigmas(d.sigmas) if d.sigmas else shifted_sigmas(d.student_steps, d.shift)


def euler_rollout(velocity, noise, sigmas):
    """The Euler sampler (as :mod:`yume_jax.sampling.euler`, one scan) from ``noise``: its step inputs x_{sigma_i}
    and predictions x0_i = x_i - sigma_i v(x_i, sigma_i), both (N, B, ...). With a final sigma of 0 the
    sampler's output is the last prediction: x_N = x_{N-1} - sigma_{N-1} v = x0_{N-1}."""
    s = jnp.asarray(sigmas, F32)
    b = noise.shape[0]

    def body(x, i):
        v = velocity(x, jnp.full((b,), s[i]))
        return x + (s[i + 1] - s[i]) * v, (x, x - s[i] * v)

    _, (xs, x0s) = jax.lax.scan(body, noise, jnp.arange(s.shape[0] - 1))
    return xs, x0s


def backward_simulation(velocity, noise, sigmas, key):
    """(x_i, sigma_i, x0_i) per sample at a uniformly drawn step i of the student's own rollout, all
    stop-gradient: the input of the step whose prediction is trained (DMD2 backward simulation), its sigma and
    the prediction itself (the fake sample)."""
    xs, x0s = jax.lax.stop_gradient(euler_rollout(velocity, noise, sigmas))
    b = noise.shape[0]
    i = jax.random.randint(key, (b,), 0, xs.shape[0])
    pick = lambda a: jnp.take_along_axis(a, i.reshape(1, b, *([1] * (noise.ndim - 1))), axis=0)[0]  # noqa: E731
    return pick(xs), jnp.asarray(sigmas, F32)[i], pick(x0s)


def predict_x0(velocity, x, sigma):
    """x0 = x - sigma v(x, sigma): the last Euler step to sigma = 0 (sigma (B,))."""
    return x - _bc(sigma, x) * velocity(x, sigma)


def _bc(t, x):
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def dmd_loss(x0, real_velocity, fake_velocity, key, t_min: float = 0.02, t_max: float = 0.98):
    """DMD2's surrogate: 0.5 mean (x0 - sg(x0 - grad))^2 with grad = (p_fake - p_real) / mean|x0 - p_real| (per
    sample), p = x_t - t v the x0-predictions of the fake (critic) and real (guided teacher) velocities at x_t
    = t eps + (1 - t) sg(x0), t ~ U[t_min, t_max]. Its gradient in x0 is grad / x0.size: the KL gradient
    of the student's distribution towards the teacher's. Returns (loss, |grad| mean)."""
    kt, ke = jax.random.split(key)
    b = x0.shape[0]
    t = jax.random.uniform(kt, (b,), F32, t_min, t_max)
    eps = jax.random.normal(ke, x0.shape, F32)
    xs = jax.lax.stop_gradient(x0)
    xt = objective.interpolate(xs, eps, t)
    tb = _bc(t, x0)
    p_real = jax.lax.stop_gradient(xt - tb * real_velocity(xt, t))
    p_fake = jax.lax.stop_gradient(xt - tb * fake_velocity(xt, t))
    norm = jnp.mean(jnp.abs(xs - p_real), axis=tuple(range(1, x0.ndim)), keepdims=True)
    grad = jnp.nan_to_num((p_fake - p_real) / jnp.maximum(norm, 1e-6))
    loss = 0.5 * jnp.mean(jnp.square(x0 - jax.lax.stop_gradient(x0 - grad)))
    return loss, jnp.mean(jnp.abs(grad))


def flow_loss(velocity, x0, key, *, t_mean=0.0, t_std=1.0, shift=3.0):
    """The critic's rectified-flow loss on (fake) samples x0: mse(v(x_t, t), eps - x0)."""
    kt, ke = jax.random.split(key)
    t = objective.sample_t(kt, x0.shape[0], t_mean, t_std, shift)
    eps = jax.random.normal(ke, x0.shape, F32)
    return objective.mse(velocity(objective.interpolate(x0, eps, t), t), eps - x0)


def hinge_d(real_logits, fake_logits):
    """Discriminator hinge loss and accuracy (real > 0, fake < 0)."""
    loss = jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
    acc = 0.5 * (jnp.mean((real_logits > 0).astype(F32)) + jnp.mean((fake_logits < 0).astype(F32)))
    return loss, acc


def hinge_g(fake_logits):
    """Generator side of the hinge loss."""
    return -jnp.mean(fake_logits)


# ------------------------------------------------------------------------------------------------
# the discriminator head on DiT features

def init_head(key, dim: int, hidden: int, num_features: int) -> dict:
    """Per feature layer: LayerNorm (no affine) -> Linear(dim, hidden) -> SiLU -> Linear(hidden, 1) per token."""
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (num_features, dim, hidden), F32) / dim ** 0.5,
            "b1": jnp.zeros((num_features, hidden), F32),
            "w2": jax.random.normal(k2, (num_features, hidden), F32) / hidden ** 0.5,
            "b2": jnp.zeros((num_features,), F32)}


def head_logits(head: dict, feats: list[jax.Array]) -> jax.Array:
    """(B,) logits: the per-token outputs averaged over tokens and feature layers."""
    out = 0.0
    for j, f in enumerate(feats):
        h = jax.nn.silu(layer_norm(f.astype(F32), 1e-6) @ head["w1"][j] + head["b1"][j])
        out = out + jnp.mean(h @ head["w2"][j] + head["b2"][j], axis=1)
    return out / len(feats)


def dit_features(model, inp, t, text, image, *, chunk, history_timestep, runtime, layers):
    """Outputs (chunk tokens, (B, L_chunk, D) float32) of blocks ``layers`` of a Yume DiT, as its forward
    computes them (:meth:`yume_jax.models.wan.WanDiT.block_features`; only the blocks up to the last)."""
    x, pos, _, n_chunk = model.embed(inp, chunk, runtime)
    tt = model.token_timesteps(t, history_timestep, x.shape[1], n_chunk)
    cond = model.condition(tt, text, image, runtime)
    return [f[:, -n_chunk:] for f in model.block_features(x, cond, pos, runtime, layers)]


# ------------------------------------------------------------------------------------------------
# DiT velocities on [history | chunk]

@dataclasses.dataclass(frozen=True)
class Context:
    """What conditions a chunk: text, image, clean history (B, C, nh, H, W) or None, its fixed re-noising
    draw (noised mode), the I2V continuation of the chunk (gray) and frame 0 when there is no history."""

    text: Any
    image: Any
    hist: Any
    hist_noise: Any
    gray: Any
    first: Any  # (B, C, 1, H, W): the conditioning frame of an I2V model without history (the image latent)

    def uncond(self) -> "Context":
        return dataclasses.replace(self, text=jnp.zeros_like(self.text))


def model_input(x, sigma, ctx: Context, mode: str, i2v: bool):
    """(input, chunk, history_timestep) for chunk latents x at per-sample sigma (B,)."""
    nh = 0 if ctx.hist is None else ctx.hist.shape[2]
    ht = None
    if nh:
        if mode == "clean":
            h, ht = ctx.hist, 0.0
        else:
            h = objective.interpolate(ctx.hist, ctx.hist_noise, sigma)
        full = jnp.concatenate([h, x], axis=2)
    else:
        full = x
    if i2v:
        src = jnp.concatenate([ctx.hist, jnp.zeros_like(x)], axis=2) if nh else jnp.concatenate(
            [ctx.first, jnp.zeros_like(x[:, :, 1:])], axis=2)
        full = jnp.concatenate([full, i2v_channels(src, nh, ctx.gray)], axis=1)
    return full, (x.shape[2] if nh else None), ht


def dit_velocity(graphdef, params, ctx: Context, mode: str, runtime):
    """``velocity(x, sigma (B,)) -> v`` of the chunk for the DiT ``params`` conditioned on ``ctx``."""
    model = nnx.merge(graphdef, params)
    i2v = model.cfg.in_channels != model.cfg.out_channels

    def velocity(x, sigma):
        inp, chunk, ht = model_input(x, sigma, ctx, mode, i2v)
        return model(inp, sigma * 1000.0, ctx.text, ctx.image, chunk=chunk, history_timestep=ht,
                     runtime=runtime).astype(F32)

    return velocity


def concat(a: Context, b: Context) -> Context:
    """Two contexts as one batch (the two halves of one model call)."""
    cat = lambda x, y: None if x is None else jnp.concatenate([x, y])  # noqa: E731
    return Context(*(cat(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(Context)))


def guided_velocity(graphdef, params, ctx: Context, mode: str, runtime, scale: float):
    """The CFG velocity v_u + scale (v_c - v_u) (unconditional: zero text), cond and uncond in ONE batch of 2B
    (one model call); scale 1: the conditional velocity alone."""
    if scale == 1.0:
        return dit_velocity(graphdef, params, ctx, mode, runtime)
    v2 = dit_velocity(graphdef, params, concat(ctx, ctx.uncond()), mode, runtime)

    def velocity(x, t):
        b = x.shape[0]
        out = v2(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
        vc, vu = out[:b], out[b:]
        return vu + scale * (vc - vu)

    return velocity


def disc_logits(graphdef, dit_params, head, x0, t, eps, ctx: Context, mode: str, runtime, layers):
    """D(x_t): the head on the features of ``dit_params`` at x_t = t eps + (1 - t) x0 (t (B,))."""
    model = nnx.merge(graphdef, dit_params)
    i2v = model.cfg.in_channels != model.cfg.out_channels
    inp, chunk, ht = model_input(objective.interpolate(x0, eps, t), t, ctx, mode, i2v)
    feats = dit_features(model, inp, t * 1000.0, ctx.text, ctx.image, chunk=chunk, history_timestep=ht,
                         runtime=runtime, layers=layers)
    return head_logits(head, feats)


# ------------------------------------------------------------------------------------------------
# the task

@dataclasses.dataclass
class DistillTask(FlowTask):
    """The flow task's data, shapes and sharding rules with three DiTs and a discriminator head.
    ``distill``: ``configs.train.DistillConfig``; the student optimiser is ``optim``."""

    distill: Any = None

    @functools.cached_property
    def _critic_opt(self):
        return state_lib.make_optimizer(dataclasses.replace(self.optim, lr=self.distill.critic_lr), self.steps)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.distill.feature_layers) or (self.dit.num_layers // 2,)

    @property
    def sigmas(self) -> np.ndarray:
        return student_sigmas(self.distill)

    @property
    def graphdef(self):
        return self.models[STUDENT].graphdef

    @functools.cached_property
    def models(self) -> dict[str, state_lib.Model]:
        graphdef, params = state_lib.graphdef_and_abstract(self.dit)
        head = jax.eval_shape(functools.partial(init_head, dim=self.dit.dim, hidden=self.distill.disc_hidden,
                                                 num_features=len(self.layers)), jax.random.key(0))

        def critic_shardings(abstract, mesh):
            rep = NamedSharding(mesh, P())
            return {"dit": state_lib.param_shardings(abstract["dit"], mesh),
                    "disc": jax.tree.map(lambda _: rep, abstract["disc"])}

        return {STUDENT: state_lib.Model(graphdef, params, self.optimizer, self.optim.ema_decay),
                TEACHER: state_lib.Model(graphdef, params),
                CRITIC: state_lib.Model(graphdef, {"dit": params, "disc": head}, self._critic_opt[0],
                                        shardings=critic_shardings)}

    def init_state(self, shardings):
        psh = shardings[TEACHER]["params"]
        path = self.distill.teacher or self.init
        if path:
            from pathlib import Path
            p = Path(path)
            params, created = state_lib.checkpoint_params(str(p / "dit" if (p / "dit").is_dir() else p), self.dit,
                                                          self.model_seed, psh)
            self.env.log(f"teacher from {path}" + (f"; new: {', '.join(created)}" if created else ""))
        else:
            params = state_lib.random_params(self.dit, self.model_seed, psh)
        copy = jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=psh)
        head = jax.jit(functools.partial(init_head, dim=self.dit.dim, hidden=self.distill.disc_hidden,
                                         num_features=len(self.layers)),
                       out_shardings=shardings[CRITIC]["params"]["disc"])(jax.random.key(self.model_seed + 1))
        tree = {STUDENT: copy(params), CRITIC: {"dit": copy(params), "disc": head}, TEACHER: params}
        return state_lib.init_state(self.models, tree, self.seed, shardings)

    # -- steps ---------------------------------------------------------------------------------------
    def mode_for_step(self, step: int) -> str:
        h = self.distill.history
        return MODES[step % 2] if h == "both" else h

    def prepare(self, batch: dict, step: int) -> Prepared:
        """History bucketing (agreed by all processes) and the static (chunk, history mode) of the step."""
        nh = int(batch["num_history"][0])
        keep_h = self.env.agree_min(data_lib.history_bucket(nh, self.data.history_latents))
        if keep_h != nh:
            batch = data_lib.trim_history(batch, keep_h)
        chunk, (h, w) = self.shapes.chunk, self.shapes.latent_hw
        f = batch["latents"].shape[2]
        fw = mt.forward_flops(self.dit, f, h, w, chunk, self.shapes.text_len, self.shapes.image_tokens, None)
        dev = {k: np.asarray(batch[k], np.float32) for k in self.device_keys if k in batch}
        return Prepared(batch=dev, key=(chunk, self.mode_for_step(step)),
                        flops=self.global_batch * self.forwards_per_sample() * fw["plain"],
                        tokens=self.global_batch * objective.num_tokens(f, h, w, chunk),
                        ids={k: batch[k] for k in IDS if k in batch})

    def forwards_per_sample(self) -> float:
        """Full-forward equivalents of one step per sample (backward = 2 forwards; the discriminator's partial
        forwards counted as whole): self-history rollout K, chunk rollout K + 1, critic 3 (flow) + 6 (D on
        real and fake) per update, student 3 + teacher 2 (CFG) + critic 1 + D 3."""
        k = len(self.sigmas) - 1
        g = 2 if self.distill.guidance != 1.0 else 1
        return (k if self.distill.self_history else 0) + k + 1 + 9 * self.distill.critic_steps + 3 + g + 1 + 3

    def make_step(self, key, mesh, state_sh, batch_sh):
        chunk, mode = key
        fn = distill_step(self.graphdef, self.optimizer, self.schedule, self._critic_opt[0], distill=self.distill,
                          objective_cfg=self.objective, runtime=self.runtime, chunk=chunk, mode=mode,
                          sigmas=self.sigmas, layers=self.layers, ema_decay=self.optim.ema_decay,
                          state_sh=state_sh)
        return step_lib.jit_step(fn, mesh, state_sh, batch_sh)


def simulate(graphdef, student, mb, key, *, chunk, mode, sigmas, runtime, self_history: bool):
    """Step 1 of the module doc for one micro-batch (no gradient): {"hist", "hist_noise", "x_i", "sigma_i",
    "fake"}: the (partly self-generated) clean history, its re-noising draw, the student's step input and
    sigma, and its prediction there (the fake sample)."""
    x0 = mb["latents"].astype(F32)
    nh = x0.shape[2] - chunk
    k_g, k_h, k_n, k_i = jax.random.split(key, 4)
    gray = mb.get("gray")
    hist = x0[:, :, :nh] if nh else None
    hist_noise = jax.random.normal(k_h, hist.shape, F32) if nh else None
    base = dict(text=mb["text"], image=mb.get("image"), first=x0[:, :, :1])
    g = min(chunk, nh - 1) if self_history else 0
    if g > 0:  # the last g history frames: the student's own sample after the earlier history
        ctx = Context(hist=hist[:, :, :nh - g], hist_noise=hist_noise[:, :, :nh - g], gray=None, **base)
        v = dit_velocity(graphdef, student, ctx, mode, runtime)
        _, x0s = euler_rollout(v, jax.random.normal(k_g, hist[:, :, nh - g:].shape, F32), sigmas)
        hist = jnp.concatenate([hist[:, :, :nh - g], x0s[-1]], axis=2)
    ctx = Context(hist=hist, hist_noise=hist_noise, gray=None if gray is None else gray.astype(F32), **base)
    v = dit_velocity(graphdef, student, ctx, mode, runtime)
    x_i, sigma_i, fake = backward_simulation(v, jax.random.normal(k_n, x0[:, :, nh:].shape, F32), sigmas, k_i)
    out = {"x_i": x_i, "sigma_i": sigma_i, "fake": fake}
    if nh:
        out.update(hist=jax.lax.stop_gradient(hist), hist_noise=hist_noise)
    return out


def distill_step(graphdef, student_opt, schedule, critic_opt, *, distill, objective_cfg, runtime, chunk: int,
                 mode: str, sigmas, layers, ema_decay: float, state_sh):
    """step(state, batch) -> (state, metrics) for one static (chunk, history mode), to jit with
    :func:`yume_jax.train.step.jit_step`. ``batch``: the flow task's (A, B/A, ...) arrays."""
    d, ob = distill, objective_cfg
    sigmas = np.asarray(sigmas, np.float32)

    def contexts(mb):
        """(real, fake) contexts: the data's history, and the history the fake chunk was generated after."""
        x = mb["latents"].astype(F32)
        gray = mb.get("gray")
        common = dict(text=mb["text"], image=mb.get("image"), gray=None if gray is None else gray.astype(F32),
                      first=x[:, :, :1], hist_noise=mb.get("hist_noise"))
        nh = x.shape[2] - chunk
        return Context(hist=x[:, :, :nh] if nh else None, **common), Context(hist=mb.get("hist"), **common)

    def features_params(teacher, critic_dit):
        return critic_dit if d.features_from == "critic" else teacher

    def critic_loss(cp, mb, key, teacher):
        k_f, k_t, k_e = jax.random.split(key, 3)
        real_ctx, fake_ctx = contexts(mb)
        v = dit_velocity(graphdef, cp["dit"], fake_ctx, mode, runtime)
        l_flow = flow_loss(v, mb["fake"], k_f, t_mean=ob.t_mean, t_std=ob.t_std, shift=ob.shift)
        nh = mb["latents"].shape[2] - chunk
        real = mb["latents"][:, :, nh:].astype(F32)
        b = real.shape[0]
        t = objective.sample_t(k_t, b, ob.t_mean, ob.t_std, ob.shift)
        both = jnp.concatenate([real, mb["fake"]])  # real and fake in one batch (one model call)
        logits = disc_logits(graphdef, features_params(teacher, cp["dit"]), cp["disc"], both, jnp.concatenate([t, t]),
                             jax.random.normal(k_e, both.shape, F32), concat(real_ctx, fake_ctx), mode, runtime,
                             layers)
        l_d, acc = hinge_d(logits[:b], logits[b:])
        return l_flow + d.disc_weight * l_d, {"critic_flow_loss": l_flow, "disc_loss": l_d, "disc_accuracy": acc}

    def student_loss(sp, mb, key, teacher, critic):
        k_d, k_t, k_e = jax.random.split(key, 3)
        _, ctx = contexts(mb)
        x0 = predict_x0(dit_velocity(graphdef, sp, ctx, mode, runtime), mb["x_i"], mb["sigma_i"])
        real_v = guided_velocity(graphdef, teacher, ctx, mode, runtime, d.guidance)
        fake_v = dit_velocity(graphdef, critic["dit"], ctx, mode, runtime)
        l_dmd, gmag = dmd_loss(x0, real_v, fake_v, k_d, d.t_min, d.t_max)
        loss = d.dmd_weight * l_dmd
        l_adv = jnp.zeros((), F32)
        if d.adv_weight > 0:
            t = objective.sample_t(k_t, x0.shape[0], ob.t_mean, ob.t_std, ob.shift)
            fp = jax.lax.stop_gradient(features_params(teacher, critic["dit"]))
            l_adv = hinge_g(disc_logits(graphdef, fp, jax.lax.stop_gradient(critic["disc"]), x0, t,
                                        jax.random.normal(k_e, x0.shape, F32), ctx, mode, runtime, layers))
            loss = loss + d.adv_weight * l_adv
        return loss, {"dmd_loss": l_dmd, "dmd_grad": gmag, "adv_loss": l_adv}

    def step(state, batch):
        key = step_lib.step_key(state)
        teacher = state[TEACHER]["params"]
        student = state[STUDENT]
        sim = functools.partial(simulate, graphdef, student["params"], chunk=chunk, mode=mode, sigmas=sigmas,
                                runtime=runtime, self_history=d.self_history)
        accum = jax.tree.leaves(batch)[0].shape[0]
        sims = jax.lax.map(lambda a: sim(jax.tree.map(lambda x: x[a], batch), jax.random.fold_in(key, 1000 + a)),
                           jnp.arange(accum))
        ext = {**batch, **sims}

        def critic_update(critic, j):  # one scan over the critic updates: one compiled body whatever critic_steps
            cl, aux, g = step_lib.accumulate(lambda p, mb, k: critic_loss(p, mb, k, teacher), critic["params"], ext,
                                             jax.random.fold_in(key, 2000 + j), state_sh[CRITIC]["params"])
            critic = step_lib.apply_gradients(critic, g, critic_opt)
            return critic, {"critic_loss": cl, **aux, "critic_grad_norm": optax.tree.norm(g)}

        critic, c_m = jax.lax.scan(critic_update, state[CRITIC], jnp.arange(d.critic_steps))
        c_m = jax.tree.map(lambda v: v[-1], c_m)  # the last update's
        loss, aux, g = step_lib.accumulate(
            lambda p, mb, k: student_loss(p, mb, k, teacher, critic["params"]), student["params"], ext,
            jax.random.fold_in(key, 3000), state_sh[STUDENT]["params"])
        new = {**state, "step": state["step"] + 1, CRITIC: critic,
               STUDENT: step_lib.apply_gradients(student, g, student_opt, ema_decay)}
        return new, {"loss": loss, **aux, **c_m, "grad_norm": optax.tree.norm(g), "lr": schedule(state["step"])}

    return step
