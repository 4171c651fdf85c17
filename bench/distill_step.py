"""One distillation step (:mod:`yume_jax.train.tasks.distill`): time and peak device memory.

Student + frozen teacher + critic (three DiTs, float32 master weights, FSDP over all devices), two AdamW
optimizers, student EMA, bf16 compute, remat; random weights (the student and critic are copies of the
teacher, as in a real run) and synthetic latents. Prints one JSON line: compile time, median step time over
the timed steps, model TFLOP/s per device (analytic forward FLOPs x the step's forward equivalents, see
``DistillTask.forwards_per_sample``), peak memory per device, the losses.

    PYTHONPATH=$PWD python bench/distill_step.py --preset wan2.1-t2v-1.3b                 # 1.3B, 480p, 21 latents
    PYTHONPATH=$PWD python bench/distill_step.py --preset wan2.1-t2v-1.3b --yume-extras --history 4 --latent 8,60,104
    PYTHONPATH=$PWD python bench/distill_step.py --preset yume-i2v-14b --layers 4 --history 4
    PYTHONPATH=$PWD python bench/distill_step.py --preset yume-i2v-14b --layers 8 --mesh fsdp=8
    PYTHONPATH=$PWD python bench/distill_step.py --tiny                                   # CPU smoke test

Shapes: ``--latent F,H,W`` is the chunk (default: 21x60x104 for 1.3B = 480x832x81 frames, 9x68x120 for the
14B = Yume's 33-frame 544x960 chunk) after ``--history`` latent frames (compressed by the Yume memory).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_LATENT = {"wan2.1-t2v-1.3b": (21, 60, 104), "yume-i2v-14b": (9, 68, 120)}


def _mesh(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=")
        out[k.strip()] = int(v)
    return out


def run(a) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs import train as tc
    from yume_jax import sharding
    from yume_jax.train import metrics as mt
    from yume_jax.train import objective
    from yume_jax.train import step as step_lib

    if a.tiny:
        preset, (f, h, w), text_len, img_tokens = "tiny-yume", (2, 8, 8), 8, 5
        over = {"model.dit.num_layers": "2", "runtime.dtype": "float32", "runtime.remat": "none"}
    else:
        preset = a.preset
        f, h, w = a.latent or DEFAULT_LATENT.get(preset, (9, 68, 120))
        text_len, img_tokens = a.text_len, 257
        over = {"runtime.dtype": a.dtype, "runtime.remat": a.remat}
    over.update({"model.preset": preset, "data.synthetic_history": str(a.history),
                 "distill.student_steps": str(a.student_steps), "distill.critic_steps": str(a.critic_steps),
                 "distill.history": a.mode, "distill.self_history": str(a.self_history).lower()})
    if a.history == 0:
        over["data.history_latents"] = "0"
    if not a.tiny:  # the model preset as it is (not tiny-distill's overrides), at --layers, with --yume-extras
        from yume_jax.presets import YUME_TIERS
        dit_over = {"num_layers": a.layers} if a.layers else {}
        if a.yume_extras:
            dit_over.update(history_tiers=YUME_TIERS, sideblock=True, mask_token=True)
        over["model.dit"] = json.dumps(dit_over)
    cfg = tc.resolve("tiny-distill", over)
    dit = cfg.dit_config()
    n = jax.device_count()
    mesh_shape = _mesh(a.mesh) if a.mesh else {"fsdp": n}
    batch = a.batch or n
    cfg = cfg.replace(mesh=tc.MeshConfig(**{**{"data": 1, "fsdp": 1, "context": 1, "tensor": 1}, **mesh_shape}),
                      batch_size=batch)
    mesh = sharding.make_mesh(tc.check_devices(cfg, n))
    task = tc.make_task(cfg)

    t0 = time.perf_counter()
    sh = task.state_shardings(mesh)
    state = task.init_state(sh)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0

    frames = a.history + f
    shapes = {"latents": (1, batch, dit.out_channels, frames, h, w), "text": (1, batch, text_len, dit.text_dim)}
    if dit.image_dim is not None:
        shapes["image"] = (1, batch, img_tokens, dit.image_dim)
    bsh = step_lib.batch_shardings(shapes, mesh)
    keys = iter(jax.random.split(jax.random.key(1), len(shapes)))
    data = {k: jax.jit(lambda key, s=s: jax.random.normal(key, s, jnp.float32), out_shardings=bsh[k])(next(keys))
            for k, s in shapes.items()}
    mode = task.mode_for_step(0)
    fn = task.make_step((f, mode), mesh, sh, bsh)
    t0 = time.perf_counter()
    compiled = fn.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    times, metrics = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        state, m = compiled(state, data)
        jax.block_until_ready(m)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    if not all(np.isfinite(v) for m in metrics for v in m.values()):
        raise RuntimeError(f"non-finite metrics: {metrics}")
    med = float(np.median(times))
    fw = mt.forward_flops(dit, frames, h, w, f, text_len, img_tokens if dit.image_dim else 0, None)
    flops = batch * task.forwards_per_sample() * fw["plain"]
    mem = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.local_devices())
    nparams = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(task.abstract_state()["student"]["params"]))
    dev = jax.devices()[0]
    return {"bench": "distill_step", "model": preset, "layers": dit.num_layers, "params_b": round(nparams / 1e9, 3),
            "chunk_latent": f"{f}x{h}x{w}", "history": a.history, "tokens": objective.num_tokens(frames, h, w, f),
            "batch": batch, "mesh": dict(mesh.shape), "dtype": cfg.runtime.dtype, "remat": cfg.runtime.remat,
            "student_steps": a.student_steps, "critic_steps": a.critic_steps, "history_mode": mode,
            "median_s": round(med, 3), "min_s": round(min(times), 3), "compile_s": round(compile_s, 1),
            "init_s": round(init_s, 1), "forwards_per_sample": task.forwards_per_sample(),
            "model_tflops_per_s_per_device": round(flops / med / n / 1e12, 2),
            "peak_gib_per_device": round(mem / 2 ** 30, 2) if mem else None,
            "metrics_last": {k: round(v, 4) for k, v in metrics[-1].items()},
            "device": dev.device_kind, "platform": dev.platform, "devices": n, "jax": jax.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="wan2.1-t2v-1.3b", help="model preset (configs/models.py)")
    ap.add_argument("--layers", type=int, default=None, help="blocks (reduced depth)")
    ap.add_argument("--latent", type=lambda s: tuple(int(x) for x in s.split(",")), default=None, help="chunk F,H,W")
    ap.add_argument("--history", type=int, default=0, help="history latent frames before the chunk")
    ap.add_argument("--yume-extras", action="store_true", help="add Yume's history tiers, side block, mask token "
                    "(a Wan preset with history)")
    ap.add_argument("--mode", default="noised", choices=["noised", "clean"])
    ap.add_argument("--self-history", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--student-steps", type=int, default=4)
    ap.add_argument("--critic-steps", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--remat", default="full")
    ap.add_argument("--mesh", default="", help="e.g. fsdp=8 (default: fsdp over all devices)")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default: one per device)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="tiny-yume on CPU (smoke test)")
    ap.add_argument("--out", default=None, help="also append the JSON line to this file")
    a = ap.parse_args(argv)
    if a.tiny and a.history == 0:
        a.history = 2
    res = run(a)
    line = json.dumps(res)
    print(line)
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
