"""Benchmark: the Wan VAE in JAX against diffusers AutoencoderKLWan, same weights, same inputs, one call.

    python bench/vae.py                      # GPU: Wan 2.1 @ 33x544x960 and Wan 2.2 @ 33x704x1280, bf16 + fp32
    python bench/vae.py --versions 2.2 --dtypes bfloat16     # a subset (each pair takes a few minutes)
    python bench/vae.py --stream 5,9,17      # + streaming decode peak memory vs length (JAX)
    python bench/vae.py --lps 1,3            # JAX with 1 and 3 latent frames per compiled decode step
    python bench/vae.py --tiny               # CPU check: tiny configs, small frames

Full-size VAEs get random weights (N(0, 1/fan_in) kernels), written once as a yume_jax checkpoint and
exported to a diffusers directory with our converter; JAX loads the first (``yume_jax.load_vae``),
diffusers the second (``AutoencoderKLWan.from_pretrained``). Every (version, dtype, framework) runs in
its own child process so that peak memory is that framework's alone (JAX's allocator keeps its pool;
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so its peak is what it used). Per phase: encode of the clip,
decode of random latents of the matching shape; warm-up runs (compilation) excluded, median of
``--repeats``; torch timed with CUDA events, JAX with ``jax.block_until_ready``. The diffusers child
compares its outputs with the JAX child's (relative L2; TF32 convolutions are the default in both on
GPU, so fp32 parity there is ~1e-3, not the CPU test's 1e-5).

One JSON line per measurement: impl, version, dtype, phase, shapes, ms (median and all), peak memory
(GPU: allocator peak; CPU: the child's max RSS), device and software versions. JAX peak memory cannot
be reset inside a process: its decode figure is the peak over encode and decode (``peak_cumulative``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FULL = {"2.1": ("wan2.1", 544, 960), "2.2": ("wan2.2", 704, 1280)}
TINY = {"2.1": ("tiny-2.1", 64, 96), "2.2": ("tiny-2.2", 64, 128)}


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def inputs(cfg, frames: int, h: int, w: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    video = rng.uniform(-1, 1, (1, cfg.video_channels, frames, h, w)).astype(np.float32)
    lat = rng.standard_normal((1, cfg.z_dim, 1 + (frames - 1) // 4, h // cfg.spatial_stride,
                               w // cfg.spatial_stride)).astype(np.float32)
    return video, lat


def emit(rec: dict) -> None:
    print(json.dumps(rec), flush=True)


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


# ------------------------------------------------------------------------------------------------
# children


def child_jax(a) -> None:
    import jax

    import yume_jax
    from yume_jax import presets

    preset, h, w = (TINY if a.tiny else FULL)[a.version]
    cfg = presets.vae(preset)
    dev = jax.devices()[0]
    t0 = time.perf_counter()
    vae = yume_jax.load_vae(Path(a.work) / f"{a.version}-jax", dtype=a.dtype, latents_per_step=a.lps)
    load_s = time.perf_counter() - t0
    video, lat = inputs(cfg, a.frames, h, w)
    xv, xl = jax.device_put(video), jax.device_put(lat)

    def peak():
        s = dev.memory_stats()
        return (s["peak_bytes_in_use"] / 2 ** 30, "device") if s and "peak_bytes_in_use" in s else (rss_gb(), "rss")

    base = {"bench": "vae", "impl": "jax", "version": a.version, "dtype": a.dtype, "frames": a.frames, "height": h,
            "width": w, "device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__,
            "latents_per_step": a.lps, "matmul_precision": str(jax.config.jax_default_matmul_precision),
            "load_s": round(load_s, 2)}
    outs = {}
    for phase, fn, x in (("encode", lambda: vae.encode(xv, normalize=False), xv),
                         ("decode", lambda: vae.decode(xl, normalize=False), xl)):
        t0 = time.perf_counter()
        for _ in range(a.warmup):
            y = jax.block_until_ready(fn())
        warm_s = time.perf_counter() - t0
        ms = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            y = jax.block_until_ready(fn())
            ms.append((time.perf_counter() - t0) * 1e3)
        outs[phase] = np.asarray(y, np.float32)
        pk, kind = peak()
        emit({**base, "phase": phase, "in_shape": list(x.shape), "out_shape": list(y.shape),
              "ms": round(float(np.median(ms)), 2), "ms_all": [round(m, 2) for m in ms],
              "warmup_s": round(warm_s, 2), "peak_gb": round(pk, 3), "peak_kind": kind,
              "peak_cumulative": phase == "decode", "traces": dict(vae.traces)})
        del y
    np.save(Path(a.work) / f"{a.version}-{a.dtype}-encode.npy", outs["encode"])
    np.save(Path(a.work) / f"{a.version}-{a.dtype}-decode.npy", outs["decode"])


def child_torch(a) -> None:
    import torch
    from diffusers import AutoencoderKLWan

    from yume_jax import presets

    preset, h, w = (TINY if a.tiny else FULL)[a.version]
    cfg = presets.vae(preset)
    cuda = torch.cuda.is_available() and not a.tiny
    dev = torch.device("cuda" if cuda else "cpu")
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    t0 = time.perf_counter()
    m = AutoencoderKLWan.from_pretrained(Path(a.work) / f"{a.version}-diffusers", torch_dtype=dt).to(dev).eval()
    load_s = time.perf_counter() - t0
    video, lat = inputs(cfg, a.frames, h, w)
    xv = torch.from_numpy(video).to(dev, dt)
    xl = torch.from_numpy(lat).to(dev, dt)
    import diffusers

    base = {"bench": "vae", "impl": "diffusers", "version": a.version, "dtype": a.dtype, "frames": a.frames,
            "height": h, "width": w, "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__, "diffusers": diffusers.__version__, "load_s": round(load_s, 2),
            "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if cuda else None}
    for phase, fn, x in (("encode", lambda: m.encode(xv).latent_dist.mode(), xv),
                         ("decode", lambda: m.decode(xl).sample, xl)):
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(a.warmup):
                y = fn()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            warm_s = time.perf_counter() - t0
            ms = []
            for _ in range(a.repeats):
                if cuda:
                    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    e0.record()
                    y = fn()
                    e1.record()
                    torch.cuda.synchronize()
                    ms.append(e0.elapsed_time(e1))
                else:
                    t0 = time.perf_counter()
                    y = fn()
                    ms.append((time.perf_counter() - t0) * 1e3)
        pk = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else rss_gb()
        got = y.float().cpu().numpy()
        ref = Path(a.work) / f"{a.version}-{a.dtype}-{phase}.npy"
        parity = rel_l2(np.load(ref), got) if ref.exists() else None
        emit({**base, "phase": phase, "in_shape": list(x.shape), "out_shape": list(y.shape),
              "ms": round(float(np.median(ms)), 2), "ms_all": [round(v, 2) for v in ms], "warmup_s": round(warm_s, 2),
              "peak_gb": round(pk, 3), "peak_kind": "device" if cuda else "rss", "peak_cumulative": False,
              "jax_vs_diffusers_rel_l2": parity})
        del y


def child_stream(a) -> None:
    """Streaming decode of ``a.length`` latent frames one chunk at a time (outputs dropped): JAX peak memory."""
    import jax

    import yume_jax
    from yume_jax import presets

    preset, h, w = (TINY if a.tiny else FULL)[a.version]
    cfg = presets.vae(preset)
    vae = yume_jax.load_vae(Path(a.work) / f"{a.version}-jax", dtype=a.dtype)
    _, lat = inputs(cfg, 5, h, w)
    dev = jax.devices()[0]
    state = None
    t0 = time.perf_counter()
    for _ in range(a.length):
        y, state = vae.stream_decode(lat[:, :, :1], state)
        jax.block_until_ready(y)
        del y
    s = dev.memory_stats()
    pk, kind = (s["peak_bytes_in_use"] / 2 ** 30, "device") if s and "peak_bytes_in_use" in s else (rss_gb(), "rss")
    emit({"bench": "vae_stream", "impl": "jax", "version": a.version, "dtype": a.dtype, "latent_frames": a.length,
          "video_frames": 1 + 4 * (a.length - 1), "height": h, "width": w, "peak_gb": round(pk, 3),
          "peak_kind": kind, "s": round(time.perf_counter() - t0, 2), "device": dev.device_kind})


# ------------------------------------------------------------------------------------------------
# driver


def write_checkpoints(version: str, tiny: bool, work: Path) -> None:
    from yume_jax.convert import convert, save_safetensors
    from yume_jax import presets
    from yume_jax.vae.params import init_params

    preset = (TINY if tiny else FULL)[version][0]
    cfg = presets.vae(preset)
    jd = work / f"{version}-jax"
    jd.mkdir()
    save_safetensors(jd / "params.safetensors", init_params(cfg, seed=0))
    (jd / "yume_jax.json").write_text(json.dumps({"format": 1, "family": "vae", "config": cfg.to_dict(),
                                                  "source_naming": "diffusers", "extras": []}))
    convert(jd, work / f"{version}-diffusers", to="torch", naming="diffusers", progress=False)


def run_child(args: list[str], env: dict) -> int:
    p = subprocess.run([sys.executable, __file__, *args], env=env, text=True, capture_output=True)
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            print(line, flush=True)
    if p.returncode:
        print(json.dumps({"bench": "vae", "error": f"child {args} exited {p.returncode}",
                          "stderr_tail": p.stderr[-3000:]}), flush=True)
    return p.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs on CPU")
    ap.add_argument("--versions", default="2.1,2.2")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--frames", type=int, default=None, help="video frames (4n+1); default 33 (9 with --tiny)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--stream", default="", help="comma-separated latent lengths for the streaming memory check")
    ap.add_argument("--impls", default="jax,diffusers")
    ap.add_argument("--lps", default="1", help="JAX latent frames per compiled step, comma-separated to compare "
                                               "(1 = the reference chunking)")
    ap.add_argument("--child", choices=["jax", "diffusers", "stream"])
    ap.add_argument("--version")
    ap.add_argument("--dtype")
    ap.add_argument("--length", type=int)
    ap.add_argument("--work")
    a = ap.parse_args()
    if a.child:
        a.lps = int(a.lps)
    a.frames = a.frames or (9 if a.tiny else 33)
    if a.child:
        {"jax": child_jax, "diffusers": child_torch, "stream": child_stream}[a.child](a)
        return 0

    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TOKENIZERS_PARALLELISM": "false"}
    if a.tiny:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    common = ["--frames", str(a.frames), "--repeats", str(a.repeats), "--warmup", str(a.warmup)] + \
        (["--tiny"] if a.tiny else [])
    rc = 0
    with tempfile.TemporaryDirectory(prefix="vae_bench_") as work:
        for version in a.versions.split(","):
            write_checkpoints(version, a.tiny, Path(work))
            for dtype in a.dtypes.split(","):
                for impl in a.impls.split(","):
                    for lps in (a.lps.split(",") if impl == "jax" else ["1"]):
                        rc |= run_child(["--child", impl, "--version", version, "--dtype", dtype, "--work", work,
                                         "--lps", lps, *common], env)
                for n in [int(s) for s in a.stream.split(",") if s]:
                    rc |= run_child(["--child", "stream", "--version", version, "--dtype", dtype, "--work", work,
                                     "--length", str(n), *common], env)
    return rc


if __name__ == "__main__":
    sys.exit(main())
