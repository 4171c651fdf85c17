"""Metrics of one generated run (a start frame and chunks of frames under commanded actions).

- instruction following: per chunk, the action estimated from the chunk's pixels
  (:mod:`yume_jax.eval.motion`, Algorithm 1 of spec/yume.md) equals the commanded one: keys, mouse, both.
  An invalid estimate (no trackable structure) counts as a miss;
- pose error: per chunk, the geodesic angle between the estimated and the commanded relative rotation,
  and the angle between translation directions where both move; the accumulated rotation error of the
  composed trajectory at the end;
- on the sandbox: PSNR and SSIM (scikit-image) of each chunk's frames against the ground-truth renders
  along the commanded trajectory (drift over time);
- reversal latency: chunks from the reversal until the estimated label follows the new command;
- revisit consistency: PSNR / SSIM of the last frame against the start frame when the walk returns;
- chunk-boundary discontinuity: mean absolute frame change across chunk boundaries over the mean change
  between consecutive frames inside chunks (1: seamless; AAM's known failure is > 1);
- temporal flicker: mean absolute second temporal difference of the frames (/255); smooth motion keeps
  it small, frame-to-frame flashing does not.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from yume_jax.camera import Action
from yume_jax.eval import motion as M

PSNR_CAP = 60.0  # identical frames have infinite PSNR; reported as this


def chunk_frames(start: np.ndarray, chunks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per chunk, the frames the estimator sees: the previous chunk's last frame (the start frame for
    chunk 0) and the chunk's own frames."""
    out, prev = [], start
    for c in chunks:
        out.append(np.concatenate([prev[None], c], 0))
        prev = c[-1]
    return out


@dataclasses.dataclass
class ChunkLabel:
    commanded: Action
    estimated: Action | None
    motion: M.Motion

    @property
    def keys_ok(self) -> bool:
        return self.estimated is not None and self.estimated.keys == self.commanded.keys

    @property
    def mouse_ok(self) -> bool:
        return self.estimated is not None and self.estimated.mouse == self.commanded.mouse

    @property
    def both_ok(self) -> bool:
        return self.keys_ok and self.mouse_ok


def label_chunks(start: np.ndarray, chunks: Sequence[np.ndarray], commanded: Sequence[Action], K: np.ndarray,
                 cfg: M.MotionConfig = M.MotionConfig()) -> list[ChunkLabel]:
    out = []
    for frames, a in zip(chunk_frames(start, chunks), commanded):
        m = M.estimate(frames, K, cfg)
        out.append(ChunkLabel(a, M.label(m, cfg), m))
    return out


def instruction_following(labels: Sequence[ChunkLabel]) -> dict:
    n = max(len(labels), 1)
    return dict(keys=sum(x.keys_ok for x in labels) / n, mouse=sum(x.mouse_ok for x in labels) / n,
                both=sum(x.both_ok for x in labels) / n)


def pose_errors(labels: Sequence[ChunkLabel], commanded_c2w: np.ndarray, frames_per_chunk: int) -> dict:
    """Per-chunk rotation / translation-direction errors against the commanded trajectory (poses of every
    frame), and the rotation error of the composed trajectory at the end (invalid chunks: identity)."""
    rot, trans = [], []
    R_est, R_cmd = np.eye(3), np.eye(3)
    for k, lab in enumerate(labels):
        a, b = commanded_c2w[k * frames_per_chunk], commanded_c2w[(k + 1) * frames_per_chunk]
        R, t = M.relative_pose(a, b)
        rot.append(M.rotation_error_deg(lab.motion.R, R) if lab.motion.valid else None)
        trans.append(M.translation_error_deg(lab.motion.t, t) if lab.motion.valid else None)
        R_est, R_cmd = R_est @ lab.motion.R, R_cmd @ R
    valid_rot = [r for r in rot if r is not None]
    valid_tr = [t for t in trans if t is not None]
    return dict(rotation_deg=rot, translation_dir_deg=trans,
                mean_rotation_deg=float(np.mean(valid_rot)) if valid_rot else None,
                mean_translation_dir_deg=float(np.mean(valid_tr)) if valid_tr else None,
                final_rotation_deg=M.rotation_error_deg(R_est, R_cmd))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    if np.array_equal(a, b):
        return PSNR_CAP
    return float(min(peak_signal_noise_ratio(a, b, data_range=255), PSNR_CAP))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def fidelity(chunks: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> dict:
    """Per-chunk mean PSNR and SSIM of generated frames against the ground-truth renders."""
    p, s = [], []
    for g, t in zip(chunks, truth):
        if g.shape != t.shape:
            raise ValueError(f"generated chunk {g.shape} and ground truth {t.shape} differ")
        p.append(float(np.mean([psnr(x, y) for x, y in zip(g, t)])))
        s.append(float(np.mean([ssim(x, y) for x, y in zip(g, t)])))
    return dict(psnr=p, ssim=s)


def reversal_latency(labels: Sequence[ChunkLabel], at: int) -> dict:
    """Chunks from chunk ``at`` (the first of the new command) until one follows it (0: at once), on the
    component that changed (keys, mouse or both); ``followed`` False if it never does (latency = chunks left)."""
    new = labels[at].commanded
    old = labels[at - 1].commanded
    comp = "both" if new.keys != old.keys and new.mouse != old.mouse else "keys" if new.keys != old.keys else "mouse"
    for j, lab in enumerate(labels[at:]):
        if {"keys": lab.keys_ok, "mouse": lab.mouse_ok, "both": lab.both_ok}[comp]:
            return dict(latency=j, followed=True, component=comp)
    return dict(latency=len(labels) - at, followed=False, component=comp)


def revisit(start: np.ndarray, last: np.ndarray) -> dict:
    return dict(psnr=psnr(last, start), ssim=ssim(last, start))


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))))


def smoothness(start: np.ndarray, chunks: Sequence[np.ndarray]) -> dict:
    """Chunk-boundary discontinuity ratio and temporal flicker of the whole video."""
    inside = [_mad(c[i], c[i + 1]) for c in chunks for i in range(len(c) - 1)]
    prevs = [start] + [c[-1] for c in chunks[:-1]]
    boundary = [_mad(p, c[0]) for p, c in zip(prevs, chunks)]
    video = np.concatenate([start[None]] + list(chunks), 0).astype(np.float32)
    flicker = float(np.mean(np.abs(video[2:] - 2 * video[1:-1] + video[:-2]))) / 255 if len(video) > 2 else 0.0
    mi = float(np.mean(inside)) if inside else 0.0
    return dict(boundary_change=float(np.mean(boundary)), inside_change=mi,
                boundary_ratio=float(np.mean(boundary)) / max(mi, 1e-6), flicker=flicker)
