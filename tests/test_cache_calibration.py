"""Block cache calibration (spec/yume.md "Distillation and caching"): greedy set selection that measures the
SET's error, the paper's default size (10 of 40, scaled), and the calibration CLI on a tiny pipeline."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from PIL import Image

from yume_jax.pipeline import load_pipeline
from yume_jax.sampling import cache as blockcache
from yume_jax.testing import save_tiny_pipeline


def _synthetic(num_layers, alone, pair):
    """A run whose output error is sum of per-block costs plus pairwise interactions (a known set error)."""
    calls = []

    def run(slot_of_layer, refresh):
        calls.append(refresh)
        s = [int(b) for b in np.flatnonzero(slot_of_layer >= 0)]
        err = sum(alone[b] for b in s) + sum(pair.get((a, b), 0.0) for a, b in itertools.combinations(s, 2))
        return np.asarray([1.0 + err, 0.0])

    return run, calls


def test_greedy_measures_the_set_not_single_blocks():
    # alone, blocks 0 and 1 are the cheapest; together they interact badly, so a ranking of single blocks
    # picks {0, 1} (error 1.2) while the greedy set picks {0, 2} (error 0.4)
    alone = [0.1, 0.1, 0.3, 0.5, 0.9]
    run, calls = _synthetic(5, alone, {(0, 1): 1.0})
    res = blockcache.calibrate(run, 5, np.asarray([1.0, 0.0]), num=2, refresh=3, progress=False)
    assert res["blocks"][0] in (0, 1) and sorted(res["blocks"]) in ([0, 2], [1, 2])
    assert res["error"] == pytest.approx(0.4) and res["steps"][-1]["error"] == res["error"]
    assert [r["block"] for r in res["steps"]] == res["blocks"] and res["refresh"] == 3
    assert set(calls) == {3} and len(calls) == 5 + 4  # every candidate set of each round measured
    # the reported error is the set's own measurement
    slot = blockcache.slots(5, res["blocks"])
    assert blockcache.relative_error(run(slot, 3), [1.0, 0.0]) == pytest.approx(res["error"])


def test_default_count_is_the_papers_quarter():
    assert blockcache.default_count(40) == 10 and blockcache.default_count(30) == 8
    assert blockcache.default_count(4) == 1 and blockcache.default_count(2) == 1
    run, _ = _synthetic(8, [0.1 * i for i in range(8)], {})
    res = blockcache.calibrate(run, 8, np.asarray([1.0, 0.0]), progress=False)
    assert res["blocks"] == [0, 1]
    with pytest.raises(ValueError, match="cannot cache"):
        blockcache.calibrate(run, 8, np.asarray([1.0, 0.0]), num=9, progress=False)


def test_pipeline_default_cache_blocks_are_the_middle_quarter(tmp_path):
    pipe = load_pipeline(save_tiny_pipeline(tmp_path / "p"))
    n = pipe.dit.config.num_layers
    k = blockcache.default_count(n)
    blocks = pipe.default_cache_blocks()
    assert len(blocks) == k and blocks == tuple(range((n - k) // 2, (n - k) // 2 + k))


def test_calibrate_cli_writes_the_set_and_its_error(tmp_path):
    from infer import calibrate_cache

    d = save_tiny_pipeline(tmp_path / "p", defaults={"height": 32, "width": 48, "chunk_frames": 1})
    out = tmp_path / "cache.json"
    img = tmp_path / "start.png"
    Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)).save(img)
    rc = calibrate_cache.main(["--checkpoint", str(d), "--image", str(img), "--steps", "3", "--cfg", "1.0", "--num", "1",
                               "--refresh", "2", "--out", str(out), "--write-pipeline"])
    assert rc == 0
    rep = json.loads(out.read_text())
    n = load_pipeline(d).dit.config.num_layers
    assert len(rep["blocks"]) == 1 and len(rep["rounds"]) == 1 and rep["refresh"] == 2
    assert rep["error"] == rep["rounds"][-1]["error"] > 0  # a step skips the block: the chunk changes
    pj = json.loads((d / "pipeline.json").read_text())
    assert pj["cache_blocks"] == rep["blocks"] and pj["cache_error"] == rep["error"] and pj["cache_refresh"] == 2
    assert pj["height"] == 32  # the other defaults survive
    assert load_pipeline(d).default_cache_blocks() == tuple(rep["blocks"])
    assert all(0 <= b < n for b in rep["blocks"])
