"""The library trainer runs any task: a toy distillation-like task on tiny MLPs (a trainable student with
Adam and EMA, a frozen teacher, a critic with its own SGD optimizer updated twice per student step),
built only from the shared step helpers, trains through the same loop as the flow task, checkpoints,
resumes bit-exactly (state, loss curve, data position) and restores onto another mesh. 8 CPU devices."""
from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from yume_jax.data import pipeline as pl
from yume_jax.train import checkpoint as ck
from yume_jax.train import state as state_lib
from yume_jax.train import step as step_lib
from yume_jax.train.task import Env, Prepared
from yume_jax.train.trainer import SetupError, Trainer, TrainerConfig

D, H = 4, 8  # input/output width, hidden width


def mlp(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]


def mlp_params(key, d_out=D):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (D, H)) / 2, "b1": jnp.zeros((H,)), "w2": jax.random.normal(k2, (H, d_out)) / 3}


def shard_hidden(abstract, mesh):
    """w1 / b1 split over fsdp on the hidden axis, w2 on its input axis (a real FSDP layout)."""
    axes = {"w1": (None, "fsdp"), "b1": ("fsdp",), "w2": ("fsdp", None)}
    return {k: NamedSharding(mesh, P(*axes[k])) for k in abstract}


class Sample:
    def __call__(self, index, rng: np.random.Generator) -> dict:
        return {"x": rng.standard_normal((D,), dtype=np.float32), "item": np.int64(index)}


@dataclasses.dataclass
class ToyTask:
    lr: float = 0.05
    critic_steps: int = 2
    device_keys = ("x",)

    def __post_init__(self):
        abstract = jax.eval_shape(mlp_params, jax.random.key(0))
        critic_abs = jax.eval_shape(lambda k: mlp_params(k, 1), jax.random.key(0))
        self.student_opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(self.lr))
        self.critic_opt = optax.sgd(self.lr)
        self.models = {
            "student": state_lib.Model(None, abstract, self.student_opt, ema_decay=0.5, shardings=shard_hidden),
            "teacher": state_lib.Model(None, abstract, shardings=shard_hidden),  # frozen
            "critic": state_lib.Model(None, critic_abs, self.critic_opt, shardings=shard_hidden)}
        self.abstract = state_lib.abstract_state(self.models)

    def setup(self, env: Env):
        return pl.build(1 << 20, Sample(), pl.LoaderConfig(seed=1, batch_size=env.local_batch), env.shard_index,
                        env.shard_count)

    def abstract_state(self):
        return self.abstract

    def state_shardings(self, mesh):
        return state_lib.state_shardings(self.models, self.abstract, mesh)

    def init_state(self, shardings):
        keys = jax.random.split(jax.random.key(7), 3)
        params = {name: jax.device_put(mlp_params(k, 1 if name == "critic" else D), shardings[name]["params"])
                  for name, k in zip(self.models, keys)}
        return state_lib.init_state(self.models, params, 3, shardings)

    def prepare(self, batch, step):
        return Prepared(batch={"x": batch["x"]}, key=None, flops=6.0 * len(batch["x"]) * D * H, ids={"item": batch["item"]})

    def make_step(self, key, mesh, state_sh, batch_sh):
        def critic_loss(cp, mb, k, student, teacher):
            x = mb["x"] + 0.1 * jax.random.normal(k, mb["x"].shape)
            fake = jax.lax.stop_gradient(mlp(student, x))
            return jnp.mean(mlp(cp, fake)) - jnp.mean(mlp(cp, mlp(teacher, x))) + 0.1 * optax.tree.norm(cp) ** 2, {}

        def student_loss(sp, mb, k, critic, teacher):
            x = mb["x"] + 0.1 * jax.random.normal(k, mb["x"].shape)
            y = mlp(sp, x)
            mse = jnp.mean(jnp.square(y - mlp(teacher, x)))
            return mse - 0.01 * jnp.mean(mlp(critic, y)), {"mse": mse}

        def step(state, batch):
            key = step_lib.step_key(state)
            teacher = state["teacher"]["params"]
            critic = state["critic"]
            for i in range(self.critic_steps):
                cl, _, g = step_lib.accumulate(
                    lambda p, mb, k: critic_loss(p, mb, k, state["student"]["params"], teacher), critic["params"],
                    batch, jax.random.fold_in(key, 100 + i), state_sh["critic"]["params"])
                critic = step_lib.apply_gradients(critic, g, self.critic_opt)
            loss, aux, g = step_lib.accumulate(
                lambda p, mb, k: student_loss(p, mb, k, critic["params"], teacher), state["student"]["params"], batch,
                key, state_sh["student"]["params"])
            student = step_lib.apply_gradients(state["student"], g, self.student_opt, 0.5)
            new = {**state, "step": state["step"] + 1, "student": student, "critic": critic}
            return new, {"loss": loss, **aux, "critic_loss": cl, "grad_norm": optax.tree.norm(g)}

        return step_lib.jit_step(step, mesh, state_sh, batch_sh)


def _cfg(run, steps, mesh=None):
    return TrainerConfig(run_dir=run, steps=steps, batch_size=8, grad_accum=2, mesh=mesh or {"fsdp": 2, "tensor": 4},
                         log_every=1, tensorboard=False, progress=False, checkpoint_every=2, max_to_keep=2,
                         log_samples=True)


def _curve(run):
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = r
    return out


def _flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 6-step run and one stopped at step 3 and resumed (same mesh) to 6."""
    root = tmp_path_factory.mktemp("toy")
    ref = Trainer(_cfg(root / "ref", 6), ToyTask(), config={"steps": 6}).fit()
    Trainer(_cfg(root / "run", 3), ToyTask()).fit()
    shutil.copytree(root / "run", root / "moved")
    resumed = Trainer(_cfg(root / "run", 6), ToyTask()).fit()
    return root, jax.device_get(ref), jax.device_get(resumed)


def test_toy_task_trains_and_resumes_bit_exact(runs):
    root, ref, resumed = runs
    a, b = _curve(root / "ref"), _curve(root / "run")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in a:
        assert a[s]["loss"] == b[s]["loss"] and a[s]["critic_loss"] == b[s]["critic_loss"], s
    assert a[6]["loss"] < a[1]["loss"] and a[6]["critic_loss"] != a[1]["critic_loss"]
    fa, fb = _flat(ref), _flat(resumed)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k
    # the state: per-model entries, the frozen teacher has no optimizer state and did not move
    assert set(ref) == {"step", "rng", "student", "teacher", "critic"} and int(ref["step"]) == 6
    assert set(ref["teacher"]) == {"params"} and set(ref["student"]) == {"params", "opt_state", "ema"}
    assert set(ref["critic"]) == {"params", "opt_state"}
    t0 = mlp_params(jax.random.split(jax.random.key(7), 3)[1])
    assert all(np.array_equal(ref["teacher"]["params"][k], t0[k]) for k in t0)
    # checkpoints with the data position; the resumed run read the samples the uninterrupted one read next
    step, saved = ck.read_state(root / "run" / "checkpoints")
    assert step == 6 and sorted(saved) == ["critic", "rng", "step", "student", "teacher"]
    assert sorted(int(p.name) for p in (root / "run" / "checkpoints").iterdir() if p.name.isdigit()) == [4, 6]
    assert (root / "run" / "checkpoints" / "6" / "data").is_dir()
    items = [json.loads(x)["item"] for x in (root / "ref" / "samples.p0.jsonl").read_text().splitlines()]
    items_run = [json.loads(x)["item"] for x in (root / "run" / "samples.p0.jsonl").read_text().splitlines()]
    assert items_run == items and len(items) == 6 and len(items[0]) == 8
    assert json.loads((root / "ref" / "config.json").read_text()) == {"steps": 6}


def test_toy_task_restores_onto_another_mesh(runs):
    root, ref, _ = runs
    trainer = Trainer(_cfg(root / "moved", 6, mesh={"data": 2, "fsdp": 2, "tensor": 2}), ToyTask())
    state = trainer.fit()
    w1 = state["student"]["params"]["w1"]
    assert w1.sharding.mesh.shape["data"] == 2 and w1.sharding.mesh.shape["tensor"] == 2
    assert w1.sharding.spec == P(None, "fsdp")
    assert w1.addressable_shards[0].data.shape == (D, H // 2)
    a, b = _curve(root / "ref"), _curve(root / "moved")
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([b[s]["loss"] for s in (4, 5, 6)], [a[s]["loss"] for s in (4, 5, 6)], rtol=1e-5)
    got = jax.device_get(state)
    for k, v in _flat(ref).items():
        np.testing.assert_allclose(_flat(got)[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_setup_errors_before_anything_is_written(tmp_path):
    with pytest.raises(SetupError, match="needs 16 devices, have 8"):
        Trainer(_cfg(tmp_path / "x", 2, mesh={"fsdp": 16}), ToyTask())
    with pytest.raises(SetupError, match="not divisible by the data-parallel size"):
        Trainer(_cfg(tmp_path / "x", 2, mesh={"fsdp": 8}), ToyTask())
    assert not (tmp_path / "x").exists()
