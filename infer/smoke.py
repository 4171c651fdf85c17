"""End-to-end smoke run on a tiny random Yume model: build, save, export to PyTorch (diffusers
naming), convert back, load with ``yume_jax.load_dit`` and run one chunk with compressed history.

    python -m infer.smoke [--out DIR]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    a = ap.parse_args(argv)
    import yume_jax
    from configs.models import get
    from yume_jax.convert import convert
    from yume_jax.models.loader import build, save_dit

    root = Path(a.out or tempfile.mkdtemp(prefix="yume-smoke-"))
    cfg = get("tiny-yume")
    print(f"tiny Yume model: dim {cfg.dim}, {cfg.num_layers} layers, tiers {cfg.history_tiers}")
    save_dit(build(cfg, seed=0), root / "jax")
    convert(root / "jax", root / "torch", to="torch", naming="diffusers", force=True)
    convert(root / "torch", root / "jax2", force=True)
    dit = yume_jax.load_dit(root / "jax2")
    rng = np.random.default_rng(0)
    history, chunk, h, w = 21, 9, 12, 20
    x = rng.standard_normal((1, cfg.in_channels, history + chunk, h, w), dtype=np.float32)
    ctx = rng.standard_normal((1, 512, cfg.text_dim), dtype=np.float32)
    img = rng.standard_normal((1, 257, cfg.image_dim), dtype=np.float32)
    for i in range(2):
        t0 = time.perf_counter()
        v = np.asarray(dit(x, np.array([700.0], np.float32), ctx, img, chunk=chunk))
        print(f"forward {i}: {v.shape} in {time.perf_counter() - t0:.2f}s ({'compile + run' if i == 0 else 'run'})")
    assert v.shape == (1, cfg.out_channels, chunk, h, w) and np.isfinite(v).all()
    print(f"ok: checkpoints in {root}")


if __name__ == "__main__":
    main()
