"""Training-step throughput: the sharded JAX step of the flow task (:mod:`yume_jax.train.tasks.flow`) and a PyTorch reference.

Random float32 master weights, synthetic latents, bf16 compute, remat, AdamW with clipping (the
trainer's optimizer). Per case one JSON line: median step time over timed steps after warm-up
(compile reported separately), steps/s, samples/s, tokens/s, model TFLOP/s per device and MFU
(analytic matmul FLOPs x 3, remat not counted; peak = the device's dense bf16 figure), peak device
memory. Cases:

- ``1.3b``: Wan2.1 T2V 1.3B at 480x832x81 (latent 21x60x104, 32,760 tokens), plain objective;
- ``14b``: Yume I2V 14B with ``--layers`` blocks (default 4) at the Yume chunk 9x68x120 (18,360 tokens),
  with the MVDT masked pass (Yume's training) and without it (comparable with the reference);
- ``torch``: diffusers WanTransformer3DModel, fp32 weights + bf16 autocast, gradient checkpointing,
  fused torch AdamW with clipping, plain objective (no MVDT in diffusers), same shapes (needs diffusers;
  single GPU only).

Every case runs in a fresh subprocess (clean peak memory, no allocator shared between JAX and torch).

    python bench/train_step.py                              # 1.3b and 14b (jax, torch), one GPU
    python bench/train_step.py --cases 14b --layers 8       # deeper (H200)
    python bench/train_step.py --cases 1.3b --mesh fsdp=4   # 4 GPUs, FSDP (batch = 1 per data-parallel device)
    python bench/train_step.py --tiny                       # CPU smoke test
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {
    # name: (train preset, model preset, latent FxHxW of the whole input, chunk, text_len, image tokens)
    "1.3b": ("wan1.3b-480p", "wan2.1-t2v-1.3b", (21, 60, 104), 21, 512, 0),
    "14b": ("yume14b-540p", "yume-i2v-14b", (9, 68, 120), 9, 512, 257),
}
TINY = {
    "1.3b": ("tiny-t2v", "tiny-t2v", (5, 8, 12), 5, 16, 0),
    "14b": ("tiny-synthetic", "tiny-yume", (3, 8, 12), 3, 16, 17),
}


def _mesh(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        k, v = part.split("=")
        out[k.strip()] = int(v)
    return out


def _times(times: list[float]) -> dict:
    import numpy as np
    med = float(np.median(times))
    return {"median_ms": round(1e3 * med, 2), "min_ms": round(1e3 * min(times), 2),
            "max_ms": round(1e3 * max(times), 2), "steps_per_s": round(1 / med, 4)}


def _versions():
    import jax
    dev = jax.devices()[0]
    return {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
            "devices": jax.device_count()}


def run_jax(a) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs import train as tc
    from yume_jax import sharding
    from yume_jax.train import metrics as mt
    from yume_jax.train import objective
    from yume_jax.train import step as step_lib

    table = TINY if a.tiny else CASES
    preset, model, (f, h, w), chunk, text_len, img_tokens = table[a.case]
    over = {"runtime.dtype": a.dtype, "runtime.remat": a.remat, "objective.mvdt": str(a.mvdt).lower()}
    if a.layers and a.case == "14b":
        over["model.dit.num_layers"] = str(a.layers)
    if not a.tiny:
        over["data.source"] = "sandbox"  # stand-in encoders, asked for explicitly: a step benchmark
    if a.tiny:
        over.update({"runtime.dtype": "float32" if a.dtype == "bfloat16" else a.dtype})
    cfg = tc.resolve(preset, over)
    dit = cfg.dit_config()
    mesh_shape = _mesh(a.mesh) if a.mesh else {"fsdp": -1}
    cfg = cfg.replace(mesh=tc.MeshConfig(**{**{"data": 1, "fsdp": 1, "context": 1, "tensor": 1}, **mesh_shape}),
                      optim=dataclasses.replace(cfg.optim, grad_accum=1), batch_size=jax.device_count())
    probe = tc.check_devices(cfg, jax.device_count())  # the concrete mesh (errors for a bad --mesh)
    batch = a.batch or probe["data"] * probe["fsdp"]
    cfg = cfg.replace(batch_size=batch)
    mesh_shape = tc.check_devices(cfg, jax.device_count())
    mesh = sharding.make_mesh(mesh_shape)

    t0 = time.perf_counter()
    task = tc.flow_task(cfg)
    sh = task.state_shardings(mesh)
    state = task.init_state(sh)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0

    z = dit.out_channels
    shapes = {"latents": (1, batch, z, f, h, w), "text": (1, batch, text_len, dit.text_dim)}
    if dit.image_dim is not None:
        shapes["image"] = (1, batch, img_tokens, dit.image_dim)
    bsh = step_lib.batch_shardings(shapes, mesh)
    keys = iter(jax.random.split(jax.random.key(1), len(shapes)))
    gen = {k: jax.jit(lambda key, s=s: jax.random.normal(key, s, jnp.float32), out_shardings=bsh[k])
           for k, s in shapes.items()}
    data = {k: gen[k](next(keys)) for k in shapes}
    tokens = objective.num_tokens(f, h, w, chunk)
    keep = (objective.keep_for_step(0, 0, tokens, cfg.objective.mask_low, cfg.objective.mask_width,
                                    cfg.objective.mask_buckets) if a.mvdt else None)
    fn = task.make_step((chunk, keep), mesh, sh, bsh)
    t0 = time.perf_counter()
    compiled = fn.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    losses, times = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        state, m = compiled(state, data)
        jax.block_until_ready(m)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(m["loss"]))
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"non-finite loss: {losses}")
    med = float(np.median(times))
    fw = mt.forward_flops(dit, f, h, w, chunk, text_len, img_tokens if dit.image_dim else 0, keep)
    flops = batch * mt.train_flops(fw)
    n = jax.device_count()
    peak = a.peak_tflops or mt.peak_tflops(jax.devices()[0].device_kind)
    stats = jax.devices()[0].memory_stats() or {}
    mem = max((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.local_devices())
    nparams = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(task.abstract_state()["dit"]["params"]))
    return {"impl": "jax", "case": a.case, "model": model, "layers": dit.num_layers,
            "params_b": round(nparams / 1e9, 3), "latent": f"{f}x{h}x{w}", "chunk": chunk, "tokens": tokens,
            "mvdt_keep": keep, "batch": batch,
            "mesh": mesh_shape, "dtype": cfg.runtime.dtype, "remat": cfg.runtime.remat,
            **_times(times), "samples_per_s": round(batch / med, 4),
            "tokens_per_s": round(batch * tokens / med, 1),
            "model_tflops_per_s_per_device": round(flops / med / n / 1e12, 2),
            "mfu": round(flops / med / (n * peak * 1e12), 4) if peak else None,
            "peak_gib": round(mem / 2 ** 30, 2) if stats else None, "compile_s": round(compile_s, 1),
            "init_s": round(init_s, 1), "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
            **_versions()}


def run_torch(a) -> dict:
    import numpy as np
    import torch
    from diffusers import WanTransformer3DModel

    from configs.models import get
    from yume_jax.train import metrics as mt

    table = TINY if a.tiny else CASES
    _, model, (f, h, w), chunk, text_len, img_tokens = table[a.case]
    dit = get(model, **({"num_layers": a.layers} if a.layers and a.case == "14b" else {}))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    kw = dict(num_attention_heads=dit.num_heads, attention_head_dim=dit.head_dim, in_channels=dit.in_channels,
              out_channels=dit.out_channels, text_dim=dit.text_dim, freq_dim=dit.freq_dim, ffn_dim=dit.ffn_dim,
              num_layers=dit.num_layers, patch_size=dit.patch_size, cross_attn_norm=True,
              qk_norm="rms_norm_across_heads", eps=dit.eps)
    if dit.image_dim is not None:
        kw.update(image_dim=dit.image_dim, added_kv_proj_dim=dit.dim)
    t0 = time.perf_counter()
    with torch.device(dev):
        m = WanTransformer3DModel(**kw)
    m.train()
    m.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-5, weight_decay=1e-3, fused=dev == "cuda")
    init_s = time.perf_counter() - t0
    g = torch.Generator(device=dev).manual_seed(0)
    b = 1
    x0 = torch.randn(b, dit.out_channels, f, h, w, device=dev, generator=g)
    ctx = torch.randn(b, text_len, dit.text_dim, device=dev, generator=g)
    img = torch.randn(b, img_tokens, dit.image_dim, device=dev, generator=g) if dit.image_dim else None
    amp = torch.bfloat16 if (a.dtype == "bfloat16" and not a.tiny) else torch.float32  # --tiny: float32 like jax

    def step():
        t = torch.sigmoid(torch.randn(b, device=dev, generator=g))
        t = 3 * t / (1 + 2 * t)
        eps = torch.randn(x0.shape, device=dev, generator=g)
        xt = t.view(-1, 1, 1, 1, 1) * eps + (1 - t.view(-1, 1, 1, 1, 1)) * x0
        inp = xt
        if dit.in_channels != dit.out_channels:  # I2V: mask + conditioning latents of the first frame
            cond = torch.zeros(b, dit.in_channels - dit.out_channels, f, h, w, device=dev)
            cond[:, :4, :1] = 1
            cond[:, 4:, :1] = x0[:, :, :1]
            inp = torch.cat([xt, cond], 1)
        with torch.autocast(dev, dtype=amp, enabled=amp != torch.float32):
            v = m(inp, t * 1000, ctx, encoder_hidden_states_image=img).sample
        loss = torch.mean((v.float() - (eps - x0)) ** 2)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), gn

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    losses, times = [], []
    for i in range(a.warmup + a.steps):
        if dev == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
        t0 = time.perf_counter()
        loss, _ = step()
        if dev == "cuda":
            e.record()
        sync()
        if i >= a.warmup:
            times.append(s.elapsed_time(e) / 1e3 if dev == "cuda" else time.perf_counter() - t0)
        losses.append(float(loss))
    med = float(np.median(times))
    tokens = f * (h // 2) * (w // 2)
    fw = mt.forward_flops(dit, f, h, w, chunk, text_len, img_tokens if dit.image_dim else 0, None)
    peak = a.peak_tflops or (mt.peak_tflops(torch.cuda.get_device_name()) if dev == "cuda" else None)
    flops = b * mt.train_flops(fw)
    nparams = sum(p.numel() for p in m.parameters())  # no Yume extras (side block, history embeddings)
    return {"impl": "torch-diffusers", "case": a.case, "model": model, "layers": dit.num_layers,
            "params_b": round(nparams / 1e9, 3),
            "latent": f"{f}x{h}x{w}", "tokens": tokens, "batch": b, "dtype": str(amp).split(".")[-1],
            "remat": "checkpointing",
            **_times(times), "samples_per_s": round(b / med, 4), "tokens_per_s": round(tokens / med, 1),
            "model_tflops_per_s_per_device": round(flops / med / 1e12, 2),
            "mfu": round(flops / med / (peak * 1e12), 4) if peak else None,
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if dev == "cuda" else None,
            "init_s": round(init_s, 1), "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="1.3b,14b", help="comma list of 1.3b, 14b")
    ap.add_argument("--impl", default="jax,torch", help="comma list of jax, torch")
    ap.add_argument("--layers", type=int, default=None, help="14b: number of blocks (default 4; 2 with --tiny)")
    ap.add_argument("--mesh", default="", help="e.g. fsdp=4 or fsdp=2,tensor=2 (default: fsdp over all devices)")
    ap.add_argument("--batch", type=int, default=0, help="global batch (default: one per data-parallel device)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--remat", default="full")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU (smoke test)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: impl:case:mvdt in this process
    ap.add_argument("--mvdt", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.layers is None:
        a.layers = 2 if a.tiny else 4
    if a.one:
        impl, a.case, mv = a.one.split(":")
        a.mvdt = bool(int(mv))
        try:
            out = run_jax(a) if impl == "jax" else run_torch(a)
        except Exception as e:  # one line per case, also on failure (e.g. out of memory)
            out = {"impl": impl, "case": a.case, "mvdt": a.mvdt, "error": f"{type(e).__name__}: {str(e)[:500]}"}
        print(json.dumps(out), flush=True)
        return 0 if "error" not in out else 1
    jobs = []
    for case in a.cases.split(","):
        for impl in a.impl.split(","):
            if impl == "jax":
                jobs += [("jax", case, 0)] + ([("jax", case, 1)] if case == "14b" else [])
            elif impl == "torch":
                if a.mesh and a.mesh not in ("fsdp=1",):
                    print(json.dumps({"impl": "torch-diffusers", "case": case, "skipped": "single GPU only"}))
                    continue
                jobs.append(("torch", case, 0))
    env = dict(os.environ)
    if a.tiny:
        env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
    rc = 0
    for impl, case, mv in jobs:
        cmd = [sys.executable, __file__, f"--one={impl}:{case}:{mv}", f"--layers={a.layers}", f"--dtype={a.dtype}",
               f"--remat={a.remat}", f"--steps={a.steps}", f"--warmup={a.warmup}", f"--batch={a.batch}",
               f"--mesh={a.mesh}"] + (["--tiny"] if a.tiny else []) + (
            [f"--peak-tflops={a.peak_tflops}"] if a.peak_tflops else [])
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        line = next((ln for ln in reversed(r.stdout.splitlines()) if ln.startswith("{")), None)
        if line is None:
            line = json.dumps({"impl": impl, "case": case, "mvdt": bool(mv), "error": r.stderr.strip()[-800:]})
        print(line, flush=True)
        rc |= r.returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
