"""The distillation task (yume_jax/train/tasks/distill.py), tiny and on CPU: the DMD gradient moves a few-step
student towards the teacher on Gaussian data whose velocity field is exact (the critic a Gaussian fit trained
online with the same flow loss); the discriminator head on DiT features learns to tell real from fake; the
whole task runs through the library trainer (both history modes, student's own history, I2V channels),
checkpoints every state, resumes bit-exactly, and its sharded step (fsdp x tensor on 8 devices) equals the
single-device step. The sampler side: explicit sigmas in SamplerConfig and pipeline.json.

Compile time dominates on CPU: the trainer runs share one compiled step per (mesh, variant), and XLA's
optimisations are off for this module (``jax_disable_most_optimizations``)."""
from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import train as tc
from yume_jax import sharding
from yume_jax.core import cli
from yume_jax.core import params as Pm
from yume_jax.models.loader import build
from yume_jax.presets import dit as dit_preset
from yume_jax.sampling.analytic import gaussian_velocity
from yume_jax.train import checkpoint as ck
from yume_jax.train import objective
from yume_jax.train import step as step_lib
from yume_jax.train.tasks import distill as D
from yume_jax.train.trainer import Trainer


pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py: XLA optimisations off


# ------------------------------------------------------------------------------------------------
# the pieces on closed-form models

@pytest.mark.parametrize("sigmas,ratio", [((1.0, 0.0), 0.05), ((1.0, 0.6, 0.0), 0.3)])
def test_dmd_moves_a_few_step_student_to_the_exact_teacher(sigmas, ratio):
    """Teacher: the exact velocity of N(mu, std^2); student: an Euler sampler with an affine velocity per step
    (its samples are Gaussian); critic: the exact velocity of a Gaussian N(m, s^2) fitted online to the
    student's samples by the critic's flow loss. Backward simulation picks the trained step; the DMD surrogate
    alone must bring the student's final samples to the target's mean and std (sum of absolute errors over
    the 4 coordinates). With 2 steps the fake samples are a mixture of both steps' predictions, which the
    Gaussian critic only fits on average (a limit of this analytic critic, not of the method): looser bound."""
    dim, batch, n = 4, 1024, 240
    mu, std = jnp.array([1.5, -1.0, 0.5, 2.0]), jnp.array([1.0, 0.5, 2.0, 0.8])
    teacher = gaussian_velocity(mu, std)
    real_v = lambda x, t: teacher(x, t[:, None])  # noqa: E731
    sigmas = np.array(sigmas, np.float32)

    def student_v(p):
        def v(x, s):
            first = (s > 0.8)[:, None]
            return jnp.where(first, p["a"][0] * x + p["b"][0], p["a"][1] * x + p["b"][1])
        return v

    def critic_v(c):
        g = gaussian_velocity(c["m"], jnp.exp(c["log_s"]))
        return lambda x, t: g(x, t[:, None])

    sp = {"a": jnp.full((2, dim), 0.3), "b": jnp.zeros((2, dim))}
    cp = {"m": jnp.zeros(dim), "log_s": jnp.full((dim,), jnp.log(0.7))}
    s_opt, c_opt = optax.adam(optax.cosine_decay_schedule(0.05, n, 0.05)), optax.adam(0.1)

    def update(carry, key):
        sp, cp, s_state, c_state = carry
        k_n, k_i, k_c, k_d = jax.random.split(key, 4)
        x_i, s_i, fake = D.backward_simulation(student_v(sp), jax.random.normal(k_n, (batch, dim)), sigmas, k_i)
        for j in range(2):
            g = jax.grad(lambda c: D.flow_loss(critic_v(c), fake, jax.random.fold_in(k_c, j)))(cp)
            u, c_state = c_opt.update(g, c_state)
            cp = optax.apply_updates(cp, u)

        def loss(p):
            return D.dmd_loss(D.predict_x0(student_v(p), x_i, s_i), real_v, critic_v(cp), k_d)[0]

        u, s_state = s_opt.update(jax.grad(loss)(sp), s_state)
        return (optax.apply_updates(sp, u), cp, s_state, c_state), None

    @jax.jit
    def train_and_measure(sp, cp):
        carry = (sp, cp, s_opt.init(sp), c_opt.init(cp))
        trained = jax.lax.scan(update, carry, jax.random.split(jax.random.key(0), n))[0][0]

        def distance(p):
            x = D.euler_rollout(student_v(p), jax.random.normal(jax.random.key(99), (4096, dim)), sigmas)[1][-1]
            return jnp.sum(jnp.abs(x.mean(0) - mu)) + jnp.sum(jnp.abs(x.std(0) - std))

        return distance(sp), distance(trained)

    d0, d1 = map(float, train_and_measure(sp, cp))
    assert d0 > 4.0 and d1 < ratio * d0, (d0, d1)


def test_backward_simulation_follows_the_euler_sampler():
    """The picked inputs are the sampler's own states at the exact sigmas; the last prediction is its output."""
    from yume_jax.sampling import SamplerConfig, sample
    v = lambda x, s: 0.5 * x - s[:, None] * 2.0  # noqa: E731
    sigmas = np.array([1.0, 0.7, 0.3, 0.0], np.float32)
    noise = jax.random.normal(jax.random.key(0), (64, 3))
    xs, x0s = D.euler_rollout(v, noise, sigmas)
    config = SamplerConfig(steps=3, cfg_scale=1.0, explicit_sigmas=tuple(sigmas))  # the explicit-sigma sampler
    out = sample(config, lambda x, s: v(x, jnp.full((x.shape[0],), s)), noise)
    np.testing.assert_allclose(x0s[-1], out, rtol=1e-5, atol=1e-5)
    x_i, s_i, x0 = D.backward_simulation(v, noise, sigmas, jax.random.key(1))
    idx = np.searchsorted(-sigmas[:-1], -np.asarray(s_i))
    assert set(idx.tolist()) == {0, 1, 2}  # every step gets picked
    np.testing.assert_allclose(x_i, xs[idx, np.arange(64)], rtol=1e-6)
    np.testing.assert_allclose(x0, x0s[idx, np.arange(64)], rtol=1e-6)


def test_dmd_gradient_vanishes_when_critic_equals_teacher():
    x0 = jax.random.normal(jax.random.key(0), (8, 3, 2, 4, 4))
    v = lambda x, t: x * 0.3 - 1.0  # noqa: E731
    loss, g = D.dmd_loss(x0, v, v, jax.random.key(1))
    assert float(loss) == 0.0 and float(g) == 0.0
    loss, g = D.dmd_loss(x0, v, lambda x, t: v(x, t) + 1.0, jax.random.key(1))
    assert np.isfinite(float(loss)) and float(g) > 0


@pytest.mark.slow
def test_discriminator_on_dit_features_learns_real_from_fake():
    """A tiny DiT (the critic) and the head trained with the hinge loss: real latents have mean +0.5, fake
    -0.5; held-out accuracy must rise well above chance."""
    cfg = dit_preset("tiny-t2v")
    from flax import nnx
    graphdef, params = nnx.split(build(cfg, seed=0))
    params = nnx.to_pure_dict(params)
    layers = (0,)
    p = {"dit": params, "disc": D.init_head(jax.random.key(1), cfg.dim, 16, len(layers))}
    opt = optax.adam(3e-3)
    st = opt.init(p)
    shape = (4, 16, 2, 4, 4)
    text = jax.random.normal(jax.random.key(2), (4, 8, cfg.text_dim))
    ctx = D.Context(text=jnp.concatenate([text, text]), image=None, hist=None, hist_noise=None, gray=None, first=None)
    from yume_jax.models.config import Runtime
    rt = Runtime(dtype="float32", remat="none")

    def logits(p, key):
        kr, kf, kt, ke = jax.random.split(key, 4)
        real = 0.5 + jax.random.normal(kr, shape)
        fake = -0.5 + jax.random.normal(kf, shape)
        t = objective.sample_t(kt, shape[0])
        both = jnp.concatenate([real, fake])
        out = D.disc_logits(graphdef, p["dit"], p["disc"], both, jnp.concatenate([t, t]),
                            jax.random.normal(ke, both.shape), ctx, "noised", rt, layers)
        return D.hinge_d(out[:4], out[4:])

    @jax.jit
    def update(p, st, key):  # every batch is fresh: the accuracy before the update is a held-out one
        (l, acc), g = jax.value_and_grad(logits, has_aux=True)(p, key)
        u, st = opt.update(g, st, p)
        return optax.apply_updates(p, u), st, acc

    accs = []
    for i in range(30):
        p, st, acc = update(p, st, jax.random.key(i))
        accs.append(float(acc))
    acc0, acc1 = np.mean(accs[:3]), np.mean(accs[-5:])
    assert acc1 >= 0.85 and acc1 > acc0 + 0.2, (acc0, acc1)


# ------------------------------------------------------------------------------------------------
# the task through the trainer

ARGS = {"log_every": "1", "tensorboard": "false", "progress": "false", "checkpoint.every": "1",
        "checkpoint.async_save": "false", "mesh.fsdp": "2", "mesh.tensor": "4", "distill.history": "noised"}


def _trainer(run, steps, shared):
    cfg = tc.resolve("tiny-distill", {**ARGS, "steps": str(steps), "workdir": str(run)})
    t = Trainer(tc.trainer_config(cfg), tc.make_task(cfg), config=cfg.to_dict())
    t.compiled = shared  # one compile for all runs of this module (same mesh, variant and shapes)
    return t


def _curve(run):
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 2-step run and one stopped after step 1 and resumed to 2, sharing the compiled step
    (fsdp 2 x tensor 4 on the 8 CPU devices). Compiles dominate, so the full step is compiled for one
    history mode (noised) here; the clean mode's inputs are checked in test_history_modes_feed_the_model."""
    root = tmp_path_factory.mktemp("distill")
    shared: dict = {}
    ref_t = _trainer(root / "ref", 2, shared)
    ref = ref_t.fit()
    _trainer(root / "run", 1, shared).fit()
    resumed = _trainer(root / "run", 2, shared).fit()
    return root, ref_t, shared, jax.device_get(ref), jax.device_get(resumed)


@pytest.mark.slow
def test_distill_trains_checkpoints_and_resumes_bit_exact(runs):
    root, ref_t, shared, ref, resumed = runs
    assert [k[0] for k in shared] == [(2, "noised")]  # compiled once for the three runs
    a, b = _curve(root / "ref"), _curve(root / "run")
    assert sorted(a) == sorted(b) == [1, 2]
    for s in a:
        for k in ("loss", "dmd_loss", "adv_loss", "critic_loss", "critic_flow_loss", "disc_loss", "disc_accuracy",
                  "grad_norm", "critic_grad_norm", "dmd_grad"):
            assert np.isfinite(a[s][k]) and a[s][k] == b[s][k], (s, k)
        assert a[s]["dmd_grad"] > 0 and a[s]["grad_norm"] > 0 and 0 <= a[s]["disc_accuracy"] <= 1
    fa, fb = _flat(ref), _flat(resumed)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k
    # the state: the frozen teacher has parameters only; student and critic moved away from it
    assert set(ref) == {"step", "rng", "student", "teacher", "critic"} and int(ref["step"]) == 2
    assert set(ref["teacher"]) == {"params"} and set(ref["student"]) == {"params", "opt_state", "ema"}
    assert set(ref["critic"]) == {"params", "opt_state"} and set(ref["critic"]["params"]) == {"dit", "disc"}
    t0 = Pm.flatten(ref["teacher"]["params"])
    for model, tree in (("student", ref["student"]["params"]), ("critic", ref["critic"]["params"]["dit"])):
        moved = {n for n, v in Pm.flatten(tree).items() if not np.array_equal(v, t0[n])}
        assert {"blocks.ffn.fc1.kernel", "head.proj.kernel", "patch_embedding.kernel"} <= moved, model
    step, saved = ck.read_state(root / "run" / "checkpoints")
    assert step == 2 and sorted(saved) == ["critic", "rng", "step", "student", "teacher"]
    cfg = json.loads((root / "ref" / "config.json").read_text())
    assert cfg["task"] == "distill"
    # the student's sampler defaults for pipeline.json (python -m train.export_student, explore on the workdir)
    from yume_jax.convert.pipeline_dirs import student_defaults
    d = student_defaults(cfg)
    assert d["steps"] == 2 and d["cfg"] == 1.0 and d["sampler"] == "euler"
    np.testing.assert_allclose(d["sigmas"], D.student_sigmas(tc.from_dict(cfg).distill))
    from train import export_student
    with pytest.raises(cli.UserError, match="stand-in encoders"):
        export_student.main([str(root / "ref"), str(root / "student")])


@pytest.mark.slow
def test_sharded_distill_step_equals_single_device(runs):
    """One state and batch through the 8-device step (the trainer's compiled program; parameters and optimizer
    moments sharded fsdp x tensor) and through the step compiled for one device. Tolerances as the flow
    task's test: metrics relative 1e-4 (a longer chain: two rollouts, three critic passes), gradients (Adam's
    first moments after one step) 1e-4 of each tensor's max."""
    root, ref_t, shared, _, _ = runs
    task = ref_t.task
    prep = task.prepare(next(iter(task.setup(ref_t.env))), 0)
    batch = {k: v[None] for k, v in prep.batch.items()}  # grad_accum 1
    (fn8,) = shared.values()
    one = sharding.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    state0 = jax.device_get(task.init_state(task.state_shardings(one)))

    def run(mesh, fn=None):
        sh = task.state_shardings(mesh)
        bsh = step_lib.batch_shardings({k: v.shape for k, v in batch.items()}, mesh)
        fn = fn or task.make_step(prep.key, mesh, sh, bsh)
        new, m = fn(jax.device_put(state0, sh), jax.device_put(batch, bsh))
        return new, jax.device_get(m)

    ref, ref_m = run(one)
    new, m = run(ref_t.mesh, fn8)
    k = new["student"]["params"]["blocks"]["ffn"]["fc1"]["kernel"]
    assert k.sharding.spec[1] == "fsdp" and k.sharding.spec[2] == "tensor"
    assert new["critic"]["opt_state"][1][0].mu["dit"]["blocks"]["ffn"]["fc1"]["kernel"].sharding.spec == k.sharding.spec
    ref, new = jax.device_get(ref), jax.device_get(new)
    for key in ref_m:
        np.testing.assert_allclose(m[key], ref_m[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for model, pick in (("student", lambda s: s), ("critic", lambda s: s["dit"])):
        mus = [Pm.flatten(pick(s[model]["opt_state"][1][0].mu)) for s in (new, ref)]
        for name, r in mus[1].items():
            assert np.abs(mus[0][name] - r).max() <= 1e-4 * max(np.abs(r).max(), 1e-30), (model, name)
            if not name.startswith(("history_embedding", "sideblock", "mask_token")):  # MVDT parts: unused here
                assert np.abs(r).max() > 0, (model, name)


def test_history_modes_feed_the_model():
    """noised: history re-noised at the chunk's sigma with the fixed draw, every token at sigma; clean: history as
    is with t = 0 on it; I2V channels hold the clean history whatever the mode; no history: plain chunk."""
    k = jax.random.split(jax.random.key(0), 4)
    hist, noise = jax.random.normal(k[0], (2, 3, 2, 4, 4)), jax.random.normal(k[1], (2, 3, 2, 4, 4))
    x = jax.random.normal(k[2], (2, 3, 1, 4, 4))
    sigma = jnp.array([0.3, 0.8])
    ctx = D.Context(text=None, image=None, hist=hist, hist_noise=noise, gray=None, first=hist[:, :, :1])
    inp, chunk, ht = D.model_input(x, sigma, ctx, "noised", True)
    assert inp.shape == (2, 3 + 4 + 3, 3, 4, 4) and chunk == 1 and ht is None
    np.testing.assert_allclose(inp[:, :3, :2], objective.interpolate(hist, noise, sigma), rtol=1e-6)
    np.testing.assert_array_equal(inp[:, :3, 2:], x)
    np.testing.assert_array_equal(inp[:, 7:, :2], hist)  # y: the clean conditioning frames
    np.testing.assert_array_equal(inp[:, 7:, 2:], 0.0)
    inp, chunk, ht = D.model_input(x, sigma, ctx, "clean", False)
    assert inp.shape == (2, 3, 3, 4, 4) and ht == 0.0
    np.testing.assert_array_equal(inp[:, :, :2], hist)
    inp, chunk, ht = D.model_input(x, sigma, dataclasses.replace(ctx, hist=None), "clean", False)
    assert chunk is None and ht is None and inp is x


# ------------------------------------------------------------------------------------------------
# config and sampler side

def test_distill_config_checks():
    cfg = tc.resolve("tiny-distill", {"distill.sigmas": "1.0,0.5,0.0"})
    assert cfg.task == "distill" and "distill" in tc.TASKS
    np.testing.assert_allclose(D.student_sigmas(cfg.distill), [1.0, 0.5, 0.0])
    for bad, msg in [({"distill.sigmas": "1.0,0.0"}, "needs 3"), ({"distill.sigmas": "1.0,0.7,0.9"}, "decrease"),
                     ({"distill.history": "x"}, "noised, clean or both"), ({"distill.feature_layers": "5"}, "0..1"),
                     ({"distill.critic_steps": "0"}, "critic_steps")]:
        with pytest.raises(tc.ConfigError, match=msg):
            tc.resolve("tiny-distill", bad)


def test_explicit_sigmas_in_sampler_config_and_pipeline_defaults():
    from yume_jax.pipeline import sampler_config
    from yume_jax.rollout import RolloutConfig
    from yume_jax.sampling.api import SamplerConfig

    c = SamplerConfig(steps=2, cfg_scale=1.0, explicit_sigmas=[1.0, 0.4, 0.0])
    np.testing.assert_allclose(c.sigmas, [1.0, 0.4, 0.0])
    assert SamplerConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c and hash(c)
    with pytest.raises(ValueError, match="need steps"):
        SamplerConfig(steps=4, explicit_sigmas=(1.0, 0.4, 0.0))
    d = {"height": 96, "width": 160, "chunk_frames": 2, "steps": 2, "sigmas": [1.0, 0.4, 0.0], "sampler": "euler",
         "cfg": 1.0}
    s = sampler_config(d)  # what Pipeline.sampler_config / explore / evaluate use, from pipeline.json
    assert (s.steps, s.cfg_scale, s.explicit_sigmas) == (2, 1.0, (1.0, 0.4, 0.0))
    assert sampler_config(d, steps=3).explicit_sigmas is None  # another step count: the shifted schedule
    assert sampler_config({}).explicit_sigmas is None and sampler_config({}).steps == 4
    r = RolloutConfig.from_defaults(d, seed=3)
    assert r.sampler == s and r.seed == 3 and (r.height, r.width, r.chunk_frames) == (96, 160, 2)
