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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infer.calibrate_cache", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="pipeline directory, release directory or training workdir")
    ap.add_argument("--image")
    ap.add_argument("--action", default="W")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--num", type=int, default=None, help="blocks to cache (default: round(num_layers / 4))")
    ap.add_argument("--refresh", type=int, default=2, help="refresh interval the set is chosen for")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="cache_blocks.json")
    ap.add_argument("--write-pipeline", action="store_true",
                    help="store the chosen blocks and their measured error in pipeline.json")
    a = ap.parse_args(argv)

    from infer.explore import UsageError, read_image
    from yume_jax.convert import pipeline_dirs
    from yume_jax.pipeline import PIPELINE_JSON, load_pipeline
    from yume_jax.rollout import RolloutConfig, Session
    from yume_jax.sampling import cache as blockcache
    from yume_jax.sampling.api import SamplerConfig

    try:
        pipe_dir = pipeline_dirs.resolve(a.checkpoint)
        pipe = load_pipeline(pipe_dir)
        image = read_image(a.image) if a.image else None
        d = pipe.defaults
        base = RolloutConfig(height=d.get("height", 96), width=d.get("width", 160),
                             chunk_frames=d.get("chunk_frames", 2), seed=a.seed,
                             sampler=SamplerConfig(steps=a.steps, cfg_scale=a.cfg))
        session = Session(pipe, base, image=image)
    except (UsageError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    layers = pipe.dit.config.num_layers
    reference = session.step(a.action)[1]
    ref_latents = session.history[:, :, -base.chunk_frames:]

    def run(slot_of_layer, refresh):
        s = Session(pipe, RolloutConfig(**{**base.__dict__, "block_cache": refresh,
                                           "cache_blocks": tuple(int(i) for i in np.flatnonzero(slot_of_layer >= 0))}),
                    image=image)
        s.step(a.action)
        return s.history[:, :, -base.chunk_frames:]

    if a.refresh < 1 or (a.num is not None and not 0 <= a.num <= layers):
        print(f"error: need --refresh >= 1 and --num in 0..{layers}", file=sys.stderr)
        return 2
    res = blockcache.calibrate(run, layers, ref_latents, num=a.num, refresh=a.refresh)
    out = dict(checkpoint=a.checkpoint, steps=a.steps, cfg=a.cfg, action=a.action, refresh=a.refresh,
               blocks=res["blocks"], error=res["error"], rounds=res["steps"], reference_chunk=reference["chunk"])
    Path(a.out).write_text(json.dumps(out, indent=1))
    for i, r in enumerate(res["steps"]):
        print(f"round {i + 1:3d}: + block {r['block']:3d}  set error {r['error']:.3e}")
    if a.write_pipeline:
        p = Path(pipe_dir) / PIPELINE_JSON
        cfg = json.loads(p.read_text()) if p.exists() else {}
        cfg.update(cache_blocks=sorted(res["blocks"]), cache_error=res["error"], cache_refresh=a.refresh)
        p.write_text(json.dumps(cfg, indent=1))
    print(f"cached set ({len(res['blocks'])} of {layers}, refresh {a.refresh}): {sorted(res['blocks'])}, "
          f"measured error {res['error']:.3e} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
