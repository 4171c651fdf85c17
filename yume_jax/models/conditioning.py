"""The I2V conditioning channels of Wan I2V / Yume (spec/wan.md "DiT configurations", spec/yume.md "The
public sampler's pipeline"): the ONE place that builds them, for training (yume_jax/train/objective.py) and
for sampling (yume_jax/rollout.py).

An I2V DiT takes 2 C + 4 input channels: [x_t (C) | mask (4) | y (C)]. This module builds the last 4 + C:

- the mask, 4 channels: 1 on the pixel frames of the conditioning latent frames and 0 elsewhere, folded 4
  pixel frames to a latent frame exactly as Wan I2V folds it (the first pixel frame repeated 4 times;
  :func:`fold_pixel_mask`);
- y, C channels: the clean latents of the conditioning frames, and on the other frames the
  ``continuation`` latents (default zeros; the public sampler: gray frames through the causal VAE).

Conditioning frames: the first ``max(num_history, 1)`` latent frames. Frame 0 is ALWAYS a conditioning
frame: in Wan I2V the image is the first frame, and a Yume chunk without history is an image-to-video start
whose first latent frame is that image. A sampler therefore needs at least one history frame to condition
an I2V model (:func:`history_channels` refuses none).

Where the public sampler differs (spec/yume.md "The public sampler's pipeline"): its y on the chunk's frames
holds the VAE latents of GRAY frames continuing the history through the causal encoder, not zeros. That is
the ``continuation`` argument of :func:`history_channels`; computing it (a streamed VAE encode, one floor
up) is the caller's job: :class:`yume_jax.rollout.Session` and the latent dataset (``gray`` latents).
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


def fold_pixel_mask(pixel_mask: jax.Array) -> jax.Array:
    """Wan I2V's mask folding (wan/image2video.py): a per-pixel-frame mask (B, T, H, W) with T = 4n + 1 ->
    (B, 4, n + 1, H, W): the first pixel frame repeated 4 times, then 4 consecutive pixel frames per latent
    frame, the 4 of a latent frame becoming its 4 channels."""
    b, t, h, w = pixel_mask.shape
    if t % 4 != 1:
        raise ValueError(f"a pixel mask needs T = 4n + 1 frames, got {t}")
    m = jnp.concatenate([jnp.repeat(pixel_mask[:, :1], 4, axis=1), pixel_mask[:, 1:]], axis=1)
    return m.reshape(b, (t + 3) // 4, 4, h, w).transpose(0, 2, 1, 3, 4)


def i2v_mask(batch: int, frames: int, num_history: int, height: int, width: int, dtype=jnp.float32) -> jax.Array:
    """(B, 4, F, H, W): Wan's folded mask for F latent frames whose first ``conditioning_frames(num_history)``
    are conditioning: 1 on their 1 + 4 (n - 1) pixel frames, 0 on the rest."""
    n = conditioning_frames(num_history)
    pix = (jnp.arange(1 + 4 * (frames - 1)) < 1 + 4 * (n - 1)).astype(dtype)
    return fold_pixel_mask(jnp.broadcast_to(pix[None, :, None, None], (batch, pix.shape[0], height, width)))


def i2v_channels(latents: jax.Array, num_history: int, continuation: Optional[jax.Array] = None) -> jax.Array:
    """(B, 4 + C, F, H, W): mask channels (:func:`i2v_mask`), then ``latents`` on the conditioning frames (the
    first ``conditioning_frames(num_history)``) and ``continuation`` on the others (default zeros; the public
    sampler's: the VAE latents of gray frames continuing the history). ``latents``: (B, C, F, H, W) clean
    latents; only the conditioning frames are read. ``continuation``: shaped like ``latents`` (only its
    non-conditioning frames are read) or holding exactly the F - n non-conditioning frames."""
    b, c, f, h, w = latents.shape
    n = conditioning_frames(num_history)
    if n > f:
        raise ValueError(f"{n} conditioning frames but the latents have only {f} frames")
    on = (jnp.arange(f) < n).astype(latents.dtype)[None, None, :, None, None]
    mask = i2v_mask(b, f, n, h, w, latents.dtype)
    y = latents * on
    if continuation is not None:
        if continuation.shape == (b, c, f - n, h, w) and f - n != f:
            continuation = jnp.concatenate([jnp.zeros((b, c, n, h, w), latents.dtype),
                                            continuation.astype(latents.dtype)], axis=2)
        if continuation.shape != latents.shape:
            raise ValueError(f"continuation shape {continuation.shape} != latents shape {latents.shape} "
                             f"(or {(b, c, f - n, h, w)}, the non-conditioning frames)")
        y = y + continuation.astype(latents.dtype) * (1 - on)
    return jnp.concatenate([mask, y], axis=1)


def history_channels(history: jax.Array, chunk_frames: int, continuation: Optional[jax.Array] = None) -> jax.Array:
    """The sampler's channels for [history | chunk] latents: ``history`` (B, C, H_f, H, W), H_f >= 1 clean
    latent frames, followed by ``chunk_frames`` frames to generate: zeros in y unless ``continuation`` gives
    them, either the chunk's (B, C, chunk_frames, H, W) (the public sampler: the latents of gray frames
    continuing the history through the causal VAE) or shaped like the whole [history | chunk]. Equals
    :func:`i2v_channels` of the full clean latents with ``num_history = H_f`` (the training path)."""
    if history is None or history.shape[2] < 1:
        raise ValueError("an I2V model is conditioned on at least one frame (the start image): "
                         "sampling it needs history (frame 0 is always a conditioning frame)")
    b, c, nh, h, w = history.shape
    latents = jnp.concatenate([history, jnp.zeros((b, c, chunk_frames, h, w), history.dtype)], axis=2)
    return i2v_channels(latents, nh, continuation)
