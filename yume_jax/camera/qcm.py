"""Camera-motion quantization (QCM), Algorithm 1 of the Yume paper (spec/yume.md "Camera-motion quantization").

A camera trajectory (OpenCV c2w matrices: +x right, +y down, +z forward) becomes one discrete
:class:`Action` per consecutive pair of poses: keys in {W, A, S, D, W+A, W+D, S+A, S+D, None} from the
translation in the current camera frame, mouse in {→, ←, ↑, ↓, ↑→, ↑←, ↓→, ↓←, ·} from the Euler
angles (scipy ``as_euler("xyz")``) of the relative rotation. Actions become the text prompts the
model is conditioned on (:func:`prompt`), optionally with the speed sentence (:func:`speed`).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

KEYS = ("W", "A", "S", "D", "W+A", "W+D", "S+A", "S+D", "None")
MOUSE = ("→", "←", "↑", "↓", "↑→", "↑←", "↓→", "↓←", "·")


@dataclasses.dataclass(frozen=True)
class Action:
    """One quantized camera action: ``keys`` (movement) and ``mouse`` (rotation) labels."""

    keys: str = "None"
    mouse: str = "·"

    def __post_init__(self):
        if self.keys not in KEYS:
            raise ValueError(f"unknown key label {self.keys!r}; valid: {', '.join(KEYS)}")
        if self.mouse not in MOUSE:
            raise ValueError(f"unknown mouse label {self.mouse!r}; valid: {', '.join(MOUSE)}")

    def __str__(self) -> str:
        return f"{self.keys} {self.mouse}"

    @property
    def index(self) -> int:
        """Position in :data:`ALL_ACTIONS` (keys-major), a class id in [0, 81)."""
        return KEYS.index(self.keys) * len(MOUSE) + MOUSE.index(self.mouse)


ALL_ACTIONS = tuple(Action(k, m) for k, m in itertools.product(KEYS, MOUSE))


def _as_c2w(c2w) -> np.ndarray:
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"c2w must have shape (N, 4, 4) or (N, 3, 4), got {c2w.shape}")
    if not np.all(np.isfinite(c2w)):
        raise ValueError("c2w contains NaN or infinite values")
    if c2w.shape[1] == 3:
        bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (len(c2w), 1, 4))
        c2w = np.concatenate([c2w, bottom], axis=1)
    return c2w


def _check_stride(stride) -> int:
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    return int(stride)


def relative_motion(c2w, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per pair of poses ``stride`` frames apart: translation in the current camera frame (K, 3) and
    Euler angles "xyz" of the relative rotation (K, 3), from T_rel = inv(T_i) @ T_{i+1}."""
    stride = _check_stride(stride)
    c2w = _as_c2w(c2w)[::stride]
    if len(c2w) < 2:
        return np.zeros((0, 3)), np.zeros((0, 3))
    rel = np.linalg.inv(c2w[:-1]) @ c2w[1:]
    angles = Rotation.from_matrix(rel[:, :3, :3]).as_euler("xyz")
    return rel[:, :3, 3], angles


def quantize(c2w, stride: int = 1, translation_threshold: float = 1e-4,
             rotation_threshold: float = 1e-3) -> list[Action]:
    """Algorithm 1: one :class:`Action` per consecutive pair of ``c2w[::stride]``.

    Thresholds scale with the stride (translation ``1e-4 * stride``, rotation ``1e-3 * stride`` rad).
    Keys: z > thr W, z < -thr S, x > thr D, x < -thr A (y ignored), W/S first ("W+A"); mouse: angle[1]
    > thr "→", < -thr "←"; angle[0] > thr "↑", < -thr "↓"; vertical first ("↑→"); else "None" / "·".
    """
    t, ang = relative_motion(c2w, stride)
    tt, rt = translation_threshold * stride, rotation_threshold * stride
    out = []
    for (x, _, z), (ax, ay, _) in zip(t, ang):
        kz, kx = ("W" if z > tt else "S" if z < -tt else ""), ("D" if x > tt else "A" if x < -tt else "")
        vert, horiz = ("↑" if ax > rt else "↓" if ax < -rt else ""), ("→" if ay > rt else "←" if ay < -rt else "")
        out.append(Action("+".join(k for k in (kz, kx) if k) or "None", (vert + horiz) or "·"))
    return out


@dataclasses.dataclass(frozen=True)
class Segment:
    """A run of constant action: frames ``start..end`` (both inclusive) on the input timeline."""

    start: int
    end: int
    action: Action

    @property
    def num_frames(self) -> int:
        return self.end - self.start + 1


def segment(actions: Sequence[Action], stride: int = 1, min_frames: int = 2) -> list[Segment]:
    """Split per-pair actions (from :func:`quantize` with the same ``stride``) into constant-action runs.

    Pair k covers frames k*stride .. (k+1)*stride, so a run of pairs [k0, k1) covers frames
    k0*stride .. k1*stride inclusive (neighbouring segments share their boundary frame, as Yume's
    clips do). Runs shorter than ``min_frames`` frames are dropped.
    """
    stride = _check_stride(stride)
    segs, k0 = [], 0
    for k in range(1, len(actions) + 1):
        if k == len(actions) or actions[k] != actions[k0]:
            seg = Segment(k0 * stride, k * stride, actions[k0])
            if seg.num_frames >= min_frames:
                segs.append(seg)
            k0 = k
    return segs


@dataclasses.dataclass(frozen=True)
class Speed:
    """The speed statistics of the prompt's speed sentence (spec/yume.md, Yume's loader)."""

    distance: float  # 30 (fps) * mean |Δp| * 100
    turn: float  # mean angle between consecutive displacement vectors, degrees
    rotation: float  # mean angle between consecutive camera z-axes, degrees


def _angle_deg(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    cos = np.sum(u * v, -1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def speed(c2w, fps: float = 30.0, stride: int = 1, eps: float = 1e-6) -> Speed:
    """Speed statistics of a trajectory. ``distance`` = fps * mean |Δp| / stride * 100 ("at 100 meters per
    second"; Sekai is 30 fps, Yume hard-codes 30); ``turn`` averages the angle between consecutive
    displacements over pairs where both are longer than ``eps`` (0 if none); ``rotation`` averages the
    angle between consecutive camera z-axes. Unlike the public loader, ``rotation`` is computed even when
    the camera does not move (the loader returns 0 then, which mislabels turning on the spot).
    """
    stride = _check_stride(stride)
    c2w = _as_c2w(c2w)[::stride]
    if len(c2w) < 2:
        return Speed(0.0, 0.0, 0.0)
    dp = np.diff(c2w[:, :3, 3], axis=0)
    norms = np.linalg.norm(dp, axis=-1)
    distance = float(np.mean(norms)) * fps / stride * 100.0
    ok = (norms[:-1] > eps) & (norms[1:] > eps)
    turn = float(np.mean(_angle_deg(dp[:-1][ok], dp[1:][ok]))) if ok.any() else 0.0
    z = c2w[:, :3, 2]
    rotation = float(np.mean(_angle_deg(z[:-1], z[1:])))
    return Speed(distance, turn, rotation)


# Prompt vocabularies, verbatim (spec/yume.md "Prompt templates"; Yume 1.5 from its public web app).
YUME1_PREFIX = "This video depicts a city walk scene with a first-person view (FPV)."
YUME1_KEYS = {
    "W": "Person moves forward (W).", "A": "Person moves left (A).", "S": "Person moves backward (S).",
    "D": "Person moves right (D).", "W+A": "Person moves forward and left (W+A).",
    "W+D": "Person moves forward and right (W+D).", "S+D": "Person moves backward and right (S+D).",
    "S+A": "Person moves backward and left (S+A).", "None": "Person stands still (·).",
}
YUME1_MOUSE = {
    "→": "Camera turns right (→).", "←": "Camera turns left (←).", "↑": "Camera tilts up (↑).",
    "↓": "Camera tilts down (↓).", "↑→": "Camera tilts up and turns right (↑→).",
    "↑←": "Camera tilts up and turns left (↑←).", "↓→": "Camera tilts down and turns right (↓→).",
    "↓←": "Camera tilts down and turns left (↓←).", "·": "Camera remains still (·).",
}
YUME15_PREFIX = "First-person perspective."
YUME15_KEYS = {
    "W": "The camera pushes forward (W).", "A": "The camera moves to the left (A).",
    "S": "The camera pulls back (S).", "D": "The camera moves to the right (D).",
    "W+A": "The camera pushes forward and moves to the left (W+A).",
    "W+D": "The camera pushes forward and moves to the right (W+D).",
    "S+D": "The camera pulls back and moves to the right (S+D).",
    "S+A": "The camera pulls back and moves to the left (S+A).",
    "None": "The camera's movement direction remains stationary (·).",
}
YUME15_MOUSE = {
    "→": "The camera pans to the right (→).", "←": "The camera pans to the left (←).",
    "↑": "The camera tilts up (↑).", "↓": "The camera tilts down (↓).",
    "↑→": "The camera tilts up and pans to the right (↑→).", "↑←": "The camera tilts up and pans to the left (↑←).",
    "↓→": "The camera tilts down and pans to the right (↓→).", "↓←": "The camera tilts down and pans to the left (↓←).",
    "·": "The rotation direction of the camera remains stationary (·).",
}
STYLES = ("yume1", "yume1.5")

# spec/yume.md "The public sampler's pipeline": the fixed speed sentence the public sampler appends to every
# inference prompt (sample_tts.py; the digits are its literal text, not a float's repr) and Wan's negative
# prompt, the CFG negative when none is given (image2video.py).
INFERENCE_SPEED_SENTENCE = ("Actual distance moved:4.3697374288015297 at 100 meters per second."
                            "Angular change rate (turn speed):4.520279996588001."
                            "View rotation speed:4.14601429683874179.")
NEGATIVE_PROMPT = ("Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, "
                   "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, "
                   "extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, "
                   "fused fingers, still picture, messy background, three legs, many people in the background, "
                   "walking backwards")


def speed_sentences(s: Speed) -> tuple[str, str, str]:
    """The three parts of the speed sentence; numbers printed as Python prints a float (as Yume's loader)."""
    return (f"Actual distance moved:{float(s.distance)} at 100 meters per second.",
            f"Angular change rate (turn speed):{float(s.turn)}.", f"View rotation speed:{float(s.rotation)}.")


def prompt(action: Action, style: str = "yume1", speed: Speed | None = None, caption: str | None = None) -> str:
    """The text prompt for an action.

    ``yume1``: prefix + key sentence + mouse sentence [+ speed sentence], no spaces between sentences
    (spec/yume.md). ``yume1.5``: "First-person perspective." + key sentence + " " + mouse sentence + " "
    [+ speed parts joined by spaces + " "] + scene caption, as Yume 1.5's web app and README build it.
    """
    if not isinstance(action, Action):
        raise ValueError(f"action must be a yume_jax.camera.Action, got {type(action).__name__}")
    if style == "yume1":
        if caption:
            raise ValueError("yume1 prompts have a fixed scene sentence; caption is only for style='yume1.5'")
        text = YUME1_PREFIX + YUME1_KEYS[action.keys] + YUME1_MOUSE[action.mouse]
        return text + ("".join(speed_sentences(speed)) if speed is not None else "")
    if style == "yume1.5":
        parts = [YUME15_KEYS[action.keys], YUME15_MOUSE[action.mouse]]
        if speed is not None:
            parts += speed_sentences(speed)
        if caption:
            parts.append(caption.strip())
        return YUME15_PREFIX + " ".join(parts)
    raise ValueError(f"unknown prompt style {style!r}; valid: {', '.join(STYLES)}")
