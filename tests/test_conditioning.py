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
