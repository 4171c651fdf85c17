"""The VAE training task (yume_jax/train/tasks/vae.py): its forward is the inference VAE's, it trains through the
trainer, and its export loads with yume_jax.load_vae."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import yume_jax
from yume_jax.presets import vae as vae_preset
from yume_jax.train.tasks import vae as V
from yume_jax.vae import WanVAE
from yume_jax.vae.model import WanVAEModel
from yume_jax.vae.params import init_params


pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py: XLA optimisations off


def test_chunks_are_the_inference_chunking():
    assert V.chunks(9) == [(0, 1), (1, 5), (5, 9)]
    with pytest.raises(ValueError, match="4n \\+ 1"):
        V.chunks(8)


def test_training_forward_equals_inference_vae():
    """encode_moments' mean and decode are WanVAE.encode / decode (normalize=False) on the same weights: what
    the VAE is trained on is what the pipeline runs."""
    cfg = vae_preset("tiny-2.1")
    params = init_params(cfg, seed=3)
    vae = WanVAE(cfg, params)
    model = nnx.merge(nnx.split(WanVAEModel(cfg, rngs=nnx.Rngs(0)))[0], vae.params)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 5, 16, 24)).astype(np.float32)
    mu, logvar = jax.jit(V.encode_moments)(model, jnp.transpose(x, (0, 2, 3, 4, 1)))
    ref = np.asarray(vae.encode(x, normalize=False))
    np.testing.assert_allclose(np.transpose(np.asarray(mu), (0, 4, 1, 2, 3)), ref, rtol=1e-5, atol=1e-5)
    assert logvar.shape == mu.shape
    z = np.random.default_rng(1).standard_normal(ref.shape).astype(np.float32)
    y = jax.jit(V.decode)(model, jnp.transpose(z, (0, 2, 3, 4, 1)))
    dec = np.asarray(vae.decode(z, normalize=False))
    np.testing.assert_allclose(np.clip(np.transpose(np.asarray(y), (0, 4, 1, 2, 3)), -1, 1), dec, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_trains_exports_and_loads(tmp_path, monkeypatch):
    """The task runs in the trainer (logged loss = the documented sum of its terms), its checkpoint exports with
    measured latent statistics and loads with yume_jax.load_vae. (Walks: random frames instead of the renderer,
    which tests/test_world_jax.py covers.)"""
    import json

    from configs import train as tc
    from yume_jax.data import world
    from yume_jax.train import sandbox
    from yume_jax.train.trainer import Trainer

    def fake_pool(n, t, cfg, seed=0, **kw):
        fr = np.random.default_rng(seed).integers(0, 256, (n, t, cfg.height, cfg.width, 3), dtype=np.uint8)
        return sandbox.Pool(fr, np.zeros((n, t, 4, 4)), np.eye(3), [[seed, i] for i in range(n)])

    monkeypatch.setattr(sandbox, "render_pool", fake_pool)
    run = tmp_path / "run"
    cfg = tc.resolve("tiny-vae", [f"--workdir={run}", "--steps=2"])
    task = V.VAETask(vae=vae_preset("tiny-2.1"), task=cfg.vae, optim=cfg.optim,
                     world=world.WorldConfig(height=16, width=24), steps=2)
    Trainer(tc.trainer_config(cfg), task, config=cfg.to_dict()).fit()
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        expect = r["mse"] + r["l1"] + 0.5 * r["edge"] + 1e-6 * r["kl"]
        assert np.isfinite(r["psnr"]) and r["loss"] == pytest.approx(expect, rel=1e-5)
        assert r["grad_norm"] > 0
    params, step = V.trained_params(run)
    assert step == 2
    vid = np.random.default_rng(0).uniform(-1, 1, (2, 3, 5, 16, 24)).astype(np.float32)
    out = V.export(tmp_path / "vae", vae_preset("tiny-2.1"), params, vid, dtype="bfloat16")
    vae = yume_jax.load_vae(out)
    z = np.asarray(WanVAE(vae_preset("tiny-2.1"), params).encode(vid, normalize=False))
    np.testing.assert_allclose(vae.cfg.latents_mean, z.mean((0, 2, 3, 4)), rtol=1e-4, atol=1e-5)
    assert np.asarray(vae.decode(vae.encode(vid))).shape == vid.shape
