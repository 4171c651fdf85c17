"""The metrics can tell: ground-truth renders score instruction following 1 and capped PSNR; renders of
the opposite or a shifted script score low; noise scores 0; reversal latency and boundary jumps show."""
from __future__ import annotations

import numpy as np
import pytest

from yume_jax.camera import parse_keys
from yume_jax.data import world
from yume_jax.eval import bench, harness, metrics

F = 8  # frames per chunk (2 latent frames)
CASE = bench.Case("sanity", "reversal", "W*2, →*2", index=900, reversal_at=2)


@pytest.fixture(scope="module")
def scored():
    truth = harness.Truth()
    wcfg = world.WorldConfig()
    K = wcfg.intrinsics()
    t = truth.get(CASE, wcfg, F)
    out = {}
    for kind in ("truth", "opposite", "shuffled", "noise"):
        video = harness._reference(harness.RunSpec(kind, kind=kind), CASE, wcfg, F, truth)
        out[kind] = harness.score(video, CASE.actions, K, harness.EvalConfig(), truth=t, F=F,
                                  reversal_at=CASE.reversal_at, returns=False)
    return out


def test_ground_truth_scores_one(scored):
    s = scored["truth"]
    assert s["instruction_following"] == dict(keys=1.0, mouse=1.0, both=1.0)
    assert s["fidelity"]["psnr"] == [metrics.PSNR_CAP] * 4 and s["fidelity"]["ssim"] == [1.0] * 4
    assert s["pose"]["mean_rotation_deg"] < 1.5
    assert s["reversal"] == dict(latency=0, followed=True, component="both")
    assert 0.5 < s["smoothness"]["boundary_ratio"] < 1.5


@pytest.mark.parametrize("kind", ["opposite", "shuffled"])
def test_wrong_actions_score_low(scored, kind):
    s = scored[kind]
    assert s["instruction_following"]["both"] <= 0.25
    assert max(s["fidelity"]["psnr"]) < 20


def test_noise_scores_zero(scored):
    s = scored["noise"]
    assert s["instruction_following"] == dict(keys=0.0, mouse=0.0, both=0.0)
    assert max(s["fidelity"]["ssim"]) < 0.1
    assert s["smoothness"]["flicker"] > 5 * scored["truth"]["smoothness"]["flicker"]


def test_reversal_latency_counts_chunks():
    from yume_jax.eval.motion import Motion
    acts = parse_keys("→*2, ←*3")
    still = Motion(False, np.eye(3), np.zeros(3), False, 0.0, 0, 0)
    est = parse_keys("→*2, →, ·, ←")
    labels = [metrics.ChunkLabel(a, e, still) for a, e in zip(acts, est)]
    assert metrics.reversal_latency(labels, 2) == dict(latency=2, followed=True, component="mouse")
    labels[-1] = metrics.ChunkLabel(acts[-1], None, still)
    assert metrics.reversal_latency(labels, 2) == dict(latency=3, followed=False, component="mouse")


def test_boundary_jumps_show():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (32, 32, 3)).astype(np.uint8)
    chunks = [np.stack([base + i for i in range(1, 7)]).astype(np.uint8) for _ in range(3)]  # resets each chunk
    s = metrics.smoothness(base, chunks)
    assert s["boundary_ratio"] > 2.0
    smooth = metrics.smoothness(base, [np.stack([base + 4 * k + i + 1 for i in range(4)]).astype(np.uint8)
                                       for k in range(3)])
    assert smooth["boundary_ratio"] == pytest.approx(1.0) and smooth["flicker"] == pytest.approx(0.0)
