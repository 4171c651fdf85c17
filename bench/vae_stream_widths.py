"""Streamed VAE step times of the sandbox-2.1 VAE at other widths (docs/default_model.md, the CPU chunk budget):
one decode of 2 latent frames and one encode of 8 pixel frames, each continuing a stream, 96x160, float32,
random weights; mean of 3 after 2 warm-up runs.

    PYTHONPATH=$PWD python bench/vae_stream_widths.py
    YUME_JAX_VAE_CONV_TAPS=1 PYTHONPATH=$PWD python bench/vae_stream_widths.py   # causal convs as 2D taps
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from yume_jax.presets import VAE
from yume_jax.vae.params import init_params
from yume_jax.vae.stream import WanVAE

WIDTHS = [(16, None), (12, None), (16, 12), (12, 8)]  # (base_dim, decoder_base_dim; None: the same)


def timed(fn, repeats: int = 3) -> float:
    fn(), fn()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    for base, dec in WIDTHS:
        cfg = dataclasses.replace(VAE["sandbox-2.1"], base_dim=base, decoder_base_dim=dec)
        vae = WanVAE(cfg, init_params(cfg, 0))
        z, enc_state = vae.stream_encode(jnp.zeros((1, 3, 17, 96, 160)))
        _, dec_state = vae.stream_decode(z)
        new, video = jnp.zeros((1, 16, 2, 12, 20)), jnp.zeros((1, 3, 8, 96, 160))
        td = timed(lambda: jax.block_until_ready(vae.stream_decode(new, dec_state.copy())[0]))
        te = timed(lambda: jax.block_until_ready(vae.stream_encode(video, enc_state.copy(), check_range=False)[0]))
        n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(vae.params))
        print(f"base {base} / decoder {dec or base}: {n / 1e6:.2f}M parameters, decode 2 latents {td:.3f} s, "
              f"encode 8 frames {te:.3f} s", flush=True)


if __name__ == "__main__":
    main()
