"""The rectified-flow training objective of Yume (spec/yume.md "Training objective", "MVDT", "History
memory"; I2V channels: spec/wan.md "DiT configurations").

For clean latents x0 (B, C, F, H, W) whose last ``chunk`` frames are the current chunk and whose first
F - chunk frames are history:

- t ~ logit-normal (sigmoid of N(t_mean, t_std)), shifted: t' = s t / (1 + (s - 1) t) with s = 3;
  the model sees t' * 1000. One t per sample.
- x_t = t' eps + (1 - t') x0, target velocity v = eps - x0.
- History: noised with the same t' as the chunk (Yume 1.0, ``history="noised"``) or kept clean with
  per-token t = 0 on its tokens (Yume 1.5, ``history="clean"``).
- I2V models (in_channels = 2 C + 4) get [x_t (C) | mask (4) | y (C)] where y holds the clean latents
  of the conditioning frames and elsewhere the batch's ``gray`` continuation (zeros without it), and the 4 mask channels are 1 on conditioning frames.
  Conditioning frames (latent level): the history frames when there is history, else the first latent
  frame (the input image, as Wan I2V).
- Loss: unweighted MSE between the predicted and target velocity on the chunk only. With MVDT the
  same x_t goes through the masked forward (a random ratio r = 0.3 + U(0, 0.2) of the tokens, history
  included, removed before the first half of the blocks) and through the plain forward; the two
  losses are summed.

The masked token count is a static shape: it is drawn on the host per step (:func:`keep_for_step`,
a pure function of seed and step) and rounded, law-preserving, to one of a few counts by
:func:`yume_jax.models.masking.keep_count` (randomised rounding: mean ratio exact, range [0.3, 0.5]).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from yume_jax.models import masking
from yume_jax.models.conditioning import MASK_CHANNELS, i2v_channels
from yume_jax.models.layers import F32


def sample_t(key: jax.Array, batch: int, mean: float = 0.0, std: float = 1.0, shift: float = 3.0) -> jax.Array:
    """Shifted logit-normal times in (0, 1), shape (batch,)."""
    u = jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,), F32))
    return shift_t(u, shift)


def shift_t(t, shift: float):
    """t' = shift t / (1 + (shift - 1) t) (spec/yume.md: shift 3 gives 3t / (1 + 2t))."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def interpolate(x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = t eps + (1 - t) x0 with t (B,) broadcast over the other axes."""
    tb = t.reshape(-1, *([1] * (x0.ndim - 1)))
    return tb * eps + (1.0 - tb) * x0


def conditioning(x0: jax.Array, num_history: int, continuation: jax.Array | None = None) -> jax.Array:
    """(B, 4 + C, F, H, W): mask channels then the clean latents of the conditioning frames and, elsewhere,
    ``continuation`` (the dataset's ``gray`` latents, as the public sampler's y) or zeros; the shared builder,
    :func:`yume_jax.models.conditioning.i2v_channels` (frame 0 always conditions)."""
    return i2v_channels(x0, num_history, continuation)


def model_inputs(x0: jax.Array, eps: jax.Array, t: jax.Array, chunk: int, history: str, i2v: bool,
                 continuation: jax.Array | None = None):
    """(model input, target velocity on the chunk, history_timestep) for clean latents x0; ``continuation``:
    the chunk's gray latents (B, C, chunk, H, W) of the I2V channels (None: zeros)."""
    f = x0.shape[2]
    nh = f - chunk
    xt = interpolate(x0, eps, t)
    clean = history == "clean" and nh > 0
    if clean:
        xt = jnp.concatenate([x0[:, :, :nh], xt[:, :, nh:]], axis=2)
    if continuation is not None and i2v:  # the chunk's gray latents -> shaped like x0 (history part unread)
        continuation = jnp.concatenate([jnp.zeros_like(x0[:, :, :nh]), continuation], axis=2)
    inp = jnp.concatenate([xt, conditioning(x0, nh, continuation)], axis=1) if i2v else xt
    target = (eps - x0)[:, :, nh:]
    return inp, target, (0.0 if clean else None)


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.mean(jnp.square(pred.astype(F32) - target.astype(F32)))


def loss(model, batch: dict, key: jax.Array, *, chunk: int, keep: int | None, history: str = "noised",
         t_mean: float = 0.0, t_std: float = 1.0, shift: float = 3.0, i2v: bool = True, runtime=None):
    """Training loss of one (micro-)batch and its parts.

    ``batch``: latents (B, C, F, H, W) float32, text (B, L, text_dim), image (B, N, image_dim) when the
    model has image cross-attention, [gray (B, C, chunk, H, W): the I2V channels' continuation on the chunk's frames]. ``keep``: static kept-token count of the MVDT pass (None: no MVDT).
    Returns (loss, {"loss_unmasked", "loss_masked"}).
    """
    x0 = batch["latents"].astype(F32)
    b, c, f, _, _ = x0.shape
    if not 0 < chunk <= f:
        raise ValueError(f"chunk={chunk} must be in 1..{f} latent frames")
    k_t, k_eps, k_mask = jax.random.split(key, 3)
    t = sample_t(k_t, b, t_mean, t_std, shift)
    eps = jax.random.normal(k_eps, x0.shape, F32)
    use_i2v = i2v and model.cfg.in_channels == 2 * c + MASK_CHANNELS
    if model.cfg.in_channels not in (c, 2 * c + MASK_CHANNELS) or (model.cfg.in_channels != c and not use_i2v):
        raise ValueError(f"model takes {model.cfg.in_channels} channels; latents have {c} "
                         f"(expected {c}, or {2 * c + MASK_CHANNELS} with I2V conditioning)")
    gray = batch.get("gray")
    inp, target, hist_t = model_inputs(x0, eps, t, chunk, history, use_i2v,
                                       None if gray is None else gray.astype(F32))
    kw = dict(chunk=chunk if chunk < f else None, history_timestep=hist_t if chunk < f else None)
    if runtime is not None:
        kw["runtime"] = runtime
    image = batch.get("image")
    v = model(inp, t * 1000.0, batch["text"], image, **kw)
    l_plain = mse(v, target)
    if keep is None:
        return l_plain, {"loss_unmasked": l_plain, "loss_masked": jnp.zeros((), F32)}
    vm = model.forward_masked(inp, t * 1000.0, batch["text"], image, key=k_mask, keep=keep, **kw)
    l_mask = mse(vm, target)
    return l_plain + l_mask, {"loss_unmasked": l_plain, "loss_masked": l_mask}


def num_tokens(frames: int, height: int, width: int, chunk: int) -> int:
    """Tokens of the full sequence (compressed history + chunk) for latents of this shape (patch 1x2x2)."""
    from yume_jax.models import memory
    return int(sum(memory.token_counts(frames - chunk, height, width, chunk).values()))


def keep_for_step(seed: int, step: int, tokens: int, low: float = 0.3, width: float = 0.2,
                  buckets: int = masking.DEFAULT_BUCKETS) -> int:
    """Kept-token count of the MVDT pass at ``step``: r = low + U(0, width) from a host RNG seeded by
    (seed, step), rounded at random to one of ``buckets`` counts so that the applied ratio keeps the law's
    mean and range (:func:`masking.draw_keep`); identical on every process, reproducible after a restart."""
    rng = np.random.default_rng([seed, step, 0x4D564454])
    return masking.draw_keep(rng, tokens, low, width, buckets)
