"""Running configurations over the benchmark: generate every case's video, score it, collect the numbers.

A :class:`RunSpec` is one configuration: a pipeline (checkpoint + sampler settings, generated through
``yume_jax.rollout``; this is the ONLY module of :mod:`yume_jax.eval` that uses it) or one of the
reference videos that check the metrics themselves:

- ``truth``: the ground-truth renders along the commanded script (instruction following ~1, PSNR capped);
- ``opposite``: renders of the opposite script (W<->S, A<->D, left<->right, up<->down) under the original
  commands (instruction following ~0);
- ``shuffled``: renders of a script whose every chunk has a different key AND mouse label;
- ``noise``: uniform noise frames (no estimate is valid: instruction following 0).

Sandbox cases (:mod:`yume_jax.eval.bench`) get every metric; image starts (a user's images with a script)
get instruction following and smoothness only (no ground truth).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Optional, Sequence

import numpy as np

from yume_jax.camera import KEYS, MOUSE, Action, parse_keys
from yume_jax.data import world
from yume_jax.eval import bench, metrics
from yume_jax.eval import motion as M

REFERENCES = ("truth", "opposite", "shuffled", "noise")
_SPEC_KEYS = ("name", "checkpoint", "steps", "sampler", "cfg", "aam", "cache", "history_mode", "chunk_frames",
              "height", "width", "seed")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One configuration. ``kind`` is ``pipeline`` or a reference video (:data:`REFERENCES`)."""

    name: str
    kind: str = "pipeline"
    checkpoint: Optional[str] = None  # pipeline directory (None: the tiny random pipeline)
    steps: Optional[int] = None  # None: pipeline.json's (else 4)
    sampler: str = "euler"
    cfg: Optional[float] = None  # None: pipeline.json's (else 5.0)
    aam: bool = False
    cache: int = 0  # block residual cache refresh interval (0: off)
    history_mode: Optional[str] = None  # None: pipeline.json's (else renoise)
    chunk_frames: Optional[int] = None  # references: 2 latent frames = 8 video frames per chunk
    height: Optional[int] = None  # references: 96 x 160
    width: Optional[int] = None
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("pipeline",) + REFERENCES:
            raise ValueError(f"unknown run kind {self.kind!r}; valid: pipeline, {', '.join(REFERENCES)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_spec(text: str, base: RunSpec | None = None) -> RunSpec:
    """``truth`` | ``noise`` | ``opposite`` | ``shuffled`` | ``key=value,...`` overriding ``base``
    (keys: name, checkpoint, steps, sampler, cfg, aam, cache, history_mode, chunk_frames, height, width,
    seed), e.g. ``name=fast,steps=4,cfg=1`` or ``aam=1``."""
    text = text.strip()
    base = base or RunSpec(name="pipeline")
    if text in REFERENCES:
        return dataclasses.replace(base, name=text, kind=text, checkpoint=None)
    kw = {}
    for part in text.split(","):
        k, eq, v = part.partition("=")
        k = k.strip().replace("-", "_")
        if not eq or k not in _SPEC_KEYS:
            raise ValueError(f"bad run spec {text!r}: {part!r} is not key=value with a key among "
                             f"{', '.join(_SPEC_KEYS)} (or one of {', '.join(REFERENCES)})")
        kw[k] = v.strip()
    conv = dict(steps=int, cfg=float, cache=int, chunk_frames=int, height=int, width=int, seed=int,
                aam=lambda s: s.lower() in ("1", "true", "yes", "on"))
    try:
        kw = {k: conv[k](v) if k in conv else v for k, v in kw.items()}
    except ValueError as e:
        raise ValueError(f"bad run spec {text!r}: {e}") from None
    kw.setdefault("name", text)
    return dataclasses.replace(base, kind="pipeline", **kw)


@dataclasses.dataclass
class Video:
    start: np.ndarray  # (H, W, 3) the first frame of the generated video
    chunks: list[np.ndarray]  # one (F, H, W, 3) per commanded action
    seconds_per_chunk: list[float]
    records: list[dict] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------- generators


def _opposite(a: Action) -> Action:
    swap = str.maketrans({"W": "S", "S": "W", "A": "D", "D": "A",
                          "→": "←", "←": "→", "↑": "↓", "↓": "↑"})
    keys = a.keys.translate(swap)
    keys = "+".join(sorted(keys.split("+"), key=lambda k: k not in "WS")) if keys != "None" else keys
    return Action(keys, a.mouse.translate(swap))


def _shifted(a: Action) -> Action:
    """A different key AND mouse label (a fixed derangement of each vocabulary)."""
    return Action(KEYS[(KEYS.index(a.keys) + 1) % len(KEYS)], MOUSE[(MOUSE.index(a.mouse) + 1) % len(MOUSE)])


class Pipeline:
    """A loaded pipeline generating from start frames with a fixed rollout configuration."""

    def __init__(self, spec: RunSpec, default_dir: Callable[[], str] | None = None):
        from yume_jax.pipeline import load_pipeline

        path = spec.checkpoint or (default_dir() if default_dir else None)
        if path is None:
            raise ValueError(f"run {spec.name!r}: no checkpoint")
        self.pipe = load_pipeline(path)
        self.config = self.rollout_config(spec, self.pipe)
        self.source = str(path)

    @staticmethod
    def rollout_config(spec: RunSpec, pipe):
        """pipeline.json's run defaults (size, chunk, history mode, cap, prompt style, sampler) under what
        ``spec`` names: a clean-history model is evaluated as it was trained unless the spec says otherwise."""
        from yume_jax.rollout import RolloutConfig

        sampler = pipe.sampler_config(name=spec.sampler, steps=spec.steps, cfg_scale=spec.cfg, aam=spec.aam)
        given = {"height": spec.height, "width": spec.width, "chunk_frames": spec.chunk_frames,
                 "history_mode": spec.history_mode}
        return RolloutConfig.for_pipeline(pipe, **{k: v for k, v in given.items() if v is not None}, seed=spec.seed,
                                          sampler=sampler, block_cache=spec.cache)

    @property
    def frames_per_chunk(self) -> int:
        return 4 * self.config.chunk_frames  # Wan VAE: 4 video frames per latent frame

    def generate(self, image: np.ndarray, actions: Sequence[Action]) -> Video:
        from yume_jax.rollout import Session

        s = Session(self.pipe, self.config, image=image)
        chunks, secs = [], []
        for a in actions:
            t0 = time.perf_counter()
            frames, _ = s.step(a)
            secs.append(time.perf_counter() - t0)
            chunks.append(frames)
        return Video(s.initial_frames[-1], chunks, secs, s.records)

    def describe(self) -> dict:
        return dict(source=self.source, rollout=self.config.to_dict())


# ------------------------------------------------------------------------------------- scoring


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    motion: M.MotionConfig = M.MotionConfig()
    keep_frames: bool = True  # keep chunk-end frames (generated and truth) for the contact sheet


class Truth:
    """Ground-truth walks, rendered once per (case, resolution, chunk length) and shared by all runs."""

    def __init__(self):
        self._cache: dict = {}

    def get(self, case: bench.Case, cfg: world.WorldConfig, F: int, script: list[Action] | None = None):
        acts = tuple(case.actions if script is None else script)
        key = (tuple(case.seed), acts, cfg.height, cfg.width, F)
        if key not in self._cache:
            frames, c2w, K = world.render_walk(case.seed, [world.Step(a, F) for a in acts], cfg)
            self._cache[key] = (frames, c2w, K)
        return self._cache[key]


def _split(frames: np.ndarray, F: int) -> tuple[np.ndarray, list[np.ndarray]]:
    return frames[0], [frames[1 + k * F: 1 + (k + 1) * F] for k in range((len(frames) - 1) // F)]


def score(video: Video, commanded: Sequence[Action], K: np.ndarray, cfg: EvalConfig, *,
          truth: tuple | None = None, F: int | None = None, reversal_at: int | None = None,
          returns: bool = False) -> dict:
    """Every metric of one video. ``truth`` = (frames, c2w, K) of the commanded walk (sandbox cases)."""
    labels = metrics.label_chunks(video.start, video.chunks, commanded, K, cfg.motion)
    out = dict(chunks=[dict(commanded=str(lab.commanded), estimated=str(lab.estimated) if lab.estimated else None,
                            keys_ok=lab.keys_ok, mouse_ok=lab.mouse_ok, motion=lab.motion.to_dict())
                       for lab in labels],
               instruction_following=metrics.instruction_following(labels),
               smoothness=metrics.smoothness(video.start, video.chunks),
               seconds_per_chunk=float(np.mean(video.seconds_per_chunk)) if video.seconds_per_chunk else None)
    if reversal_at is not None:
        out["reversal"] = metrics.reversal_latency(labels, reversal_at)
    if truth is not None:
        frames, c2w, _ = truth
        t_start, t_chunks = _split(frames, F)
        out["pose"] = metrics.pose_errors(labels, c2w, F)
        out["fidelity"] = metrics.fidelity(video.chunks, t_chunks)
        out["fidelity"]["start_psnr"] = metrics.psnr(video.start, t_start)
        if returns:
            out["revisit"] = metrics.revisit(video.start, video.chunks[-1][-1])
        if cfg.keep_frames:
            out["_frames"] = dict(generated=[video.start] + [c[-1] for c in video.chunks],
                                  truth=[t_start] + [c[-1] for c in t_chunks])
    elif cfg.keep_frames:
        out["_frames"] = dict(generated=[video.start] + [c[-1] for c in video.chunks])
    return out


def run_sandbox(spec: RunSpec, cases: Sequence[bench.Case], truth: Truth, cfg: EvalConfig = EvalConfig(),
                default_dir: Callable[[], str] | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """One configuration over the benchmark cases: per-case results and the run's description."""
    pipe = Pipeline(spec, default_dir) if spec.kind == "pipeline" else None
    if pipe is not None:
        H, W, F = pipe.config.height, pipe.config.width, pipe.frames_per_chunk
    else:
        H, W, F = spec.height or 96, spec.width or 160, 4 * (spec.chunk_frames or 2)
    wcfg = world.WorldConfig(height=H, width=W)
    K = wcfg.intrinsics()
    results = []
    for case in cases:
        commanded = case.actions
        t = truth.get(case, wcfg, F)
        if pipe is not None:
            video = pipe.generate(t[0][0], commanded)
            got = {len(c) for c in video.chunks}
            if got != {F}:
                raise RuntimeError(f"run {spec.name!r}: chunks of {sorted(got)} frames, expected {F}")
        else:
            video = _reference(spec, case, wcfg, F, truth)  # rendered, not generated: no seconds per chunk
        res = score(video, commanded, K, cfg, truth=t, F=F, reversal_at=case.reversal_at,
                    returns=case.returns(F, wcfg))
        res["case"] = case.to_dict()
        results.append(res)
        if progress:
            progress(case.id)
    return dict(spec=spec.to_dict(), height=H, width=W, frames_per_chunk=F,
                pipeline=pipe.describe() if pipe else None, cases=results)


def _reference(spec: RunSpec, case: bench.Case, wcfg: world.WorldConfig, F: int, truth: Truth) -> Video:
    n = len(case.actions)
    if spec.kind == "noise":
        rng = np.random.default_rng(list(case.seed) + [spec.seed])
        frames = rng.integers(0, 256, (1 + n * F, wcfg.height, wcfg.width, 3), dtype=np.uint8)
    else:
        alt = {"truth": None, "opposite": [_opposite(a) for a in case.actions],
               "shuffled": [_shifted(a) for a in case.actions]}[spec.kind]
        frames = truth.get(case, wcfg, F, alt)[0]
    start, chunks = _split(frames, F)
    return Video(start, chunks, [])


def run_images(spec: RunSpec, images: Sequence[tuple[str, np.ndarray]], script: str, cfg: EvalConfig = EvalConfig(),
               default_dir: Callable[[], str] | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Image-start mode: a user's start images under one script; no ground truth."""
    if spec.kind != "pipeline":
        raise ValueError(f"image-start mode evaluates pipelines, not the {spec.kind!r} reference")
    commanded = parse_keys(script)
    pipe = Pipeline(spec, default_dir)
    K = world.WorldConfig(height=pipe.config.height, width=pipe.config.width).intrinsics()
    results = []
    for name, img in images:
        video = pipe.generate(img, commanded)
        res = score(video, commanded, K, cfg)
        res["case"] = dict(name=name, id=name, kind="image", script=script, chunks=len(commanded))
        results.append(res)
        if progress:
            progress(name)
    return dict(spec=spec.to_dict(), height=pipe.config.height, width=pipe.config.width,
                frames_per_chunk=pipe.frames_per_chunk, pipeline=pipe.describe(), cases=results)


# ------------------------------------------------------------------------------------- summary


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else None


def summarize(run: dict) -> dict:
    """Means over cases, per-chunk drift, instruction following per commanded label."""
    cs = run["cases"]
    s = dict(cases=len(cs), chunks=sum(len(c["chunks"]) for c in cs))
    flat = [ch for c in cs for ch in c["chunks"]]
    n = max(len(flat), 1)
    s["if_keys"] = sum(ch["keys_ok"] for ch in flat) / n
    s["if_mouse"] = sum(ch["mouse_ok"] for ch in flat) / n
    s["if_both"] = sum(ch["keys_ok"] and ch["mouse_ok"] for ch in flat) / n
    by_keys, by_mouse = {}, {}
    for ch in flat:
        a = Action(*ch["commanded"].split(" "))
        by_keys.setdefault(a.keys, []).append(ch["keys_ok"])
        by_mouse.setdefault(a.mouse, []).append(ch["mouse_ok"])
    s["if_by_keys"] = {k: float(np.mean(v)) for k, v in by_keys.items()}
    s["if_by_mouse"] = {k: float(np.mean(v)) for k, v in by_mouse.items()}
    s["boundary_ratio"] = _mean(c["smoothness"]["boundary_ratio"] for c in cs)
    s["flicker"] = _mean(c["smoothness"]["flicker"] for c in cs)
    s["seconds_per_chunk"] = _mean(c["seconds_per_chunk"] for c in cs)
    if any("pose" in c for c in cs):
        s["rotation_error_deg"] = _mean(c["pose"]["mean_rotation_deg"] for c in cs if "pose" in c)
        s["final_rotation_error_deg"] = _mean(c["pose"]["final_rotation_deg"] for c in cs if "pose" in c)
        longest = max(len(c["fidelity"]["psnr"]) for c in cs if "fidelity" in c)
        s["psnr_by_chunk"] = [_mean(c["fidelity"]["psnr"][k] for c in cs if "fidelity" in c
                                    and k < len(c["fidelity"]["psnr"])) for k in range(longest)]
        s["ssim_by_chunk"] = [_mean(c["fidelity"]["ssim"][k] for c in cs if "fidelity" in c
                                    and k < len(c["fidelity"]["ssim"])) for k in range(longest)]
        s["psnr"] = _mean(p for c in cs if "fidelity" in c for p in c["fidelity"]["psnr"])
        s["ssim"] = _mean(p for c in cs if "fidelity" in c for p in c["fidelity"]["ssim"])
        rev = [c["reversal"] for c in cs if "reversal" in c]
        s["reversal_latency"] = {c["case"]["name"]: c["reversal"]["latency"] for c in cs if "reversal" in c}
        s["reversal_latency_mean"] = _mean(r["latency"] for r in rev)
        s["revisit_psnr"] = _mean(c["revisit"]["psnr"] for c in cs if "revisit" in c)
        s["revisit_ssim"] = _mean(c["revisit"]["ssim"] for c in cs if "revisit" in c)
    return s
