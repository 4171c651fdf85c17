"""Peak memory of checkpoint conversion vs checkpoint size (streaming: it must not grow).

Writes synthetic original-Wan-named DiT checkpoints (random fp32 tensors, written tensor by tensor)
of increasing size, converts each in a fresh process (`python -m yume_jax.convert`), and reports
the child's peak RSS. Usage:

    python bench/convert_memory.py --sizes-gb 0.25 2.2 [--dir /tmp/convmem]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_synthetic(path: Path, dim: int, ffn: int, layers: int) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from yume_jax.convert.dit import entries
    from yume_jax.core.tensors import SafetensorsWriter
    from yume_jax.models.config import DiTConfig

    cfg = DiTConfig(dim=dim, ffn_dim=ffn, num_heads=dim // 128, num_layers=layers, in_channels=36,
                    out_channels=16, image_dim=1280)
    ents = entries(cfg)
    w = SafetensorsWriter(path, [(e.wan, np.float32, e.torch_shape) for e in ents])
    rng = np.random.default_rng(0)
    total = 0
    for e in ents:
        a = rng.standard_normal(e.torch_shape, dtype=np.float32)
        total += a.nbytes
        w.write(e.wan, a)
    w.close()
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[0.25, 2.2])
    ap.add_argument("--dir", default="/tmp/convmem")
    a = ap.parse_args()
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    dim, ffn = 2048, 8192
    per_layer = (8 * dim * dim + 2 * dim * dim + 2 * dim * ffn) * 4  # bytes, roughly
    for gb in a.sizes_gb:
        layers = max(1, int(gb * 2**30 / per_layer))
        src, dst = root / f"wan_{gb}.safetensors", root / f"jax_{gb}"
        shutil.rmtree(dst, ignore_errors=True)
        nbytes = write_synthetic(src, dim, ffn, layers)
        t0 = time.time()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r = subprocess.run([sys.executable, "-m", "yume_jax.convert", str(src), str(dst), "--no-progress",
                            "--num-heads", str(dim // 128)], capture_output=True, text=True)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if r.returncode:
            raise SystemExit(r.stderr)
        print(json.dumps(dict(checkpoint_gib=round(nbytes / 2**30, 3), layers=layers,
                              peak_rss_mib=round(peak_kib / 1024, 1), rss_grew=peak_kib > before,
                              seconds=round(time.time() - t0, 1))))
        src.unlink()
        shutil.rmtree(dst)


if __name__ == "__main__":
    main()
