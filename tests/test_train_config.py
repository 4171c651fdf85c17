"""Training configs (overrides, JSON round trip, errors before any compile), the objective's math
(spec/yume.md "Training objective"), the stand-in encoder, the FLOP count, the LR schedule and starting
from a converted Wan checkpoint."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import special, stats

from configs import models as model_presets
from configs import train as tc
from train import train as cli
from yume_jax import configlib, sharding
from yume_jax.models import memory
from yume_jax.core import params as Pm
from yume_jax.models.loader import build, save_dit
from yume_jax.train import data as data_lib
from yume_jax.train import metrics as mt
from yume_jax.train import objective
from yume_jax.train import state as state_lib
from yume_jax.models.config import DiTConfig, Runtime

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- configs

def test_overrides_nested_and_json_round_trip(tmp_path):
    cfg = tc.resolve("tiny-sandbox", ["--optim.lr=3e-4", "--mesh.fsdp=2", "--mesh.tensor=-1",
                                      "--model.dit.num_layers=2", "--data.raw.history_buckets=0,8",
                                      "--data.history_latents=(1, 2)", "--objective.mvdt=false", "--optim.decay_steps=none", "--runtime.dtype=bfloat16",
                                      "--dist.auto=false", "--model.init=none"])
    assert cfg.optim.lr == 3e-4 and cfg.mesh.fsdp == 2 and cfg.mesh.tensor == -1
    assert cfg.dit_config().num_layers == 2 and cfg.raw_config().history_buckets == (0, 8)
    assert cfg.data.history_latents == (1, 2) and cfg.objective.mvdt is False and cfg.runtime_obj().dtype == "bfloat16"
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    again = tc.resolve(str(path))
    assert again == cfg
    assert tc.resolve(str(path), ["--steps=5"]).steps == 5
    for name in tc.PRESETS:
        # presets that train from a latent dataset (real encoders) need its path
        c = tc.resolve(name, ["--data.path=/data/latents"] if name in ("yume14b-540p", "sandbox-world") else [])
        assert tc.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("args, message", [
    (["--optim.lrr=1"], "unknown config key --optim.lrr: OptimConfig has"),
    (["--foo=1"], "unknown config key --foo"),
    (["--model.dit.layers=2"], "unknown config key --model.dit.layers: DiTConfig has"),
    (["--data.raw.fps=2"], "unknown config key --data.raw.fps: RawConfig has"),
    (["--optim.lr.x=2"], "--optim.lr has no sub-keys"),
    (["--optim=3"], "--optim is a section"),
    (["--optim.lr=fast"], "--optim.lr: expected float, got 'fast'"),
    (["--steps=1.5"], "--steps: expected int"),
    (["--objective.mvdt=maybe"], "--objective.mvdt: expected true or false"),
    (["--mesh.fsdp=-1", "--mesh.tensor=-1"], "at most one --mesh axis may be -1"),
    (["--batch_size=3", "--optim.grad_accum=2"], "--batch_size=3 is not divisible by --optim.grad_accum=2"),
    (["--model.preset=wan2.1-t2v-1.3b"], "--objective.mvdt=true needs a model with sideblock"),
    (["--data.latent_channels=48"], "the model predicts 16 channels but --data.latent_channels=48"),
    (["--model.dit.dim=65"], "--model.dit: dim 65 is not divisible by num_heads"),
    (["--runtime.remat=some"], "--runtime: remat must be one of"),
    (["--data.raw.chunk_frames=8"], "--data.raw: chunk_frames must be 4n+1"),
    (["--data.raw.height=44"], "must be multiples of the VAE stride"),
    (["--optim.schedule=exp"], "--optim.schedule must be constant, cosine or linear"),
    (["--dist.coordinator=127.0.0.1:1"], "go together"),
    (["--optim.wd=1"], "OptimConfig has b1, b2, clip_norm"),
    (["steps=3"], "expected --key=value"),
])
def test_bad_configs_rejected(args, message):
    with pytest.raises(tc.ConfigError, match=_re(message)):
        tc.resolve("tiny-sandbox", args)


def test_yume14b_refuses_stand_in_encoders_unless_asked():
    """The 14B preset trains on real encoders (a latent dataset) or, explicitly, on the stand-in ones."""
    with pytest.raises(tc.ConfigError) as e:
        tc.resolve("yume14b-540p")
    msg = str(e.value)
    assert "\n" not in msg and "--data.path=" in msg and "--data.source=sandbox" in msg and "stand-in" in msg
    real = tc.resolve("yume14b-540p", ["--data.path=/data/latents/yume_latents/1.0.0"])
    assert real.data.source == "latents" and real.data.path == "/data/latents/yume_latents/1.0.0"
    stand_in = tc.resolve("yume14b-540p", ["--data.source=sandbox"])
    assert stand_in.data.source == "sandbox" and stand_in.data.world == "540p"
    assert tc.resolve("tiny-sandbox").data.source == "sandbox"  # the CPU presets are stand-in by design


@dataclasses.dataclass(frozen=True)
class Inner:
    steps: int = 4
    scales: tuple[float, ...] = (1.0,)
    model: dict = dataclasses.field(default_factory=lambda: {"num_layers": 9})


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str | None = None
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_configlib_on_any_dataclass():
    """The shared override helper (also for sampling and rollout configs): nested sections, typed values,
    open dictionaries checked against their dataclass, JSON load replacing open dictionaries."""
    od = {("inner", "model"): DiTConfig}
    c = configlib.override(Outer(), configlib.parse_overrides(["--inner.steps=7", "--inner.scales=1,2.5",
                                                               "--name=none", "--inner.model.dim=64"]), od)
    assert c == Outer(None, Inner(7, (1.0, 2.5), {"num_layers": 9, "dim": 64}))
    assert configlib.load(Outer, configlib.jsonable(c), od) == c
    assert configlib.load(Outer, {"inner": {"model": {"dim": 8}}}, od).inner.model == {"dim": 8}
    with pytest.raises(configlib.ConfigError, match="unknown config key --inner.model.dims: DiTConfig has"):
        configlib.override(Outer(), {"inner.model.dims": "1"}, od)
    with pytest.raises(configlib.ConfigError, match="--inner.steps: expected int"):
        configlib.merge(Outer(), {"inner": {"steps": "x"}}, od)


def test_unknown_config_name():
    with pytest.raises(tc.ConfigError, match="unknown config 'nope'; named configs: sandbox-vae, sandbox-world, tiny-distill, tiny-sandbox"):
        tc.resolve("nope")


def _re(s: str) -> str:
    import re
    return re.escape(s)


@pytest.mark.parametrize("args, message", [
    (["--mesh.fsdp=3", "--mesh.tensor=-1"], "does not divide the 8 devices"),
    (["--mesh.fsdp=4", "--mesh.tensor=4"], "needs 16 devices, have 8"),
    (["--batch_size=6", "--mesh.fsdp=4", "--mesh.tensor=2"], "not divisible by the data-parallel size data*fsdp = 4"),
    (["--batch_size=8", "--optim.grad_accum=2", "--mesh.fsdp=8"], "(micro-batch 4 with grad_accum=2) is not divisible"),
])
def test_device_errors_before_any_compile(args, message, tmp_path, capsys):
    """The CLI (in this process, 8 CPU devices) exits with status 2 and one clear line; nothing compiled."""
    compiles = []

    def listen(event, duration, **kw):
        if "compile" in event:
            compiles.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        rc = cli.main(["--config", "tiny-synthetic", f"--workdir={tmp_path / 'run'}", *args])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("python -m train.train: error: ") and message in err and err.count("\n") == 1
        assert compiles == []
        jax.jit(lambda x: x * 3 + 1).lower(np.float32(2)).compile()  # the listener does see compiles
        assert compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert not (tmp_path / "run").exists()


def test_cli_config_error_exit_status(tmp_path):
    r = subprocess.run([sys.executable, "-m", "train.train", "--config", "tiny-sandbox", "--optim.lrr=1",
                        f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "python -m train.train: error: unknown config key --optim.lrr" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "train.train", "--list"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and all(name in r.stdout for name in ("tiny-sandbox", "wan1.3b-480p", "yume14b-540p"))


# -------------------------------------------------------------------------------------------- objective

def test_timestep_distribution_shifted_logit_normal():
    t = np.asarray(objective.sample_t(jax.random.key(0), 200_000, 0.0, 1.0, 3.0))
    assert 0 < t.min() and t.max() < 1
    assert abs(np.median(t) - 0.75) < 0.005  # u median 0.5 -> 3 * 0.5 / (1 + 2 * 0.5)

    def cdf(x):  # P(t' <= x): invert the shift, then the logistic of a standard normal
        u = x / (3.0 - 2.0 * x)
        return stats.norm.cdf(special.logit(u))

    assert stats.kstest(t, cdf).statistic < 0.006  # p ~ 1e-6 for the true law at n = 2e5
    np.testing.assert_allclose(objective.shift_t(np.array([0.0, 0.25, 1.0]), 3.0), [0.0, 0.5, 1.0])


@pytest.mark.parametrize("history, nh", [("noised", 2), ("clean", 2), ("noised", 0)])
def test_model_inputs(history, nh):
    rng = np.random.default_rng(1)
    b, c, chunk, h, w = 3, 16, 3, 4, 6
    x0 = rng.standard_normal((b, c, nh + chunk, h, w)).astype(np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    t = np.array([0.1, 0.5, 0.97], np.float32)
    inp, target, ht = objective.model_inputs(jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t), chunk, history, True)
    inp, target = np.asarray(inp), np.asarray(target)
    assert inp.shape == (b, 2 * c + 4, nh + chunk, h, w) and target.shape == (b, c, chunk, h, w)
    xt = t[:, None, None, None, None] * eps + (1 - t[:, None, None, None, None]) * x0
    if history == "clean" and nh:
        xt[:, :, :nh] = x0[:, :, :nh]
        assert ht == 0.0
    else:
        assert ht is None
    np.testing.assert_allclose(inp[:, :c], xt, rtol=1e-6, atol=1e-6)
    cond = max(nh, 1)  # history frames, or the first frame (the image) without history
    assert (inp[:, c:c + 4, :cond] == 1).all() and (inp[:, c:c + 4, cond:] == 0).all()
    np.testing.assert_array_equal(inp[:, c + 4:, :cond], x0[:, :, :cond])
    assert (inp[:, c + 4:, cond:] == 0).all()
    np.testing.assert_allclose(target, (eps - x0)[:, :, nh:], rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_yume():
    return build(model_presets.get("tiny-yume", num_layers=2), seed=4)


@pytest.mark.parametrize("history", ["noised", "clean"])
def test_loss_is_chunk_mse_of_both_passes(tiny_yume, history):
    """loss = MSE(model(x_t | mask | y, 1000 t'), eps - x0 on the chunk) + the same for the masked forward."""
    graphdef, params = nnx.split(tiny_yume)
    rng = np.random.default_rng(2)
    x0 = jnp.asarray(rng.standard_normal((2, 16, 4, 8, 8)), jnp.float32)
    batch = {"latents": x0, "text": jnp.asarray(rng.standard_normal((2, 5, 32)), jnp.float32),
             "image": jnp.asarray(rng.standard_normal((2, 5, 48)), jnp.float32)}
    key = jax.random.key(9)

    @jax.jit
    def run(params, batch):
        model = nnx.merge(graphdef, params)
        loss, aux = objective.loss(model, batch, key, chunk=2, keep=40, history=history)
        k_t, k_eps, k_mask = jax.random.split(key, 3)  # the draws the objective makes, redone by hand
        t = objective.sample_t(k_t, 2)
        eps = jax.random.normal(k_eps, x0.shape)
        inp, target, ht = objective.model_inputs(batch["latents"], eps, t, 2, history, True)
        assert (ht == 0.0) == (history == "clean")
        v = model(inp, t * 1000, batch["text"], batch["image"], chunk=2, history_timestep=ht)
        vm = model.forward_masked(inp, t * 1000, batch["text"], batch["image"], key=k_mask, keep=40, chunk=2,
                                  history_timestep=ht)
        return loss, aux, v, vm, target

    loss, aux, v, vm, target = jax.device_get(run(params, batch))
    assert v.shape == target.shape == (2, 16, 2, 8, 8)
    want_plain = np.mean((v - target) ** 2)
    want_mask = np.mean((vm - target) ** 2)
    np.testing.assert_allclose(aux["loss_unmasked"], want_plain, rtol=1e-6)
    np.testing.assert_allclose(aux["loss_masked"], want_mask, rtol=1e-6)
    np.testing.assert_allclose(loss, want_plain + want_mask, rtol=1e-6)
    assert abs(want_plain - want_mask) > 1e-6  # the masked pass is a different function
    with pytest.raises(ValueError, match="chunk=5 must be in 1..4"):
        objective.loss(tiny_yume, batch, key, chunk=5, keep=None)


@pytest.mark.slow
def test_bf16_compute(tiny_yume):
    """bf16 compute with float32 master weights against float32 compute: loss within 1e-3 relative,
    gradients within 2e-2 relative L2 (measured 4.9e-5 and 7.5e-3; tiny-yume, both MVDT passes);
    gradients stay float32."""
    graphdef, params = nnx.split(tiny_yume)
    params = nnx.to_pure_dict(params)
    rng = np.random.default_rng(3)
    batch = {"latents": jnp.asarray(rng.standard_normal((2, 16, 4, 8, 8)), jnp.float32),
             "text": jnp.asarray(rng.standard_normal((2, 5, 32)), jnp.float32),
             "image": jnp.asarray(rng.standard_normal((2, 5, 48)), jnp.float32)}

    def loss_fn(p, dtype):
        return objective.loss(nnx.merge(graphdef, p), batch, jax.random.key(5), chunk=2, keep=40,
                              runtime=Runtime(dtype=dtype))[0]

    f = jax.jit(jax.value_and_grad(loss_fn), static_argnums=(1,))
    l32, g32 = jax.device_get(f(params, "float32"))
    lb, gb = jax.device_get(f(params, "bfloat16"))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(gb))
    assert abs(lb - l32) <= 1e-3 * abs(l32) and lb != l32
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (gb, g32))
    assert np.linalg.norm(a - b) <= 2e-2 * np.linalg.norm(b)


def test_keep_for_step_buckets():
    n = 300
    keeps = {objective.keep_for_step(0, s, n, 0.3, 0.2, 5) for s in range(200)}
    assert keeps == {210, 195, 180, 165, 150}  # masked 90 .. 150 of 300 in 5 evenly spaced counts
    assert objective.keep_for_step(0, 17, n) == objective.keep_for_step(0, 17, n)
    assert objective.num_tokens(4, 8, 8, 2) == sum(memory.token_counts(2, 8, 8, 2).values()) == 64


# ------------------------------------------------------------------------------- data, FLOPs, optimizer

def test_stand_in_encoder():
    enc = data_lib.StandInEncoder(16, (4, 8, 8), text_dim=32, text_len=6, image_dim=48, image_tokens=17)
    rng = np.random.default_rng(0)
    v = rng.uniform(-1, 1, (2, 3, 9, 16, 24)).astype(np.float32)
    lat = enc.video(v)
    assert lat.shape == (2, 16, 3, 2, 3)
    pooled = np.stack([v[:, :, 0], v[:, :, 1:5].mean(2), v[:, :, 5:9].mean(2)], axis=2)
    pooled = pooled.reshape(2, 3, 3, 2, 8, 3, 8).mean(axis=(4, 6))
    for z in range(16):  # channel z tiles RGB channel z % 3 with a fixed gain
        gain = enc.mix[z, z % 3]
        np.testing.assert_allclose(lat[:, z], gain * pooled[:, z % 3], rtol=1e-5, atol=1e-6)
    txt = enc.text(["Person moves forward (W).", "a b c d e f g h"])
    assert txt.shape == (2, 6, 32) and (txt[0, 6:] == 0).all()
    np.testing.assert_array_equal(txt[0, 0], enc.text(["Person"])[0, 0])  # a word's vector is fixed
    assert (np.abs(txt[0, :6]).sum(-1) > 0).all() and not np.array_equal(txt[0, 0], txt[0, 1])
    img = enc.image(v[:, :, 0])
    assert img.shape == (2, 17, 48)
    with pytest.raises(ValueError, match="image_tokens must be 1 \\+ a square"):
        data_lib.StandInEncoder(image_tokens=20)
    with pytest.raises(ValueError, match="needs T = 1 \\+ 4n"):
        enc.video(v[:, :, :8])


def test_flops_match_spec_figures():
    """spec/performance.md: one 14B forward at 18,360 tokens is ~727 TFLOP (matmuls); the 1.3B at 32,760
    tokens runs at 538 TFLOP/s in 526 ms (= 283 TFLOP)."""
    f14 = mt.forward_flops(model_presets.get("wan2.1-i2v-14b"), 9, 68, 120, 9, 512, 257)
    assert f14["tokens"] == 18360 and abs(f14["plain"] / 727e12 - 1) < 0.01
    f13 = mt.forward_flops(model_presets.get("wan2.1-t2v-1.3b"), 21, 60, 104, 21, 512, 0)
    assert f13["tokens"] == 32760 and abs(f13["plain"] / (538e12 * 0.526) - 1) < 0.01
    fm = mt.forward_flops(model_presets.get("yume-i2v-14b", num_layers=4), 17, 68, 120, 9, 512, 257, keep=9000)
    assert fm["tokens"] == sum(memory.token_counts(8, 68, 120, 9).values()) and fm["masked"] > 0
    assert mt.train_flops(fm) == 3 * (fm["plain"] + fm["masked"])
    assert mt.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and mt.peak_tflops("cpu") is None


def test_schedule():
    cfg = tc.resolve("tiny-sandbox", ["--optim.lr=1.0", "--optim.warmup_steps=10", "--optim.schedule=cosine",
                                      "--optim.end_lr_ratio=0.1", "--steps=110"]).optim
    s = state_lib.make_schedule(cfg, 110)
    np.testing.assert_allclose([float(s(i)) for i in (0, 5, 10, 60, 110)], [0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)
    lin = state_lib.make_schedule(cfg.__class__(lr=2.0, schedule="linear", decay_steps=20), 100)
    np.testing.assert_allclose([float(lin(i)) for i in (0, 10, 20, 30)], [2.0, 1.0, 0.0, 0.0], atol=1e-6)


def test_init_from_wan_checkpoint(tmp_path):
    """A Wan I2V checkpoint starts a Yume run: base tensors loaded, history embeddings trilinear from the
    base patch embedding (spec/yume.md), side block and mask token fresh; mismatched configs refused."""
    wan = build(model_presets.get("tiny-i2v", num_layers=2), seed=11)
    save_dit(wan, tmp_path / "wan")
    dit = model_presets.get("tiny-yume", num_layers=2)
    mesh = sharding.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    _, abstract = state_lib.graphdef_and_abstract(dit)
    shardings = state_lib.param_shardings(abstract, mesh)
    params, created = state_lib.checkpoint_params(str(tmp_path / "wan"), dit, 0, shardings)
    flat = {k: np.asarray(v) for k, v in Pm.flatten(params).items()}
    src = {k: np.asarray(v) for k, v in Pm.flatten(nnx.state(wan)).items()}
    for k, v in src.items():
        np.testing.assert_array_equal(flat[k], v, err_msg=k)
    assert set(created) == set(flat) - set(src)
    assert any(k.startswith("sideblock.") for k in created) and "mask_token" in created
    for tier in ("2x", "4x", "8x", "16x", "2x_f"):
        k, b = memory.init_history_from_base(src["patch_embedding.kernel"], src["patch_embedding.bias"], tier)
        np.testing.assert_array_equal(flat[f"history_embedding.x{tier}.kernel"], k)
        np.testing.assert_array_equal(flat[f"history_embedding.x{tier}.bias"], b)
    with pytest.raises(ValueError, match="does not fit the model config: num_layers: checkpoint 2 vs config 3"):
        state_lib.checkpoint_params(str(tmp_path / "wan"), dit.replace(num_layers=3), 0,
                                    state_lib.param_shardings(state_lib.graphdef_and_abstract(dit.replace(num_layers=3))[1],
                                                              mesh))
