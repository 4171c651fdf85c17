"""One Yume chunk on the GPU: DiT sampling time for the 14B I2V config (random bf16 weights), 544x960,
8 new latent frames after 5 history frames, CFG in one batch of 2.

Variants: 50-step Euler + CFG, TTS-SDE (spec defaults), 14 steps, 14 steps + block caching (10 blocks,
refresh every 2 steps). Each sampler loop is compiled ahead of time (compile time reported apart) and
timed once. Prints one JSON line per variant.

    python3 bench/chunk.py                # real size
    python3 bench/chunk.py --tiny         # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs.models import get  # noqa: E402
from dit_forward import peak_gib, random_model  # noqa: E402
from yume_jax.models.config import Runtime  # noqa: E402
from yume_jax.sampling import api as sampling  # noqa: E402
from yume_jax.sampling import cache as blockcache  # noqa: E402
from yume_jax.sampling import cfg as cfg_lib  # noqa: E402
from yume_jax.sampling.frozen import history_mask, history_renoised  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--variants", default="euler50,tts-sde50,euler14,euler14-cache")
    a = ap.parse_args()
    if a.tiny:
        cfg, (h, w), hist, new, text_len = get("tiny-yume"), (12, 20), 5, 2, 16
    else:
        cfg, (h, w), hist, new, text_len = get("yume-i2v-14b"), (68, 120), 5, 8, 512
    dt = jnp.bfloat16
    model = random_model(cfg, dt)
    graphdef, params = nnx.split(model)
    rt = Runtime(dtype="bfloat16")
    z = 16
    total = hist + new
    ks = jax.random.split(jax.random.key(0), 6)
    noise = jax.random.normal(ks[0], (1, z, total, h, w), jnp.float32)
    hist_lat = jax.random.normal(ks[1], (1, z, total, h, w), jnp.float32)
    frozen = history_renoised(history_mask(noise.shape, hist), hist_lat,
                              jax.random.normal(ks[2], noise.shape, jnp.float32))
    mask = (jnp.arange(total) < hist).astype(jnp.float32)
    y = jnp.concatenate([jnp.broadcast_to(mask[None, None, :, None, None], (1, 4, total, h, w)),
                         hist_lat * mask[None, None, :, None, None]], axis=1)
    ctx = dict(text=jax.random.normal(ks[3], (1, text_len, cfg.text_dim)) * 0.1,
               image=jax.random.normal(ks[4], (1, 257, cfg.image_dim)) * 0.1, y=y)
    uctx = dict(text=jax.random.normal(ks[5], (1, text_len, cfg.text_dim)) * 0.1, image=ctx["image"], y=y)

    def velocity_model(params, x, sigma, c, *stateful):  # stateful: (step, block cache), refresh every 2
        m = nnx.merge(graphdef, params)
        inp = jnp.concatenate([x, c["y"]], axis=1)
        t = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32) * 1000.0, (x.shape[0],))
        kw = dict(cache=stateful[1], refresh=blockcache.refreshes(2, stateful[0])) if stateful else {}
        out = m(inp, t, c["text"], c["image"], chunk=new, runtime=rt, **kw)
        v, cache = out if stateful else (out, None)
        v = jnp.concatenate([jnp.zeros(x.shape[:2] + (hist,) + x.shape[3:], v.dtype), v], axis=2).astype(x.dtype)
        return (v, cache) if stateful else v

    tokens = model.num_tokens(total, h, w, new)
    cached_blocks = tuple(range(15, 25)) if not a.tiny else (1, 2)
    variants = {
        "euler50": sampling.SamplerConfig(steps=50),
        "tts-sde50": sampling.SamplerConfig(name="tts-sde", steps=50),
        "euler14": sampling.SamplerConfig(steps=14),
        "euler14-cache": sampling.SamplerConfig(steps=14),
    }
    for name in a.variants.split(","):
        sc = variants[name]
        state = (blockcache.init(blockcache.CacheConfig(refresh=2, blocks=cached_blocks), cfg.num_layers, 2, tokens,
                                 cfg.dim) if name.endswith("cache") else None)

        def run(params, noise, frozen, sc=sc, state=state):
            vel = cfg_lib.guided(velocity_model, params, ctx, uctx, sc.cfg_scale)
            return sampling.sample(sc, vel, noise, key=jax.random.key(1), frozen=frozen, state=state)
        t0 = time.perf_counter()
        compiled = jax.jit(run).lower(params, noise, frozen).compile()
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(params, noise, frozen))
        secs = time.perf_counter() - t0
        assert np.isfinite(np.asarray(out[:, :, hist:], np.float32)).all()
        print(json.dumps(dict(variant=name, sampler=sc.name, steps=sc.steps, evaluations=sc.evaluations,
                              cfg=sc.cfg_scale, cached_blocks=list(cached_blocks) if name.endswith("cache") else [],
                              tokens_per_sample=tokens, batch=2, chunk_s=round(secs, 2), compile_s=round(compile_s, 1),
                              ms_per_evaluation=round(secs / sc.evaluations * 1e3, 1), peak_gib=peak_gib(),
                              device=str(jax.devices()[0].device_kind), jax=jax.__version__)), flush=True)


if __name__ == "__main__":
    main()
