"""sandbox-bench (yume_jax.eval.bench) and world.render_walk: the exact continuation of a start view."""
from __future__ import annotations

import numpy as np
import pytest

from yume_jax.camera import KEYS, MOUSE
from yume_jax.data import world
from yume_jax.eval import bench

TINY = world.PRESETS["tiny"]


def test_render_walk_is_make_clip_at_the_chosen_frames():
    script = world.script_from_keys("W+→, S*2", pairs_per_step=2)
    clip = world.make_clip(5, 7, TINY, script=script)
    frames, c2w, K = world.render_walk(5, script, TINY, [0, 3, 6])
    np.testing.assert_array_equal(frames, clip.frames[[0, 3, 6]])
    np.testing.assert_array_equal(c2w, clip.c2w)
    np.testing.assert_array_equal(K, clip.intrinsic)
    with pytest.raises(ValueError, match="outside"):
        world.render_walk(5, script, TINY, [7])


def test_cases_cover_every_label_and_the_required_kinds():
    cs = bench.cases()
    acts = [a for c in cs for a in c.actions]
    assert {a.keys for a in acts} == set(KEYS) and {a.mouse for a in acts} == set(MOUSE)
    assert {c.kind for c in cs} == {"key", "mouse", "combo", "reversal", "revisit", "long"}
    assert any(len(c.actions) >= 16 for c in cs if c.kind == "long")
    assert len({c.name for c in cs}) == len(cs)
    for c in cs:
        world.simulate(c.walk(8))  # every script stays inside the pitch range
        if c.reversal_at is not None:
            assert c.actions[c.reversal_at] != c.actions[c.reversal_at - 1]
    assert {c.name for c in cs if c.returns(8)} >= {"reverse-W-S", "revisit-square", "revisit-look", "long-loop"}


def test_seeds_are_fixed_distinct_and_held_out_from_training():
    cs = bench.cases(views=2)
    seeds = [tuple(c.seed) for c in cs]
    assert len(set(seeds)) == len(seeds)
    # training renders clip i of a dataset from the two-entry seed [seed, i] (world.write_dataset)
    assert all(len(s) == 4 and s[0] == bench.SEED_TAG for s in seeds)
    assert bench.cases() == bench.cases()


def test_select():
    assert [c.name for c in bench.select("quick")] == list(bench.QUICK)
    assert {c.kind for c in bench.select("reversal,long")} == {"reversal", "long"}
    assert len(bench.select("all", views=2)) == 2 * len(bench.cases())
    with pytest.raises(ValueError, match="unknown case"):
        bench.select("nope")
