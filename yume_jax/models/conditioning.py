"""The I2V conditioning channels of Wan I2V / Yume (spec/wan.md "DiT configurations", spec/yume.md "The
public sampler's pipeline"): the ONE place that builds them, for training (yume_jax/train/objective.py) and
for sampling (yume_jax/rollout.py).

An I2V DiT takes 2 C + 4 input channels: [x_t (C) | mask (4) | y (C)]. This module builds the last 4 + C:

- the mask, 4 channels, 1 on the conditioning latent frames and 0 elsewhere (Wan folds a pixel-frame mask
  4 frames to a latent frame, the first pixel frame repeated 4 times; at latent granularity that is the
  same 1/0 per latent frame in all 4 channels);
- y, C channels: the clean latents of the conditioning frames, and on the other frames the
  ``continuation`` latents (default zeros).

Conditioning frames: the first ``max(num_history, 1)`` latent frames. Frame 0 is ALWAYS a conditioning
frame: in Wan I2V the image is the first frame, and a Yume chunk without history is an image-to-video start
whose first latent frame is that image. A sampler therefore needs at least one history frame to condition
an I2V model (:func:`history_channels` refuses none).

Where the public sampler differs (spec/yume.md "The public sampler's pipeline"): its y on the chunk's frames
holds the VAE latents of GRAY frames continuing the history through the causal encoder, not zeros. That is
the ``continuation`` argument of :func:`history_channels`; computing it (a VAE encode, one floor up) is the
caller's job.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

MASK_CHANNELS = 4


def conditioning_frames(num_history: int) -> int:
    """How many leading latent frames condition the model: the history, and at least frame 0."""
    if num_history < 0:
        raise ValueError(f"num_history must be >= 0, got {num_history}")
    return max(int(num_history), 1)


def i2v_channels(latents: jax.Array, num_history: int, continuation: Optional[jax.Array] = None) -> jax.Array:
    """(B, 4 + C, F, H, W): mask channels, then ``latents`` on the conditioning frames (the first
    ``conditioning_frames(num_history)``) and ``continuation`` (same shape as ``latents``; default zeros)
    on the others. ``latents``: (B, C, F, H, W) clean latents; only the conditioning frames are read."""
    b, c, f, h, w = latents.shape
    n = conditioning_frames(num_history)
    if n > f:
        raise ValueError(f"{n} conditioning frames but the latents have only {f} frames")
    on = (jnp.arange(f) < n).astype(latents.dtype)[None, None, :, None, None]
    mask = jnp.broadcast_to(on, (b, MASK_CHANNELS, f, h, w))
    y = latents * on
    if continuation is not None:
        if continuation.shape != latents.shape:
            raise ValueError(f"continuation shape {continuation.shape} != latents shape {latents.shape}")
        y = y + continuation.astype(latents.dtype) * (1 - on)
    return jnp.concatenate([mask, y], axis=1)


def history_channels(history: jax.Array, chunk_frames: int, continuation: Optional[jax.Array] = None) -> jax.Array:
    """The sampler's channels for [history | chunk] latents: ``history`` (B, C, H_f, H, W), H_f >= 1 clean
    latent frames, followed by ``chunk_frames`` frames to generate (zeros in y unless ``continuation``, shaped
    like the whole [history | chunk] latents, gives them). Equals :func:`i2v_channels` of the full clean
    latents with ``num_history = H_f`` (the training path), whatever the chunk holds."""
    if history is None or history.shape[2] < 1:
        raise ValueError("an I2V model is conditioned on at least one frame (the start image): "
                         "sampling it needs history (frame 0 is always a conditioning frame)")
    b, c, nh, h, w = history.shape
    latents = jnp.concatenate([history, jnp.zeros((b, c, chunk_frames, h, w), history.dtype)], axis=2)
    return i2v_channels(latents, nh, continuation)
