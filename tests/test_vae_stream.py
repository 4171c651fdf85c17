"""Streaming VAE: pieces equal one call, saved states resume exactly, steps compile once, memory stays flat."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from yume_jax import presets
from yume_jax.vae import StreamState, WanVAE
from yume_jax.vae.params import init_params

H, W = 32, 48  # non-square, tiny-2.2 strides (latent 2 x 3)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def vae():
    cfg = presets.vae("tiny-2.2")
    return WanVAE(cfg, init_params(cfg, seed=0))


@pytest.fixture(scope="module")
def data(vae):
    rng = np.random.default_rng(0)
    video = rng.uniform(-1, 1, (1, 3, 25, H, W)).astype(np.float32)
    lat = rng.standard_normal((1, vae.cfg.z_dim, 7, H // 16, W // 16)).astype(np.float32)
    return video, lat


def test_pieces_equal_whole(vae, data):
    video, lat = data
    whole = np.asarray(vae.decode(lat))
    outs, state = [], None
    for a, b in ((0, 3), (3, 4), (4, 7)):  # an explorer decoding only each chunk's new latent frames
        y, state = vae.stream_decode(lat[:, :, a:b], state)
        outs.append(np.asarray(y))
    assert [o.shape[2] for o in outs] == [9, 4, 12] and state.frames == 7
    np.testing.assert_array_equal(np.concatenate(outs, axis=2), whole)

    zwhole = np.asarray(vae.encode(video))
    outs, state = [], None
    for a, b in ((0, 9), (9, 17), (17, 21), (21, 25)):
        z, state = vae.stream_encode(video[:, :, a:b], state)
        outs.append(np.asarray(z))
    assert [o.shape[2] for o in outs] == [3, 2, 1, 1]
    np.testing.assert_array_equal(np.concatenate(outs, axis=2), zwhole)
    assert vae.traces == {"encode": 2, "decode": 2, "assemble": 0}  # no retrace per chunk or per call


def test_saved_state_resumes(vae, data, tmp_path):
    _, lat = data
    _, state = vae.stream_decode(lat[:, :, :3])
    keep = state.copy()
    keep.save(tmp_path / "dec.npz")
    direct, _ = vae.stream_decode(lat[:, :, 3:], state)
    with pytest.raises(ValueError, match="consumed"):
        vae.stream_decode(lat[:, :, 3:], state)
    loaded = StreamState.load(tmp_path / "dec.npz")
    assert loaded.frames == 3 and loaded.shape == (1, H // 16, W // 16)
    other = WanVAE(presets.vae("tiny-2.1"), init_params(presets.vae("tiny-2.1")))
    with pytest.raises(ValueError, match="different config"):
        other.stream_decode(lat[:, :, 3:, :, :], StreamState.load(tmp_path / "dec.npz"))
    resumed, _ = vae.stream_decode(lat[:, :, 3:], loaded)
    branch, _ = vae.stream_decode(lat[:, :, 3:], keep)
    np.testing.assert_array_equal(resumed, direct)
    np.testing.assert_array_equal(branch, direct)


def test_more_latents_per_step(vae, data):
    """Steps of several latent frames give the same numbers up to float rounding (measured ~1e-6)."""
    video, lat = data
    one_x, one_z = np.asarray(vae.decode(lat)), np.asarray(vae.encode(video))
    before = dict(vae.traces)
    vae.latents_per_step = 3
    try:
        x3 = vae.decode(lat)  # steps of 1, 3, 3 latent frames
        vae.latents_per_step = 2
        z2 = vae.encode(video)  # steps of 1, 8, 8, 8 frames
    finally:
        vae.latents_per_step = 1
    assert rel(x3, one_x) <= 5e-6 and rel(z2, one_z) <= 5e-6, (rel(x3, one_x), rel(z2, one_z))
    assert vae.traces["decode"] == before["decode"] + 1 and vae.traces["encode"] == before["encode"] + 1


def _live_mb():
    return sum(a.nbytes for a in jax.live_arrays()) / 2 ** 20


def test_live_buffers_flat(vae, data):
    """Decoding latent frames one call at a time holds the same device buffers after chunk 4 as after chunk 16."""
    _, lat = data
    state, live = None, []
    for i in range(16):
        y, state = vae.stream_decode(lat[:, :, i % 7:i % 7 + 1], state)
        y.block_until_ready()
        del y
        live.append(_live_mb())
    assert max(live[-4:]) == max(live[2:6]), live


RSS_SCRIPT = """
import json, os, sys
import numpy as np
from yume_jax import presets
from yume_jax.vae import WanVAE
from yume_jax.vae.params import init_params
cfg = presets.vae("tiny-2.2", decoder_base_dim=4)
vae = WanVAE(cfg, init_params(cfg))
h, w, n = 192, 320, 40
rng = np.random.default_rng(1)
state, rss = None, []
for i in range(n):
    lat = rng.standard_normal((1, cfg.z_dim, 1, h // 16, w // 16)).astype(np.float32)
    y, state = vae.stream_decode(lat, state)
    y.block_until_ready()
    del y
    with open("/proc/self/statm") as f:
        rss.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20)
print(json.dumps(rss))
"""


def test_rss_flat_as_length_grows():
    """Resident memory of a fresh process decoding 40 latent frames (157 video frames at 192x320) one chunk at a
    time stays flat: the median RSS of chunks 31-40 is within a quarter of the video decoded since chunks 6-15
    (a process keeping even a quarter of each decoded chunk fails this).

    glibc malloc is pinned (2 arenas, fixed 64 KiB mmap threshold, trim on free): by default its dynamic mmap
    threshold moves multi-MB XLA buffers into the heap after the first free, and RSS then drifts with heap
    fragmentation by tens of MB from run to run while the live JAX buffers are exactly flat (test_live_buffers_flat).
    The pinned allocator measures the program, not glibc's heuristics."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "65536",
           "MALLOC_TRIM_THRESHOLD_": "0"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    rss = json.loads(out.stdout.strip().splitlines()[-1])
    chunk_mb = 4 * 3 * 192 * 320 * 4 / 2 ** 20  # one latent frame decodes to 4 fp32 video frames
    early, late = float(np.median(rss[5:15])), float(np.median(rss[30:40]))
    between = 25 * chunk_mb
    print(f"stream decode 192x320, 40 chunks: median RSS chunks 6-15 {early:.1f} MB, chunks 31-40 {late:.1f} MB "
          f"(video decoded in between {between:.1f} MB)")
    assert late - early < 0.25 * between, [round(r, 1) for r in rss]
