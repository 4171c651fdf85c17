"""What an FSDP training step moves between devices: the collectives of one loss-and-gradient step of a
small Wan DiT under a bf16 compute / float32 master-weight policy, read from XLA's HLO right after SPMD
partitioning (before the CPU backend rewrites bf16 ops to f32), counted by op, dtype and pass.

    python bench/fsdp_collectives.py [--devices 8] [--remat none|full]

Runs on CPU with virtual devices; the partitioning is the same on GPU and TPU meshes. Gradients are
constrained to the parameter shardings as in ``yume_jax.train.step``.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--remat", default="none")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    dump = tempfile.mkdtemp(prefix="fsdp_hlo_")
    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={args.devices} --xla_dump_to={dump} "
                               "--xla_dump_hlo_pass_re=spmd-partitioning")
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding

    from configs.models import get
    from yume_jax import sharding
    from yume_jax.core import params as P
    from yume_jax.models.config import Runtime
    from yume_jax.models.loader import build

    cfg = get("tiny-t2v", dim=128, ffn_dim=256, num_heads=2, num_layers=3)
    graphdef, state = nnx.split(build(cfg, seed=0))
    mesh = sharding.make_mesh({"fsdp": args.devices})
    shard = jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(mesh, sharding.spec(sharding.param_axes(P.path_name(p), x.ndim), x.shape, mesh)),
        state)
    state = jax.device_put(state, shard)
    rt = Runtime(dtype=args.dtype, remat=args.remat)
    b = args.devices
    x = jnp.ones((b, cfg.in_channels, 3, 8, 8))
    t = jnp.full((b,), 500.0)
    ctx = jnp.ones((b, 16, cfg.text_dim))

    def loss(st):
        with sharding.use_mesh(mesh):
            return jnp.mean(nnx.merge(graphdef, st)(x, t, ctx, runtime=rt).astype(jnp.float32) ** 2)

    def grads(st):
        return jax.lax.with_sharding_constraint(jax.grad(loss)(st), shard)

    jax.jit(grads).lower(state).compile()
    files = [f for f in glob.glob(f"{dump}/*grads*after_spmd-partitioning*.txt")]
    if not files:
        raise SystemExit(f"no SPMD dump in {dump} (XLA flags not honoured?)")
    text = Path(sorted(files)[0]).read_text()
    counts: collections.Counter = collections.Counter()
    for line in text.splitlines():
        m = re.search(r"= (\w+)\[([\d,]*)\]\S* (all-gather|reduce-scatter|all-reduce)\(", line)
        if not m:
            continue
        phase = "backward" if "transpose(" in line else "forward"
        shape = [int(d) for d in m.group(2).split(",") if d]
        kind = "weight" if len(shape) == 2 and min(shape) >= 64 and "dot_general" not in line.split("(")[1] else "other"
        key = f"{m.group(3)} {m.group(1)} {phase}"
        counts[key] += 1
        if args.verbose:
            print(key, shape, line.split("(")[1].split(")")[0], file=sys.stderr)
    row = {"jax": jax.__version__, "devices": args.devices, "remat": args.remat, "dtype": args.dtype,
           "model": "tiny-t2v dim 128, 3 layers", "collectives": dict(sorted(counts.items()))}
    print(json.dumps(row))


if __name__ == "__main__":
    main()
