"""``python -m infer.calibrate_cache``: rank DiT blocks for residual caching (spec/yume.md "Distillation and
caching": the paper caches 10 low-importance blocks; the public code has no selection criterion).

For one calibration chunk (from --image, or text-only), each block is cached alone with refresh every
other step; the relative L2 error of the chunk's latents against the uncached run ranks the blocks.
The ranking is printed, written as JSON, and with --write-pipeline the best --num blocks become the
pipeline's default ``cache_blocks``.

    python -m infer.calibrate_cache --checkpoint DIR --image start.png --steps 14 --num 10 --out ranking.json
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
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--image")
    ap.add_argument("--action", default="W")
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--num", type=int, default=10, help="blocks to cache (the best-ranked)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="cache_ranking.json")
    ap.add_argument("--write-pipeline", action="store_true", help="store the best --num blocks in pipeline.json")
    a = ap.parse_args(argv)

    from infer.explore import UsageError, read_image
    from yume_jax.pipeline import PIPELINE_JSON, load_pipeline
    from yume_jax.rollout import RolloutConfig, Session
    from yume_jax.sampling import cache as blockcache
    from yume_jax.sampling.api import SamplerConfig

    try:
        pipe = load_pipeline(a.checkpoint)
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

    ranking = blockcache.calibrate(run, layers, ref_latents)
    out = dict(checkpoint=a.checkpoint, steps=a.steps, cfg=a.cfg, action=a.action, ranking=ranking,
               best=[r["block"] for r in ranking[: a.num]], reference_chunk=reference["chunk"])
    Path(a.out).write_text(json.dumps(out, indent=1))
    for r in ranking:
        print(f"block {r['block']:3d}  error {r['error']:.3e}")
    if a.write_pipeline:
        p = Path(a.checkpoint) / PIPELINE_JSON
        cfg = json.loads(p.read_text()) if p.exists() else {}
        cfg["cache_blocks"] = out["best"]
        p.write_text(json.dumps(cfg, indent=1))
    print(f"best {a.num}: {out['best']} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
