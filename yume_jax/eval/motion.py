"""Camera motion from pixels: relative rotation and translation direction between frames of any video,
by classical two-view geometry (OpenCV), labelled with Algorithm 1 (spec/yume.md "Camera-motion
quantization (QCM), Algorithm 1").

Method (:func:`estimate`): Shi-Tomasi corners of the first frame and a regular grid of points (every
``grid_step`` of the width) are tracked frame to frame with pyramidal Lucas-Kanade with a small window
(each step forward-backward checked, and points whose gradient matrix is too weak dropped, so occlusions,
sky, flat surfaces and noise drop out); the surviving tracks give correspondences between the first and
the last frame in normalised camera coordinates (the pipeline's nominal pinhole intrinsics; frames wider
than ``max_width`` are tracked on an area-downscaled copy, with K scaled to it). The grid is
what makes moving cameras work: scenes of flat-shaded surfaces (and low-resolution video) have few
corners, and most of those lie on silhouettes, which do not move like 3D points; the faint texture of the
ground and of walls, near the camera, carries the parallax that separates sideways motion from turning
(measured in BENCHMARKS.md "Camera-motion estimator on ground truth"). Two models are fitted with RANSAC:

- rotation only: a homography (for a purely rotating camera it is R), whose RANSAC inliers give R by
  least squares on the bearing vectors (Kabsch, ``scipy.spatial.transform.Rotation.align_vectors``);
- general motion: the essential matrix, decomposed by ``cv2.recoverPose`` (cheirality) into R and a
  unit translation direction.

The "no translation" decision is the parallax: the median distance (as a fraction of the image width)
between where the rotation-only model puts the tracked points and where they are. Below the larger of
``parallax_threshold`` and ``parallax_min_px`` pixels (the tracking noise floor) the camera only turned
(R from the rotation model, t = 0); above, R and t come from the essential matrix. Too few tracks or
too few RANSAC inliers make the estimate ``valid=False``
(textureless, noise, cuts): it is never given a label, and counts as a miss in instruction following.

:func:`label` turns a :class:`Motion` into an :class:`~yume_jax.camera.Action` with
:func:`yume_jax.camera.quantize` on the two-pose trajectory [I, T_rel], with thresholds for estimated
motion: the unit translation direction against sin(22.5 deg) (the 8 key sectors of W/A/S/D and their
pairs), the rotation against ``rotation_threshold_deg`` over the estimated interval.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from yume_jax.camera import Action, quantize


@dataclasses.dataclass(frozen=True)
class MotionConfig:
    max_width: int = 480  # wider frames are first downscaled (area) to this width, K with them (0: never)
    max_corners: int = 800
    corner_quality: float = 0.001
    min_corner_distance: float = 0.006  # fraction of the image width
    grid_step: float = 0.02  # also track a grid of points this far apart (fraction of the width; 0: corners only)
    lk_min_eigen: float = 1e-5  # LK drops points whose gradient matrix is weaker (textureless grid points)
    track_from_first: bool = False  # track each frame against the first (else the previous: chained)
    lk_window: int = 11
    lk_levels: int = 4
    fb_error: float = 0.002  # forward-backward tracking error allowed, fraction of the width (>= 0.75 px)
    ransac_threshold: float = 0.0015  # RANSAC reprojection threshold, fraction of the width (>= 0.75 px)
    min_tracks: int = 12  # fewer tracks first -> last: invalid
    min_inlier_ratio: float = 0.3  # of the tracks, for the chosen model
    parallax_threshold: float = 0.002  # median rotation-compensated parallax (fraction of width): translating
    parallax_min_px: float = 1.0  # ... and at least this many pixels (the tracking noise floor)
    translation_threshold: float = math.sin(math.radians(22.5))  # on the unit translation direction
    rotation_threshold_deg: float = 2.5  # over the estimated interval (one chunk: nominal tilt 5, turn 15)
    essential_method: str = "magsac"  # robust estimator of the essential matrix: magsac (USAC) | ransac


@dataclasses.dataclass(frozen=True)
class Motion:
    """Relative camera motion from the first to the last frame, as in Algorithm 1: ``R`` and ``t`` are the
    rotation and translation of T_rel = inv(T_first) @ T_last (OpenCV camera frame: +x right, +y down,
    +z forward); ``t`` is a unit direction, or zero when the camera did not translate."""

    valid: bool
    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,)
    translating: bool
    parallax: float  # median rotation-compensated parallax, fraction of the image width
    tracks: int
    inliers: int
    reason: str = ""

    def to_dict(self) -> dict:
        yaw_pitch_roll = self.euler_deg()
        return dict(valid=self.valid, translating=self.translating, parallax=round(self.parallax, 6),
                    tracks=self.tracks, inliers=self.inliers, t=[round(float(x), 4) for x in self.t],
                    euler_xyz_deg=[round(float(x), 3) for x in yaw_pitch_roll], reason=self.reason)

    def euler_deg(self) -> np.ndarray:
        return np.degrees(Rotation.from_matrix(self.R).as_euler("xyz"))


_METHODS = {"magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC, "accurate": cv2.USAC_ACCURATE}


def _invalid(reason: str, tracks: int = 0, inliers: int = 0, parallax: float = 0.0) -> Motion:
    return Motion(False, np.eye(3), np.zeros(3), False, parallax, tracks, inliers, reason)


def _gray(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        return frame
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frames must be (H, W, 3) or (H, W), got {frame.shape}")
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def _downscale(frames: Sequence[np.ndarray], K: np.ndarray, max_width: int):
    """Frames wider than ``max_width`` resized (area averaging) to that width, and K for them."""
    h, w = np.asarray(frames[0]).shape[:2]
    if not max_width or w <= max_width:
        return frames, K
    s = max_width / w
    size = (max_width, max(2, round(h * s)))
    S = np.array([[size[0] / w, 0, 0], [0, size[1] / h, 0], [0, 0, 1.0]])
    # pixel centres at integer coordinates: x' = (x + 0.5) s - 0.5
    S[0, 2], S[1, 2] = (S[0, 0] - 1) / 2, (S[1, 1] - 1) / 2
    return [cv2.resize(np.asarray(f), size, interpolation=cv2.INTER_AREA) for f in frames], S @ K


def _px(frac: float, width: int) -> float:
    """A tolerance given as a fraction of the width, at least 0.75 pixel."""
    return max(0.75, frac * width)


def track(frames: Sequence[np.ndarray], cfg: MotionConfig = MotionConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Corners and grid points of ``frames[0]`` tracked through every frame to ``frames[-1]``: pixel positions
    (N, 2) in the first and last frame of the tracks that passed every check (:func:`track_paths`)."""
    paths = track_paths(frames, cfg)
    return paths[:, 0], paths[:, -1]


def track_paths(frames: Sequence[np.ndarray], cfg: MotionConfig = MotionConfig()) -> np.ndarray:
    """Pixel positions (N, len(frames), 2) in every frame of the corners and grid points of ``frames[0]`` that
    passed every step's checks (LK status and minimum eigenvalue, forward-backward error, inside the frame)."""
    if len(frames) < 2:
        raise ValueError("need at least two frames")
    grays = [_gray(f) for f in frames]
    h, w = grays[0].shape
    p0 = cv2.goodFeaturesToTrack(grays[0], cfg.max_corners, cfg.corner_quality,
                                 max(1.0, cfg.min_corner_distance * w), blockSize=5)
    p0 = np.zeros((0, 2), np.float32) if p0 is None else p0.reshape(-1, 2).astype(np.float32)
    if cfg.grid_step > 0:
        step = max(2.0, cfg.grid_step * w)
        gy, gx = np.mgrid[step / 2:h - 1:step, step / 2:w - 1:step]
        p0 = np.concatenate([p0, np.c_[gx.ravel(), gy.ravel()].astype(np.float32)])
    if len(p0) == 0:
        return np.zeros((0, len(grays), 2), np.float32)
    lk = dict(winSize=(cfg.lk_window, cfg.lk_window), maxLevel=cfg.lk_levels, minEigThreshold=cfg.lk_min_eigen,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    paths, prev = [p0], grays[0]
    alive = np.arange(len(p0))
    ref = grays[0] if cfg.track_from_first else None
    for b in grays[1:]:  # against the first frame (no drift) or the previous one (chained)
        cur = paths[-1][alive]
        if len(cur) == 0:
            paths.append(paths[-1])
            continue
        a, src = (ref, p0[alive]) if ref is not None else (prev, cur)
        nxt, st, _ = cv2.calcOpticalFlowPyrLK(a, b, src.reshape(-1, 1, 2), cur.reshape(-1, 1, 2).copy(),
                                              flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(b, a, nxt, src.reshape(-1, 1, 2).copy(),
                                                flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk)
        nxt, back = nxt.reshape(-1, 2), back.reshape(-1, 2)
        ok = (st.ravel() == 1) & (st2.ravel() == 1) & (np.linalg.norm(back - src, axis=1) < _px(cfg.fb_error, w))
        ok &= (nxt[:, 0] >= 0) & (nxt[:, 0] <= w - 1) & (nxt[:, 1] >= 0) & (nxt[:, 1] <= h - 1)
        pos = paths[-1].copy()
        pos[alive] = nxt
        paths.append(pos)
        alive, prev = alive[ok], b
    return np.stack(paths, 1)[alive]


def estimate(frames: Sequence[np.ndarray], K: np.ndarray, cfg: MotionConfig = MotionConfig()) -> Motion:
    """The camera motion from ``frames[0]`` to ``frames[-1]`` (uint8 (H, W, 3) frames, any number >= 2;
    intermediate frames make tracking robust to large motion) seen with pinhole intrinsics ``K``."""
    K = np.asarray(K, np.float64)
    frames, K = _downscale(frames, K, cfg.max_width)
    w = np.asarray(frames[0]).shape[1]
    paths = track_paths(frames, cfg)
    a, b = paths[:, 0], paths[:, -1]
    n = len(a)
    if n < cfg.min_tracks:
        return _invalid(f"{n} tracks < {cfg.min_tracks}", n)
    f = float(K[0, 0])
    Kinv = np.linalg.inv(K)
    xa = (np.c_[a, np.ones(n)] @ Kinv.T)[:, :2]
    xb = (np.c_[b, np.ones(n)] @ Kinv.T)[:, :2]
    thr = _px(cfg.ransac_threshold, w) / f  # normalised-plane units
    H, hmask = cv2.findHomography(xa, xb, cv2.RANSAC, thr, maxIters=2000, confidence=0.999)
    if H is None or int(hmask.sum()) < 3:
        return _invalid("homography failed", n)
    # X_b = R_h X_a for a rotating camera: least-squares rotation (Kabsch) on the homography's inliers
    ba, bb = np.c_[xa, np.ones(n)], np.c_[xb, np.ones(n)]
    ba, bb = ba / np.linalg.norm(ba, axis=1, keepdims=True), bb / np.linalg.norm(bb, axis=1, keepdims=True)
    keep = hmask.ravel().astype(bool)
    R_h = Rotation.align_vectors(bb[keep], ba[keep])[0].as_matrix()
    pa = ba @ R_h.T
    pred = pa[:, :2] / np.maximum(pa[:, 2:], 1e-9)
    parallax = float(np.median(np.linalg.norm(pred - xb, axis=1))) * f / w
    if parallax * w < max(cfg.parallax_threshold * w, cfg.parallax_min_px):
        inl = int(np.sum(np.linalg.norm(pred - xb, axis=1) < 3 * thr))
        if inl < cfg.min_inlier_ratio * n:
            return _invalid(f"rotation model: {inl}/{n} inliers", n, inl, parallax)
        return Motion(True, R_h.T, np.zeros(3), False, parallax, n, inl)
    E, emask = cv2.findEssentialMat(xa, xb, np.eye(3), _METHODS[cfg.essential_method], 0.999, thr, maxIters=5000)
    if E is None or E.shape[0] < 3:
        return _invalid("essential matrix failed", n, 0, parallax)
    # OpenCV may stack several solutions (3k x 3): the first
    _, R, t, _ = cv2.recoverPose(E[:3], xa, xb, np.eye(3), mask=emask.copy())
    inl = int(emask.sum())  # epipolar inliers (recoverPose's count also drops distant points: cheirality)
    if inl < cfg.min_inlier_ratio * n:
        return _invalid(f"essential model: {inl}/{n} inliers", n, inl, parallax)
    # recoverPose: X_b = R X_a + t. The pose of camera b in camera a's frame: R^T, centre -R^T t.
    t = -R.T @ t.ravel()
    return Motion(True, R.T, t / max(np.linalg.norm(t), 1e-12), True, parallax, n, inl)


def label(motion: Motion, cfg: MotionConfig = MotionConfig()) -> Action | None:
    """Algorithm 1 on the estimated motion (``None`` for an invalid estimate)."""
    if not motion.valid:
        return None
    rel = np.eye(4)
    rel[:3, :3], rel[:3, 3] = motion.R, motion.t
    return quantize(np.stack([np.eye(4), rel]), translation_threshold=cfg.translation_threshold,
                    rotation_threshold=math.radians(cfg.rotation_threshold_deg))[0]


def relative_pose(c2w_a: np.ndarray, c2w_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth in the estimator's terms: R and unit t (zero if none) of inv(T_a) @ T_b."""
    rel = np.linalg.inv(np.asarray(c2w_a, np.float64)) @ np.asarray(c2w_b, np.float64)
    t = rel[:3, 3]
    nt = np.linalg.norm(t)
    return rel[:3, :3], (t / nt if nt > 1e-9 else np.zeros(3))


def rotation_error_deg(R_est: np.ndarray, R_true: np.ndarray) -> float:
    """Geodesic angle between two rotations, degrees."""
    c = (np.trace(np.asarray(R_est).T @ np.asarray(R_true)) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def translation_error_deg(t_est: np.ndarray, t_true: np.ndarray) -> float | None:
    """Angle between translation directions, degrees (None unless both are non-zero)."""
    na, nb = np.linalg.norm(t_est), np.linalg.norm(t_true)
    if na < 1e-9 or nb < 1e-9:
        return None
    return float(np.degrees(np.arccos(np.clip(np.dot(t_est, t_true) / (na * nb), -1.0, 1.0))))
