"""Camera motion from pixels (yume_jax.eval.motion): ground-truth sandbox clips of different actions get
their QCM labels and small rotation errors; labels follow Algorithm 1; noise and blank frames are invalid."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from yume_jax.camera import ALL_ACTIONS, Action, parse_step
from yume_jax.data import world
from yume_jax.eval import motion as M

CFG = world.PRESETS["default"]  # 96 x 160, the default model's resolution
TAG = 0x7A1D  # bench/motion_estimator.py's validation seeds: [TAG, seed, action index]


def _walk(step: str, seed: int = 0, pairs: int = 8):
    a = parse_step(step)
    frames, c2w, K = world.render_walk([TAG, seed, a.index], [world.Step(a, pairs)], CFG)
    return a, frames, c2w, K


@pytest.mark.parametrize("step", ["→", "↑", "↓+←", "W", "A", "S", "D", "W+→", "None"])
def test_ground_truth_clips_get_their_labels(step):
    a, frames, c2w, K = _walk(step)
    m = M.estimate(frames, K)
    assert m.valid, m.reason
    assert M.label(m) == a
    R, t = M.relative_pose(c2w[0], c2w[-1])
    assert M.rotation_error_deg(m.R, R) < 2.0
    assert m.translating == (a.keys != "None")
    if m.translating:
        assert M.translation_error_deg(m.t, t) < 15.0


# Moving cameras that the corner-only tracker (21-pixel LK window, no grid) labelled wrongly: sideways motion
# taken for a turn and back (D → as W+A ↑→, A ↑← as D ↑←, S+A → as S+D ←), diagonals lost (W+A ↑← as A ↑←).
@pytest.mark.parametrize("step", ["D+→", "D+←", "A+↑+←", "W+A+↑+←", "S+A+→", "W+D+←", "S+D+↓+←", "W+←"])
def test_moving_camera_keys_and_mouse(step):
    a, frames, c2w, K = _walk(step)
    m = M.estimate(frames, K)
    assert m.valid and m.translating, m.reason
    assert M.label(m) == a
    R, t = M.relative_pose(c2w[0], c2w[-1])
    assert M.rotation_error_deg(m.R, R) < 4.0  # p90 over the 324 validation clips: 2.2 degrees
    assert M.translation_error_deg(m.t, t) < 15.0


def test_grid_tracks_outnumber_corners():
    _, frames, _, _ = _walk("D+→")
    corners = M.track_paths(frames, M.MotionConfig(grid_step=0.0))
    paths = M.track_paths(frames)
    assert paths.shape[1:] == (len(frames), 2) and len(paths) > 3 * len(corners)
    assert np.array_equal(paths[:, 0], M.track(frames)[0]) and np.array_equal(paths[:, -1], M.track(frames)[1])


def test_pure_rotation_is_accurate_and_has_no_translation():
    a, frames, c2w, K = _walk("↓+←")
    m = M.estimate(frames, K)
    R, _ = M.relative_pose(c2w[0], c2w[-1])
    assert not m.translating and np.all(m.t == 0)
    assert M.rotation_error_deg(m.R, R) < 0.5
    assert m.parallax * CFG.width < 1.0  # below the tracking noise floor


def test_two_frames_suffice_for_small_motion():
    _, frames, _, K = _walk("→", pairs=4)
    assert M.label(M.estimate(frames[[0, -1]], K)) == Action("None", "→")


@pytest.mark.parametrize("kind", ["noise", "blank"])
def test_noise_and_blank_frames_are_invalid(kind):
    rng = np.random.default_rng(0)
    if kind == "noise":
        frames = rng.integers(0, 256, (9, 96, 160, 3), dtype=np.uint8)
    else:
        frames = np.full((9, 96, 160, 3), 128, np.uint8)
    m = M.estimate(frames, CFG.intrinsics())
    assert not m.valid and M.label(m) is None


def _motion(yaw_deg=0.0, pitch_deg=0.0, t=(0.0, 0.0, 0.0)):
    R = Rotation.from_euler("xyz", [math.radians(pitch_deg), math.radians(yaw_deg), 0.0]).as_matrix()
    return M.Motion(True, R, np.asarray(t, float), any(t), 0.01, 100, 100)


@pytest.mark.parametrize("motion,expected", [
    (_motion(t=(0, 0, 1)), Action("W", "·")),
    (_motion(t=(math.sin(0.3), 0, -math.cos(0.3))), Action("S", "·")),  # 17 deg off axis: still S
    (_motion(t=(-0.7071, 0, 0.7071)), Action("W+A", "·")),
    (_motion(t=(1, 0, 0)), Action("D", "·")),
    (_motion(yaw_deg=5), Action("None", "→")),
    (_motion(yaw_deg=-5, pitch_deg=4), Action("None", "↑←")),
    (_motion(yaw_deg=1, pitch_deg=-1), Action("None", "·")),  # below the rotation threshold
])
def test_label_is_algorithm_1_with_estimate_thresholds(motion, expected):
    assert M.label(motion) == expected


def test_every_action_label_is_reachable():
    got = set()
    for a in ALL_ACTIONS:
        c2w = world.simulate([world.Step(a, 8)], CFG)
        R, t = M.relative_pose(c2w[0], c2w[-1])
        got.add(M.label(M.Motion(True, R, t, bool(np.any(t)), 0.01, 100, 100)))
    assert got == set(ALL_ACTIONS)


def test_bad_frames_raise():
    with pytest.raises(ValueError, match="two frames"):
        M.estimate([np.zeros((8, 8, 3), np.uint8)], np.eye(3))
    with pytest.raises(ValueError, match="uint8"):
        M.estimate([np.zeros((8, 8, 3), np.float32)] * 2, np.eye(3))
