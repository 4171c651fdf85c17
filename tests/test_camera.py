"""QCM (spec/yume.md "Camera-motion quantization"): all 81 actions, thresholds, stride, prompts, grammar."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from yume_jax.camera import (ALL_ACTIONS, KEYS, MOUSE, Action, Speed, format_keys, parse_keys, prompt, quantize,
                             segment, speed)

# the 81 combinations as (translation sign x, z), (rotation sign about x (tilt), y (pan))
_KEY_SIGNS = {"W": (0, 1), "A": (-1, 0), "S": (0, -1), "D": (1, 0), "W+A": (-1, 1), "W+D": (1, 1),
              "S+A": (-1, -1), "S+D": (1, -1), "None": (0, 0)}
_MOUSE_SIGNS = {"→": (0, 1), "←": (0, -1), "↑": (1, 0), "↓": (-1, 0), "↑→": (1, 1), "↑←": (1, -1),
                "↓→": (-1, 1), "↓←": (-1, -1), "·": (0, 0)}


def _random_pose(rng) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.random(random_state=int(rng.integers(1 << 30))).as_matrix()
    T[:3, 3] = rng.normal(size=3) * 5
    return T


def _step(T, t_cam, R_cam) -> np.ndarray:
    rel = np.eye(4)
    rel[:3, :3], rel[:3, 3] = R_cam, t_cam
    return T @ rel


def test_vocabulary():
    assert len(ALL_ACTIONS) == 81 and len(set(ALL_ACTIONS)) == 81
    assert [a.index for a in ALL_ACTIONS] == list(range(81))
    with pytest.raises(ValueError, match="unknown key label"):
        Action("W+S", "·")
    with pytest.raises(ValueError, match="unknown mouse label"):
        Action("W", "→↑")


@pytest.mark.parametrize("action", ALL_ACTIONS, ids=[f"{a.keys}|{a.mouse}" for a in ALL_ACTIONS])
def test_each_of_81_combinations(action):
    rng = np.random.default_rng(action.index)
    sx, sz = _KEY_SIGNS[action.keys]
    rx, ry = _MOUSE_SIGNS[action.mouse]
    # magnitudes well above the thresholds; y translation and roll are ignored by the algorithm
    t = np.array([sx * rng.uniform(0.01, 0.1), rng.normal() * 0.05, sz * rng.uniform(0.01, 0.1)])
    R = Rotation.from_euler("xyz", [rx * rng.uniform(0.01, 0.1), ry * rng.uniform(0.01, 0.1),
                                    rng.normal() * 0.02]).as_matrix()
    T0 = _random_pose(rng)
    assert quantize(np.stack([T0, _step(T0, t, R)])) == [action]


def test_geometric_meaning():
    """Directions from first principles (OpenCV: +x right, +y down, +z forward), not from scipy."""
    def look(fwd, pos=(0, 0, 0)):
        f = np.asarray(fwd, float) / np.linalg.norm(fwd)
        x = np.cross([0, 1.0, 0], f)  # right = down x forward
        x /= np.linalg.norm(x)
        T = np.eye(4)
        T[:3, :3] = np.stack([x, np.cross(f, x), f], 1)
        T[:3, 3] = pos
        return T

    base = look([0, 0, 1])
    assert quantize([base, look([0.02, 0, 1])]) == [Action("None", "→")]  # forward swings to +x
    assert quantize([base, look([-0.02, 0, 1])]) == [Action("None", "←")]
    assert quantize([base, look([0, -0.02, 1])]) == [Action("None", "↑")]  # -y is up
    assert quantize([base, look([0, 0.02, 1])]) == [Action("None", "↓")]
    assert quantize([base, look([0, 0, 1], (0, 0, 0.1))]) == [Action("W", "·")]
    assert quantize([base, look([0, 0, 1], (-0.1, 0, -0.1))]) == [Action("S+A", "·")]
    assert quantize([base, look([0, 0, 1], (0, -0.3, 0))]) == [Action("None", "·")]  # y is ignored
    # translation is measured in the current camera frame: facing +x, moving along +x is W
    side = look([1, 0, 0])
    assert quantize([side, look([1, 0, 0], (0.1, 0, 0))]) == [Action("W", "·")]


def test_thresholds():
    T0 = np.eye(4)
    for z, want in [(1.01e-4, "W"), (0.99e-4, "None"), (-1.01e-4, "S"), (-0.99e-4, "None")]:
        assert quantize([T0, _step(T0, [0, 0, z], np.eye(3))])[0].keys == want
    for a, want in [(1.01e-3, "→"), (0.99e-3, "·"), (-1.01e-3, "←")]:
        R = Rotation.from_euler("xyz", [0, a, 0]).as_matrix()
        assert quantize([T0, _step(T0, [0, 0, 0], R)])[0].mouse == want
    for a, want in [(1.01e-3, "↑"), (-1.01e-3, "↓"), (-0.99e-3, "·")]:
        R = Rotation.from_euler("xyz", [a, 0, 0]).as_matrix()
        assert quantize([T0, _step(T0, [0, 0, 0], R)])[0].mouse == want
    # custom thresholds
    step = _step(T0, [0.5e-3, 0, 0], Rotation.from_euler("xyz", [0, 5e-3, 0]).as_matrix())
    assert quantize([T0, step])[0] == Action("D", "→")
    assert quantize([T0, step], translation_threshold=1e-3, rotation_threshold=1e-2)[0] == Action("None", "·")


def test_stride():
    # 5 poses moving 0.7e-4 forward per frame: below threshold per frame, and 2 frames apart 1.4e-4 is
    # below the stride-scaled threshold 2e-4, while the raw threshold 1e-4 would call it W
    poses = [np.eye(4) for _ in range(5)]
    for i, p in enumerate(poses):
        p[2, 3] = 0.7e-4 * i
    assert quantize(poses) == [Action()] * 4
    assert quantize(poses, stride=2) == [Action()] * 2
    assert quantize(poses, stride=2, translation_threshold=0.5e-4) == [Action("W", "·")] * 2
    for i, p in enumerate(poses):
        p[2, 3] = 1.5e-4 * i  # 3e-4 per 2 frames > 2e-4
    assert quantize(poses, stride=2) == [Action("W", "·")] * 2
    assert quantize(poses, stride=3) == [Action("W", "·")]  # poses 0 and 3
    assert quantize(poses, stride=5) == []
    with pytest.raises(ValueError, match="stride"):
        quantize(poses, stride=0)
    with pytest.raises(ValueError, match="shape"):
        quantize(np.zeros((3, 4)))


def test_segment():
    acts = [Action("W", "·")] * 3 + [Action("None", "→")] * 2 + [Action("W", "·")]
    segs = segment(acts, min_frames=1)
    assert [(s.start, s.end, s.action) for s in segs] == [(0, 3, Action("W", "·")), (3, 5, Action("None", "→")),
                                                          (5, 6, Action("W", "·"))]
    assert [s.num_frames for s in segs] == [4, 3, 2]
    assert [(s.start, s.end) for s in segment(acts, stride=2, min_frames=5)] == [(0, 6), (6, 10)]
    assert [(s.start, s.end) for s in segment(acts, min_frames=4)] == [(0, 3)]


def test_speed():
    poses = np.tile(np.eye(4), (6, 1, 1))
    poses[:, 2, 3] = 0.01 * np.arange(6)
    s = speed(poses)
    assert s.distance == pytest.approx(30.0) and s.turn == 0.0 and s.rotation == 0.0
    # walking on a polygon, turning 10 degrees (heading and view) per step
    ang = np.radians(10.0) * np.arange(8)
    poses = np.tile(np.eye(4), (8, 1, 1))
    poses[:, :3, :3] = Rotation.from_euler("y", ang[:, None]).as_matrix()
    poses[:, :3, 3] = np.cumsum(np.stack([np.sin(ang), 0 * ang, np.cos(ang)], 1), 0) * 0.02
    s = speed(poses, fps=16)
    assert s.distance == pytest.approx(16 * 0.02 * 100)
    assert s.turn == pytest.approx(10.0) and s.rotation == pytest.approx(10.0)
    still = speed(np.tile(np.eye(4), (4, 1, 1)))
    assert still == Speed(0.0, 0.0, 0.0)


YUME1_KEYS = {"W": "Person moves forward (W).", "A": "Person moves left (A).", "S": "Person moves backward (S).",
              "D": "Person moves right (D).", "W+A": "Person moves forward and left (W+A).",
              "W+D": "Person moves forward and right (W+D).", "S+D": "Person moves backward and right (S+D).",
              "S+A": "Person moves backward and left (S+A).", "None": "Person stands still (·)."}
YUME1_MOUSE = {"→": "Camera turns right (→).", "←": "Camera turns left (←).", "↑": "Camera tilts up (↑).",
               "↓": "Camera tilts down (↓).", "↑→": "Camera tilts up and turns right (↑→).",
               "↑←": "Camera tilts up and turns left (↑←).", "↓→": "Camera tilts down and turns right (↓→).",
               "↓←": "Camera tilts down and turns left (↓←).", "·": "Camera remains still (·)."}


@pytest.mark.parametrize("keys", KEYS)
def test_prompt_yume1_verbatim(keys):
    for mouse in MOUSE:
        want = ("This video depicts a city walk scene with a first-person view (FPV)." + YUME1_KEYS[keys]
                + YUME1_MOUSE[mouse])
        assert prompt(Action(keys, mouse)) == want


def test_prompt_examples():
    assert prompt(Action("W+A", "↑→")) == ("This video depicts a city walk scene with a first-person view (FPV)."
                                           "Person moves forward and left (W+A).Camera tilts up and turns right (↑→).")
    sp = Speed(123.5, 2.25, 0.5)
    assert prompt(Action("S", "·"), speed=sp) == (
        "This video depicts a city walk scene with a first-person view (FPV).Person moves backward (S)."
        "Camera remains still (·).Actual distance moved:123.5 at 100 meters per second."
        "Angular change rate (turn speed):2.25.View rotation speed:0.5.")
    assert prompt(Action("W", "→"), style="yume1.5", caption="A rainy street.") == (
        "First-person perspective.The camera pushes forward (W). The camera pans to the right (→). A rainy street.")
    assert prompt(Action("None", "·"), style="yume1.5") == (
        "First-person perspective.The camera's movement direction remains stationary (·). "
        "The rotation direction of the camera remains stationary (·).")
    assert prompt(Action("S+D", "↓←"), style="yume1.5", speed=Speed(4.0, 0.0, 0.0)) == (
        "First-person perspective.The camera pulls back and moves to the right (S+D). The camera tilts down and pans"
        " to the left (↓←). Actual distance moved:4.0 at 100 meters per second. Angular change rate (turn speed):0.0."
        " View rotation speed:0.0.")
    with pytest.raises(ValueError, match="style"):
        prompt(Action(), style="yume2")
    with pytest.raises(ValueError, match="caption"):
        prompt(Action(), caption="x")


def test_keyboard_grammar():
    assert parse_keys("W, W+A, →, W+→, S+D+↑") == [Action("W", "·"), Action("W+A", "·"), Action("None", "→"),
                                                   Action("W", "→"), Action("S+D", "↑")]
    assert parse_keys("a+w+up+right") == [Action("W+A", "↑→")]  # order-free, case-free, W/S first
    assert parse_keys("j, l, i, k, left, down+left") == [Action("None", m) for m in "←→↑↓←"] + [Action("None", "↓←")]
    assert parse_keys("d+↓→*3, None, ·") == [Action("D", "↓→")] * 3 + [Action()] * 2
    for bad, why in [("W+S", "conflicts"), ("W+Q", "unknown token 'Q'"), ("W,,A", "empty"), ("left+l", "conflicts"),
                     ("W*0", "repeat"), ("None+W", "cannot be combined"), ("↑→+up", "conflicts")]:
        with pytest.raises(ValueError, match=why) as e:
            parse_keys(bad)
        assert "Valid tokens: W, A, S, D" in str(e.value) and "l/j/i/k" in str(e.value)
    with pytest.raises(ValueError, match="empty"):
        parse_keys("  ")
    assert parse_keys(format_keys(ALL_ACTIONS)) == list(ALL_ACTIONS)
    assert format_keys([Action("W", "→")] * 8 + [Action()]) == "W+→*8, None"
