"""``python -m infer.calibrate_cache``: choose the DiT blocks for residual caching (spec/yume.md "Distillation
and caching": the paper caches 10 of 40 blocks; the public code has no selection criterion).

On one calibration chunk (from --image, or text-only) at the refresh interval --refresh, the set is built
greedily: each round adds the block whose addition increases the measured relative L2 error of the SET's
chunk latents (against the uncached run) least (sampling/cache.py ``calibrate``). --num defaults to
round(num_layers / 4). The rounds and the final set's measured error are printed and written as JSON;
with --write-pipeline the set and its error become pipeline.json's ``cache_blocks`` / ``cache_error``
(and ``cache_refresh``).

    python -m infer.calibrate_cache --checkpoint DIR --image start.png --steps 14 --out cache.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from yume_jax.core import cli


MAX_NUM = 1000  # --num cap (also at most the DiT's layers)


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infer.calibrate_cache", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="pipeline directory, release directory or training workdir")
    ap.add_argument("--image")
    ap.add_argument("--action", default="W")
    ap.add_argument("--steps", type=int, default=14, help="sampling steps (1..1000)")
    ap.add_argument("--cfg", type=float, default=5.0, help="guidance scale (finite, 0..100)")
    ap.add_argument("--num", type=int, default=None, help="blocks to cache (default: round(num_layers / 4))")
    ap.add_argument("--refresh", type=int, default=2, help="refresh interval the set is chosen for (1..1000)")
    ap.add_argument("--seed", type=int, default=0, help="0..2^32-1")
    ap.add_argument("--out", default="cache_blocks.json")
    ap.add_argument("--write-pipeline", action="store_true",
                    help="store the chosen blocks and their measured error in pipeline.json")
    a = ap.parse_args(argv)

    from infer.explore import UsageError, check_number, read_image, read_pipeline_json
    from yume_jax import camera
    from yume_jax.convert import pipeline_dirs
    from yume_jax.core.checkpoint import atomic_write_text, output_lock
    from yume_jax.pipeline import PIPELINE_JSON, load_pipeline
    from yume_jax.rollout import RolloutConfig, Session
    from yume_jax.sampling import cache as blockcache
    from yume_jax.sampling.api import SamplerConfig

    steps = check_number("steps", a.steps, "--steps")
    cfg = check_number("cfg", a.cfg, "--cfg")
    seed = check_number("seed", a.seed, "--seed")
    refresh = cli.integer(a.refresh, "--refresh", low=1, high=1000)
    if a.num is not None:
        cli.integer(a.num, "--num", low=0, high=MAX_NUM)
    try:
        action = camera.parse_step(a.action)
    except ValueError as e:
        raise UsageError(f"--action: {e}") from None
    out_path = Path(a.out)
    if out_path.is_symlink() or (out_path.exists() and not out_path.is_file()):
        raise UsageError(f"--out {a.out}: exists and is not a regular file")
    try:
        pipe_dir = pipeline_dirs.resolve(a.checkpoint)
        read_pipeline_json(pipe_dir)
        pipe = load_pipeline(pipe_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(str(e)) from None
    d = pipe.defaults
    if not isinstance(d, dict):
        raise UsageError(f"{pipe_dir}/{PIPELINE_JSON}: expected a JSON object, got {type(d).__name__}")
    where = f"{pipe_dir}/{PIPELINE_JSON}: "
    layers = pipe.dit.config.num_layers
    if a.num is not None and a.num > layers:
        raise UsageError(f"--num must be <= {layers} (the DiT's layers), got {a.num}")
    image = read_image(a.image) if a.image else None
    try:
        base = RolloutConfig(height=check_number("height", d.get("height", 96), where + "height"),
                             width=check_number("width", d.get("width", 160), where + "width"),
                             chunk_frames=check_number("chunk_frames", d.get("chunk_frames", 2), where + "chunk_frames"),
                             seed=seed, sampler=SamplerConfig(steps=steps, cfg_scale=cfg))
        session = Session(pipe, base, image=image)
    except ValueError as e:
        raise UsageError(str(e)) from None
    reference = session.step(action)[1]
    ref_latents = session.history[:, :, -base.chunk_frames:]
    if not np.isfinite(np.asarray(ref_latents)).all():
        raise UsageError("the uncached reference run produced non-finite latents (NaN/inf): check the checkpoint's "
                         "weights and --cfg; nothing written")

    def run(slot_of_layer, refresh):
        s = Session(pipe, RolloutConfig(**{**base.__dict__, "block_cache": refresh,
                                           "cache_blocks": tuple(int(i) for i in np.flatnonzero(slot_of_layer >= 0))}),
                    image=image)
        s.step(action)
        return s.history[:, :, -base.chunk_frames:]

    res = blockcache.calibrate(run, layers, ref_latents, num=a.num, refresh=refresh)
    errors = [res["error"], *(r["error"] for r in res["steps"])]
    if not all(np.isfinite(float(e)) for e in errors):
        raise UsageError("the calibration measured non-finite errors (NaN/inf): the ranking is meaningless, "
                         f"nothing written (errors {errors[:4]}...)")
    out = dict(checkpoint=a.checkpoint, steps=steps, cfg=cfg, action=a.action, refresh=refresh,
               blocks=res["blocks"], error=res["error"], rounds=res["steps"], reference_chunk=reference["chunk"])
    with output_lock(out_path):
        atomic_write_text(out_path, json.dumps(out, indent=1))
    for i, r in enumerate(res["steps"]):
        print(f"round {i + 1:3d}: + block {r['block']:3d}  set error {r['error']:.3e}")
    if a.write_pipeline:
        p = Path(pipe_dir) / PIPELINE_JSON
        with output_lock(p):  # read-modify-write: concurrent calibrations must not lose each other's keys
            try:
                cfg_json = json.loads(p.read_text()) if p.exists() else {}
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UsageError(f"{p}: corrupt JSON ({e}); not rewritten") from None
            if not isinstance(cfg_json, dict):
                raise UsageError(f"{p}: expected a JSON object; not rewritten")
            cfg_json.update(cache_blocks=sorted(res["blocks"]), cache_error=res["error"], cache_refresh=refresh)
            atomic_write_text(p, json.dumps(cfg_json, indent=1))
    print(f"cached set ({len(res['blocks'])} of {layers}, refresh {refresh}): {sorted(res['blocks'])}, "
          f"measured error {res['error']:.3e} -> {a.out}")
    return 0


def main(argv=None) -> int:
    """Under :mod:`yume_jax.core.cli`'s policy: bad input one line and exit 2 (non-finite measurements
    included: nothing written), 130 / 143 interrupted; every file written complete or not at all."""
    with cli.signals_raise():
        return cli.run(_main, argv, prog="python -m infer.calibrate_cache")


if __name__ == "__main__":
    sys.exit(main())
