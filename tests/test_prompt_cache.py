"""Prompt cache: the default in ``TextEncoder.encode``; a prompt seen before (same encoder identity) runs no
encoder compute. Counted by wrapping ``TextEncoder._compute``, the only place ``encode`` runs the model."""
import numpy as np
import pytest
import torch
from transformers import UMT5Config, UMT5EncoderModel

import yume_jax
from yume_jax.convert import convert
from yume_jax.encoders import DEFAULT_CACHE, PromptCache, TextEncoder
from yume_jax.presets import encoder as get


class Counter:
    """Wraps an encoder's _compute; records the number of prompts of every call."""

    def __init__(self, te):
        self.calls = []
        inner = te._compute

        def counted(ids, lengths):
            self.calls.append(len(lengths))
            return inner(ids, lengths)

        te._compute = counted


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("cache")
    UMT5EncoderModel(UMT5Config(vocab_size=384, d_model=24, d_kv=4, d_ff=40, num_layers=2, num_heads=3)).save_pretrained(
        root / "hf")
    convert(root / "hf", root / "jax", progress=False)
    torch.manual_seed(1)
    UMT5EncoderModel(UMT5Config(vocab_size=384, d_model=24, d_kv=4, d_ff=40, num_layers=2, num_heads=3)).save_pretrained(
        root / "hf2")
    convert(root / "hf2", root / "jax2", progress=False)
    return root


@pytest.fixture(scope="module")
def random_te():
    return TextEncoder.random(get("tiny-umt5"))


def test_second_call_does_no_encoder_compute(random_te):
    te = random_te
    te.cache = cache = PromptCache()
    n = Counter(te)
    a = np.asarray(te.encode(["turn left", "move forward"]))
    assert n.calls == [2]
    b = np.asarray(te.encode(["move forward", "turn left"]))
    assert n.calls == [2]  # nothing computed
    np.testing.assert_array_equal(b, a[::-1])
    c = np.asarray(te.encode(["turn left", "look up", "turn left", "look up"]))
    assert n.calls == [2, 1]  # only the new prompt, once
    np.testing.assert_array_equal(c[0], a[0])
    np.testing.assert_array_equal(c[1], c[3])
    assert (cache.hits, cache.misses) == (3, 3)  # counted per distinct prompt of a call
    # the cache changes nothing: same result as without it (which computes every time)
    d = np.asarray(te.encode(["turn left", "look up"], use_cache=False))
    assert n.calls == [2, 1, 2]
    np.testing.assert_allclose(d, c[:2], rtol=1e-6, atol=1e-6)
    # the same prompt up to Wan's whitespace cleaning is the same entry
    te.encode(["  turn   left\n"])
    assert n.calls == [2, 1, 2]


def test_default_cache_keyed_by_encoder_identity(ckpt, random_te):
    DEFAULT_CACHE.clear()
    t1 = yume_jax.load_text_encoder(ckpt / "jax")
    assert t1.cache is DEFAULT_CACHE  # the default in inference
    c1 = Counter(t1)
    x = np.asarray(t1.encode(["walk forward"]))
    assert c1.calls == [1]
    t1b = yume_jax.load_text_encoder(ckpt / "jax")  # same checkpoint, same settings: shares entries
    c1b = Counter(t1b)
    np.testing.assert_array_equal(np.asarray(t1b.encode(["walk forward"])), x)
    assert c1b.calls == []
    for other in (yume_jax.load_text_encoder(ckpt / "jax2"), yume_jax.load_text_encoder(ckpt / "jax", dtype="bfloat16"),
                  random_te):
        other.cache = DEFAULT_CACHE
        co = Counter(other)
        y = np.asarray(other.encode(["walk forward"]), np.float32)
        assert co.calls == [1], "a different checkpoint / dtype / random encoder must not reuse the entry"
        assert not np.array_equal(y, x)
    DEFAULT_CACHE.clear()


def test_lru_eviction(random_te):
    te = random_te
    te.cache = cache = PromptCache(max_entries=2)
    n = Counter(te)
    te.encode(["a"])
    te.encode(["b"])
    te.encode(["a"])  # a becomes most recent
    te.encode(["c"])  # evicts b
    assert n.calls == [1, 1, 1] and len(cache) == 2
    te.encode(["a"])
    assert n.calls == [1, 1, 1]
    te.encode(["b"])
    assert n.calls == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="max_entries"):
        PromptCache(max_entries=0)
