"""Bounded compiles (issue 17): a long exploration compiles a fixed handful of programs, all in its first
chunks (history fed in bucketed lengths, yume_jax/models/memory.py; prompts at a fixed padded length,
yume_jax/encoders/text.py); the persistent compilation cache makes a second process compile nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from yume_jax.models import memory
from yume_jax.pipeline import CompileCounter, load_pipeline
from yume_jax.rollout import RolloutConfig, Session
from yume_jax.sampling.api import SamplerConfig, clear_shared
from yume_jax.testing import save_tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]
CHUNKS = 100  # a long exploration (issue 17's acceptance): the history at its window from chunk 2, prompts alternating
BUCKETS = (5, 7)  # image start: 5 latents of pseudo-history; stored 5, 6, 7 -> fed 5, 5, 7, then 7 forever
WARM = 3  # chunks after which nothing compiles: stored history at its window (max(BUCKETS)) from chunk 2
BOUND = 200  # XLA programs from the pipeline's load to the last chunk, most of them small eager ops (measured: 181)


def test_bucket_frames_keep_the_anchor_and_the_newest():
    assert memory.bucket_length(3, memory.BUCKETS) == 3 and memory.bucket_length(30, memory.BUCKETS) == 22
    np.testing.assert_array_equal(memory.bucket_frames(6, (5, 7)), [0, 2, 3, 4, 5])
    np.testing.assert_array_equal(memory.bucket_frames(7, (5, 7)), np.arange(7))
    np.testing.assert_array_equal(memory.bucket_frames(4, (5, 7)), np.arange(4))  # below the set: exact
    assert {memory.bucket_length(h, memory.BUCKETS) for h in range(2000)} <= set(range(7)) | set(memory.BUCKETS)
    with pytest.raises(ValueError, match="increasing"):
        RolloutConfig(history_buckets=(9, 5))


def test_text_encoder_fixed_length_compiles_once_per_batch(tmp_path):
    from yume_jax.encoders import TextEncoder
    from yume_jax.encoders.cache import PromptCache
    from yume_jax.presets import encoder

    te = TextEncoder.random(encoder("tiny-umt5"), cache=PromptCache())
    before = te._padded._cache_size()
    a = te.encode(["a"])
    b = te.encode(["a much longer prompt " * 8])
    assert te._padded._cache_size() - before == 1 and a.shape == b.shape == (1, te.text_len, te.config.dim)
    bucketed = TextEncoder(__import__("flax").nnx.merge(te.graphdef, te.params), tokenizer=te.tokenizer,
                           cache=PromptCache(), fixed_length=False)
    np.testing.assert_allclose(np.asarray(bucketed.encode(["a"])), np.asarray(a), atol=1e-5)


@pytest.mark.slow
@pytest.mark.usefixtures("fast_compiles")
def test_long_exploration_compiles_a_bounded_set_all_in_the_first_chunks(tmp_path):
    """100 chunks of the tiny I2V pipeline (sampling, VAE decode, the I2V re-encode and CLIP of every chunk) at
    16x16 pixels, 1 step: at most BOUND programs, none after chunk WARM; and the pipelined dispatch
    (Session.submit) never waits for the device (no device-to-host fetch), so decode i overlaps sampling i+1."""
    clear_shared()  # no sampler program left by an earlier test's pipeline of the same model
    d = save_tiny_pipeline(tmp_path / "tiny")
    start = CompileCounter.snapshot()["requests"]  # installs the listeners: counts from the pipeline's load
    pipe = load_pipeline(d)
    img = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    cfg = RolloutConfig(height=16, width=16, chunk_frames=1, sampler=SamplerConfig(steps=1, cfg_scale=1.0),
                        history_buckets=BUCKETS)
    session = Session(pipe, cfg, image=img)
    seen, fed = [], []
    for i, (frames, rec) in enumerate(session.explore("W" if i % 3 else "W+→" for i in range(CHUNKS))):
        assert frames.shape == (4, 16, 16, 3)
        seen.append(CompileCounter.snapshot()["requests"])
        fed.append((rec["history_stored"], rec["history_frames"]))
    assert len(seen) == CHUNKS and fed[:4] == [(5, 5), (6, 5), (7, 7), (7, 7)] and set(fed[3:]) == {(7, 7)}
    assert pipe.compiles == 2  # sampler programs: one per fed history length
    # every program of the exploration was obtained in its first WARM chunks (the pipelined loop dispatches
    # chunk i+1 before handing out chunk i, so chunk WARM's programs are counted at chunk WARM - 1)
    assert seen[WARM - 1] == seen[-1], f"compiled after chunk {WARM}: {seen[:12]} ... {seen[-1]}"
    assert seen[-1] - start <= BOUND, f"{seen[-1] - start} programs > bound {BOUND}"
    m = session.metrics()
    assert m["chunks"] == CHUNKS and m["history_frames"] == 7 and m["s_per_chunk"] > 0
    assert fetches_of(lambda: session.submit("W")) == []  # dispatch only: the host never waits for the device
    video = jnp.zeros((1, 3, 1, 16, 16))  # the spy sees fetches: a user's video is range-checked (min, max)
    assert len(fetches_of(lambda: pipe.vae.stream_encode(video))) == 2


def fetches_of(fn) -> list[str]:
    """The device-to-host fetches (jax.Array values read on the host, each a wait for the device) while ``fn``
    runs, as the innermost project frame of each; patches ``ArrayImpl._value``, through which every conversion
    (float(), np.asarray, device_get) goes."""
    import traceback

    from jax._src import array as jarray

    seen, orig = [], jarray.ArrayImpl._value

    def spy(self):
        frames = [f for f in traceback.extract_stack() if "yume_jax" in f.filename]
        seen.append(f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?")
        return orig.fget(self)
    jarray.ArrayImpl._value = property(spy)
    try:
        fn()
    finally:
        jarray.ArrayImpl._value = orig
    return seen


@pytest.mark.slow
def test_second_launch_of_the_explorer_compiles_nothing(tmp_path):
    """Two launches of ``python -m infer.explore``, one cache directory (``--compile-cache``): the second reads
    every program back (cache hits), compiles none. The explorer's sidecar counts them (``compiles``, from the
    process's start). This needs every program free of host callbacks (a per-step progress callback inside the
    sampler keeps it out of the cache: progress is per chunk, on the host) and the explorer's pipelined loop."""
    from yume_jax.pipeline import enable_compile_cache

    d = save_tiny_pipeline(tmp_path / "tiny", kind="ti2v")  # written here: both processes do the same work
    cache = tmp_path / "xla"
    # (XLA's optimisations off in both: at this size a process's time is its compiles)
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}.mp4"
        # a text-only start (the Yume-5B layout allows it); chunk 1 has the history at its bucket (1)
        p = subprocess.run([sys.executable, "-m", "infer.explore", "--checkpoint", str(d), "--actions", "W,A",
                            "--steps", "1", "--cfg", "1", "--height", "32", "--width", "64", "--chunk-frames", "1",
                            "--history-mode", "clean", "--history-buckets", "1", "--compile-cache", str(cache),
                            "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert p.returncode == 0, p.stderr[-3000:]
        side = json.loads(Path(str(out) + ".json").read_text())
        assert side["finished"] and len(side["chunks"]) == 2 and [c["chunk"] for c in side["chunks"]] == [0, 1]
        assert all(set(c["critical_path_s"]) == {"text", "dispatch", "wait", "interval"} for c in side["chunks"])
        runs.append(side["compiles"])
    first, second = runs
    assert first["compiled"] > 10 and first["cache_hits"] == 0
    assert second["compiled"] == 0 and 0 < second["cache_hits"] == second["requests"] == first["requests"]
    assert sorted(q.name for q in cache.iterdir()) and enable_compile_cache("off") is None  # "off": no cache
