"""Conditioning encoders on one device: umT5-XXL (512 tokens) and CLIP ViT-H/14 (one image), JAX vs the
transformers PyTorch models in the same process, random weights.

The JAX parameters are generated directly on the device in the benchmark dtype (jit-compiled init, no
host copies); the PyTorch models are built on the device in the same dtype and receive the SAME
weights through DLPack (device to device), so the outputs are compared as a check. Prints one JSON line
per measurement: median / min / max ms of timed calls after warm-up (compile time reported apart),
peak device memory, parameter bytes, and the relative L2 error of JAX vs PyTorch.

    python bench/encoders.py                 # GPU: umt5-xxl + clip-vit-h-14, bf16
    python bench/encoders.py --only clip     # one model (clean JAX peak memory for it)
    python bench/encoders.py --tiny          # CPU smoke test: tiny presets, float32

Measurements: ``umt5 encode_ids`` (1, 512) all tokens real vs ``UMT5EncoderModel(ids, mask).last_hidden_state``;
``umt5 encode`` (JAX only): a ~510-token prompt, first call (tokenize + encode) and cached call;
``clip encode_pixels`` (1, 3, 224, 224) vs ``CLIPVisionModel(..., output_hidden_states=True).hidden_states[-2]``
(transformers runs all 32 blocks; Wan and we run 31); ``clip encode`` a uint8 480x832 image with Wan's
preprocessing (bicubic resize, mean/std) vs the same preprocessing in torch + the transformers model.
JAX peak memory is process-wide and cumulative: CLIP runs first so its figure is its own.
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with PyTorch

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from yume_jax.convert import clip as clip_names  # noqa: E402
from yume_jax.convert import t5 as t5_names  # noqa: E402
from yume_jax.convert.core import transpose  # noqa: E402
from yume_jax.encoders import ImageEncoder, PromptCache, TextEncoder  # noqa: E402
from yume_jax.presets import encoder as get  # noqa: E402
from yume_jax.encoders.clip import CLIP_MEAN, CLIP_STD  # noqa: E402
from yume_jax.core import params as P  # noqa: E402

TORCH_DTYPE = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def info(args):
    import flax
    import transformers

    dev = jax.devices()[0]
    return {"device": getattr(dev, "device_kind", dev.platform), "jax": jax.__version__, "flax": flax.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__, "dtype": args.dtype}


def emit(row: dict):
    print(json.dumps(row), flush=True)


def stats(times_ms):
    t = sorted(times_ms)
    return {"ms_median": round(float(np.median(t)), 3), "ms_min": round(t[0], 3), "ms_max": round(t[-1], 3),
            "runs": len(t)}


def time_jax(fn, runs, warmup):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        jax.block_until_ready(fn())
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - t0) * 1e3)
    return out, {**stats(times), "first_call_s": round(first, 2)}


def time_torch(fn, runs, warmup, cuda):
    with torch.inference_mode():
        for _ in range(warmup):
            out = fn()
        times = []
        for _ in range(runs):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                out = fn()
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                out = fn()
                times.append((time.perf_counter() - t0) * 1e3)
    return out, stats(times)


def jax_mem():
    s = jax.devices()[0].memory_stats() or {}
    return {"peak_gib": round(s["peak_bytes_in_use"] / 2**30, 3) if "peak_bytes_in_use" in s else None,
            "in_use_gib": round(s["bytes_in_use"] / 2**30, 3) if "bytes_in_use" in s else None}


def torch_mem(cuda):
    return {"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None}


def nbytes(tree):
    return round(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)) / 2**30, 3)


def rel_l2(a, b):
    a = np.asarray(jnp.asarray(a, jnp.float32)) if isinstance(a, jax.Array) else a.float().cpu().numpy()
    b = b.float().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, np.float32)
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def per_layer(flat: dict, name: str):
    """A checkpoint-flat name ('blocks.3.attn.q.kernel') -> the JAX array (a slice of the stack) as torch."""
    if P.is_stacked(name):
        head, i, rest = name.split(".", 2)
        return torch.from_dlpack(flat[f"{head}.{rest}"])[int(i)]
    return torch.from_dlpack(flat[name])


def copy_into_torch(module: torch.nn.Module, pairs):
    """pairs: (torch name, torch tensor on device in the layout of the torch parameter)."""
    params = dict(module.named_parameters())
    seen = set()
    with torch.no_grad():
        for name, t in pairs:
            params[name].copy_(t)
            seen.add(name)
    missing = sorted(set(params) - seen)
    if missing:
        raise RuntimeError(f"torch parameters not filled: {missing[:3]}")


def torch_on_device(make, dtype, device):
    prev = torch.get_default_dtype()
    torch.set_default_dtype(TORCH_DTYPE[dtype])
    try:
        with torch.device(device):
            model = make().eval()
    finally:
        torch.set_default_dtype(prev)
    kinds = {(p.dtype, p.device.type) for p in model.parameters()}
    if kinds != {(TORCH_DTYPE[dtype], torch.device(device).type)}:
        raise RuntimeError(f"torch model built as {kinds}, wanted {dtype} on {device}")
    return model


# ----------------------------------------------------------------------------------------------


def bench_clip(args, base, device, cuda):
    from transformers import CLIPVisionConfig as HFVision
    from transformers import CLIPVisionModel

    cfg = get("tiny-clip" if args.tiny else "clip-vit-h-14")
    t0 = time.perf_counter()
    ie = ImageEncoder.random(cfg, seed=1, dtype=args.dtype)
    jax.block_until_ready(ie.params)
    init_s = time.perf_counter() - t0
    hf_cfg = HFVision(**{k: v for k, v in clip_names.hf_config(cfg).items() if k not in ("architectures", "model_type",
                                                                                           "projection_dim")})
    model = torch_on_device(lambda: CLIPVisionModel(hf_cfg), args.dtype, device)
    flat = P.flatten(ie.params)
    pairs = []
    for r in clip_names.rows(cfg, "transformers", prefix=""):
        if r.torch == "visual_projection.weight":
            continue
        (j,), (js,) = r.jax, r.jax_shapes
        t = per_layer(flat, j)
        if len(js) == 4:  # conv kernel [p, p, 3, W] -> [W, 3, p, p]
            t = t.permute(3, 2, 0, 1)
        elif r.to_torch is transpose:  # Linear
            t = t.T
        pairs.append((r.torch, t))
    copy_into_torch(model, pairs)
    del pairs

    s = cfg.image_size
    gen = torch.Generator().manual_seed(0)
    pix = torch.randn(1, 3, s, s, generator=gen)
    pix_j = jnp.asarray(pix.numpy())
    pix_t = pix.to(device, TORCH_DTYPE[args.dtype])
    mem0 = jax_mem()
    out_j, tj = time_jax(lambda: ie.encode_pixels(pix_j), args.runs, args.warmup)
    row = {**base, "bench": "clip encode_pixels", "config": "tiny-clip" if args.tiny else "clip-vit-h-14",
           "shape": [1, 3, s, s], "out_shape": list(out_j.shape), "init_s": round(init_s, 2),
           "params_gib": nbytes(ie.params)}
    emit({**row, "impl": "jax", **tj, **jax_mem(), "in_use_before_gib": mem0["in_use_gib"]})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out_t, tt = time_torch(lambda: model(pix_t, output_hidden_states=True).hidden_states[-2], args.runs, args.warmup,
                           cuda)
    emit({**row, "impl": "torch", **tt, **torch_mem(cuda), "rel_l2_jax_vs_torch": rel_l2(out_j, out_t),
          "note": "transformers runs all blocks for hidden_states; Wan/JAX run num_layers - 1"})

    h, w = (48, 80) if args.tiny else (480, 832)
    img = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    img_j = jnp.asarray(img)
    img_t = torch.from_numpy(img).to(device)
    mean = torch.tensor(CLIP_MEAN, device=device)[:, None, None]
    std = torch.tensor(CLIP_STD, device=device)[:, None, None]

    def torch_encode():
        x = img_t.permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x.sub(0.5).div(0.5), size=(s, s), mode="bicubic", align_corners=False).mul(0.5).add(0.5)
        x = ((x - mean) / std).to(TORCH_DTYPE[args.dtype])
        return model(x, output_hidden_states=True).hidden_states[-2]

    out_j, tj = time_jax(lambda: ie.encode(img_j), args.runs, args.warmup)
    row = {**row, "bench": "clip encode uint8 (Wan preprocessing)", "shape": [1, h, w, 3]}
    emit({**row, "impl": "jax", **tj, **jax_mem()})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out_t, tt = time_torch(torch_encode, args.runs, args.warmup, cuda)
    emit({**row, "impl": "torch", **tt, **torch_mem(cuda), "rel_l2_jax_vs_torch": rel_l2(out_j, out_t)})


def bench_umt5(args, base, device, cuda):
    from transformers import UMT5Config as HFT5
    from transformers import UMT5EncoderModel

    cfg = get("tiny-umt5" if args.tiny else "umt5-xxl").replace(tokenizer="byt5")
    t0 = time.perf_counter()
    te = TextEncoder.random(cfg, seed=0, dtype=args.dtype, cache=PromptCache())
    jax.block_until_ready(te.params)
    init_s = time.perf_counter() - t0
    hf = {k: v for k, v in t5_names.hf_config(cfg).items() if k not in ("architectures", "model_type")}
    model = torch_on_device(lambda: UMT5EncoderModel(HFT5(**hf)), args.dtype, device)
    flat = P.flatten(te.params)
    pairs = []
    for e in t5_names.entries(cfg):
        t = per_layer(flat, e.jax)
        pairs.append((e.hf, t.T if e.linear else t))
    copy_into_torch(model, pairs)  # encoder.embed_tokens is tied to shared
    del pairs

    n = args.tokens
    ids = np.random.default_rng(0).integers(2, cfg.vocab_size, (1, n)).astype(np.int32)
    ids[0, -1] = 1  # EOS
    mask = np.ones_like(ids)
    ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
    ids_t, mask_t = torch.from_numpy(ids).long().to(device), torch.from_numpy(mask).long().to(device)
    row = {**base, "bench": "umt5 encode_ids", "config": "tiny-umt5" if args.tiny else "umt5-xxl", "shape": [1, n],
           "init_s": round(init_s, 2), "params_gib": nbytes(te.params)}
    mem0 = jax_mem()
    out_j, tj = time_jax(lambda: te.encode_ids(ids_j, mask_j), args.runs, args.warmup)
    emit({**row, "impl": "jax", "out_shape": list(out_j.shape), **tj, **jax_mem(),
          "in_use_before_gib": mem0["in_use_gib"]})
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out_t, tt = time_torch(lambda: model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state, args.runs,
                           args.warmup, cuda)
    emit({**row, "impl": "torch", **tt, **torch_mem(cuda), "rel_l2_jax_vs_torch": rel_l2(out_j, out_t)})

    # Wan's encode path: ByT5 tokenizer (no files), a prompt of ~510 tokens -> bucket 512; then the cache
    prompt = ("The camera moves forward along a rainy street at night, neon signs reflect on the wet asphalt. " * 6)
    prompt = prompt[: n - 2]
    t0 = time.perf_counter()
    jax.block_until_ready(te.encode([prompt]))
    first = time.perf_counter() - t0
    times = []
    for i in range(args.runs):  # distinct prompts of the same length: every call computes
        p = f"{i:03d}" + prompt[3:]
        t0 = time.perf_counter()
        jax.block_until_ready(te.encode([p]))
        times.append((time.perf_counter() - t0) * 1e3)
    emit({**row, "bench": "umt5 encode (tokenize + encode, cache miss)", "impl": "jax", "prompt_bytes": len(prompt),
          **stats(times), "first_call_s": round(first, 2)})
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        jax.block_until_ready(te.encode([prompt]))
        times.append((time.perf_counter() - t0) * 1e3)
    emit({**row, "bench": "umt5 encode (prompt cache hit)", "impl": "jax", **stats(times),
          "cache_hits": te.cache.hits})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny presets on CPU (float32 unless --dtype)")
    ap.add_argument("--only", choices=["umt5", "clip"])
    ap.add_argument("--dtype", choices=["bfloat16", "float32"])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    args.dtype = args.dtype or ("float32" if args.tiny else "bfloat16")
    cuda = torch.cuda.is_available() and jax.devices()[0].platform == "gpu"
    if not args.tiny and not cuda:
        ap.error("the full-size benchmark needs a GPU visible to both JAX and PyTorch (use --tiny on CPU)")
    device = "cuda" if cuda else "cpu"
    base = info(args)
    if args.only in (None, "clip"):
        bench_clip(args, base, device, cuda)  # its models are freed on return
        if cuda:
            torch.cuda.empty_cache()
    if args.only in (None, "umt5"):
        bench_umt5(args, base, device, cuda)


if __name__ == "__main__":
    main()
