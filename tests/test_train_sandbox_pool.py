"""DiT training batches from encoded sandbox walks (yume_jax/train/sandbox.py): the layout inference sees."""
from __future__ import annotations

import numpy as np
import pytest

from yume_jax.camera import parse_keys
from yume_jax.data import world
from yume_jax.data.latents import gray_continuation
from yume_jax.presets import vae as vae_preset
from yume_jax.train import sandbox
from yume_jax.vae import WanVAE
from yume_jax.vae.params import init_params


pytestmark = pytest.mark.usefixtures("fast_compiles")  # tests/conftest.py: XLA optimisations off


H, W = 16, 24


def _pool(n=2, frames=25, keys="W"):
    rng = np.random.default_rng(0)
    script = world.script_from_keys(f"{keys}*{frames - 1}")
    c2w = np.stack([world.simulate(script, world.WorldConfig(height=H, width=W)) for _ in range(n)])
    fr = rng.integers(0, 256, (n, frames, H, W, 3), dtype=np.uint8)
    return sandbox.Pool(fr, c2w, np.eye(3), [[0, i] for i in range(n)])


@pytest.fixture(scope="module")
def vae():
    cfg = vae_preset("tiny-2.1")
    return WanVAE(cfg, init_params(cfg, seed=1))


def _px(a):
    return a.astype(np.float32).transpose(0, 4, 1, 2, 3) / 127.5 - 1.0


def test_encode_pool_is_the_encoding_of_each_sample(vae):
    """Prefix latents, gray continuations and the image start equal encoding each sample's own video (the VAE is
    causal: one streamed encode per walk serves every history length)."""
    pool, m = _pool(), 2
    enc = sandbox.encode_pool(pool, vae, (1, 3, 4), m, image_repeat=4, group=2)
    for h in (1, 3, 4):
        video = _px(pool.frames[:, :1 + 4 * (h - 1) + 4 * m])
        ref = np.asarray(vae.encode(video))
        np.testing.assert_allclose(enc.latents[:, :, :h + m], ref, rtol=1e-5, atol=1e-5)
        for b in range(2):
            g = gray_continuation(vae.encode, video[b], h)
            np.testing.assert_allclose(enc.gray[h][b:b + 1], g, rtol=1e-5, atol=1e-5)
    start = np.concatenate([np.repeat(pool.frames[:, :1], 4, 1), pool.frames[:, :1 + 4 * m]], 1)
    np.testing.assert_allclose(enc.start_latents, np.asarray(vae.encode(_px(start))), rtol=1e-5, atol=1e-5)
    hist = enc.start_latents.shape[2] - m
    g = gray_continuation(vae.encode, _px(start)[0], hist)
    np.testing.assert_allclose(enc.start_gray[:1], g, rtol=1e-5, atol=1e-5)


def test_encode_pool_refuses_short_walks(vae):
    with pytest.raises(ValueError, match="need"):
        sandbox.encode_pool(_pool(frames=12), vae, (3,), 2)


def test_batches_follow_the_poses(vae, tmp_path):
    """One history length per batch; the prompt is the QCM label of the chunk's exact poses."""
    from yume_jax.testing import save_tiny_pipeline

    pipe = save_tiny_pipeline(tmp_path / "p")
    pool = _pool(keys="D")
    enc = sandbox.encode_pool(pool, vae, (1, 3), 2, image_repeat=4, group=2)
    fn = sandbox.PoolBatches(pool, enc, pipe, 3, (1, 3), i2v_prob=0.5, speed_prob=0.0, text_len=128)
    seen = set()
    for i in range(6):
        b = fn(i, np.random.default_rng(i))
        h = int(b["num_history"][0])
        seen.add((bool(b["i2v"][0]), h))
        assert b["latents"].shape[:3] == (3, 16, h + 2) and b["gray"].shape[2] == 2
        assert b["text"].shape[:2] == (3, 128) and b["image"].shape[0] == 3
        assert set(b["action"]) == {parse_keys("D")[0].index}
        assert h == (2 if b["i2v"][0] else h) and (h in (1, 3) or b["i2v"][0])
    assert (True, 2) in seen and any(not i2v for i2v, _ in seen)
