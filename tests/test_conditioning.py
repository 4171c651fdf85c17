"""The shared I2V conditioning channels (spec/wan.md "DiT configurations"): frame 0 always conditions, the
sampler's and the training objective's channels agree."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yume_jax.models.conditioning import MASK_CHANNELS, conditioning_frames, history_channels, i2v_channels
from yume_jax.train.objective import conditioning

X0 = jax.random.normal(jax.random.key(0), (2, 3, 5, 4, 6))


@pytest.mark.parametrize("nh", [0, 1, 3])
def test_mask_and_latents_on_the_conditioning_frames(nh):
    y = np.asarray(i2v_channels(X0, nh))
    n = max(nh, 1)  # frame 0 (the image) conditions even without history
    assert y.shape == (2, MASK_CHANNELS + 3, 5, 4, 6) and conditioning_frames(nh) == n
    assert (y[:, :MASK_CHANNELS, :n] == 1).all() and (y[:, :MASK_CHANNELS, n:] == 0).all()
    np.testing.assert_array_equal(y[:, MASK_CHANNELS:, :n], np.asarray(X0[:, :, :n]))
    assert (y[:, MASK_CHANNELS:, n:] == 0).all()
    np.testing.assert_array_equal(np.asarray(conditioning(X0, nh)), y)  # the training objective uses it


@pytest.mark.parametrize("nh", [1, 2, 4])
def test_sampler_channels_equal_training_channels(nh):
    got = history_channels(X0[:, :, :nh], 5 - nh)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(conditioning(X0, nh)))


def test_continuation_fills_only_the_chunk_and_no_history_is_refused():
    gray = jnp.full_like(X0, 7.0)
    y = np.asarray(history_channels(X0[:, :, :2], 3, continuation=gray))
    np.testing.assert_array_equal(y[:, MASK_CHANNELS:, :2], np.asarray(X0[:, :, :2]))
    assert (y[:, MASK_CHANNELS:, 2:] == 7.0).all()
    with pytest.raises(ValueError, match="at least one frame"):
        history_channels(None, 2)
    with pytest.raises(ValueError, match="continuation shape"):
        i2v_channels(X0, 1, continuation=gray[:, :, :2])


def _wan_mask_reference(pixel_on: np.ndarray, total_pixels: int, h: int, w: int) -> np.ndarray:
    """Wan I2V's mask as image2video.py builds it (spec/yume.md): ones on the conditioning pixel frames, the
    first pixel frame repeated 4 times, viewed as (latent frames, 4) and transposed to 4 channels."""
    msk = np.zeros((total_pixels, h, w), np.float32)
    msk[:pixel_on] = 1
    msk = np.concatenate([np.repeat(msk[:1], 4, axis=0), msk[1:]], axis=0)
    return msk.reshape(msk.shape[0] // 4, 4, h, w).transpose(1, 0, 2, 3)


@pytest.mark.parametrize("nh", [0, 1, 2, 4])
def test_mask_is_wans_pixel_mask_folded(nh):
    n = max(nh, 1)
    ref = _wan_mask_reference(1 + 4 * (n - 1), 1 + 4 * 4, 4, 6)  # 5 latent frames
    got = np.asarray(i2v_channels(X0, nh))[:, :MASK_CHANNELS]
    np.testing.assert_array_equal(got, np.broadcast_to(ref, got.shape))


def test_chunk_shaped_continuation_equals_full_shaped():
    gray = jax.random.normal(jax.random.key(1), X0[:, :, 2:].shape)
    full = jnp.concatenate([jnp.zeros_like(X0[:, :, :2]), gray], axis=2)
    a = np.asarray(history_channels(X0[:, :, :2], 3, continuation=gray))
    np.testing.assert_array_equal(a, np.asarray(history_channels(X0[:, :, :2], 3, continuation=full)))
    np.testing.assert_array_equal(a[:, MASK_CHANNELS:, 2:], np.asarray(gray))


def test_training_inputs_take_the_datasets_gray_chunk_latents():
    from yume_jax.train.objective import model_inputs

    gray = jax.random.normal(jax.random.key(2), X0[:, :, 3:].shape)  # chunk of 2 after 3 history frames
    t = jnp.full((2,), 0.5)
    inp, _, _ = model_inputs(X0, jnp.zeros_like(X0), t, 2, "noised", True, gray)
    y = np.asarray(inp[:, 3 + MASK_CHANNELS:])
    np.testing.assert_array_equal(y[:, :, :3], np.asarray(X0[:, :, :3]))
    np.testing.assert_array_equal(y[:, :, 3:], np.asarray(gray))
