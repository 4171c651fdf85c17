"""Building the embedded default model (docs/default_model.md), stage by stage; the GPU commands that ran each
stage are in ``train/default_model.sh``.

    python -m train.default_model encoders OUT            # frozen random sandbox umT5 (ByT5 bytes) + CLIP
    python -m train.default_model export-vae RUN OUT      # a --task=vae run -> OUT/vae (latent statistics measured)
    python -m train.default_model eval-vae VAE_DIR        # PSNR / SSIM on held-out sandbox walks (JSON line)
    python -m train.default_model export-dit RUN OUT      # a flow run's EMA DiT (bf16): the next stage's --model.init
    python -m train.default_model ship PIPELINE OUT       # a pipeline or flow workdir -> the shipped directory (bf16, sha256)
    python -m train.default_model plot-loss OUT.png VAE_METRICS DIT_METRICS...   # the model card's loss curves

The frozen encoders are random (seeded): the DiT learns to read them (issue 15 allows it; no pretrained
umT5 or CLIP weights can be fetched here). The text encoder reads bytes (ByT5 tokenizer), so every prompt
has a distinct encoding.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ENCODER_SEED = 20261204
HELD_OUT_SEED = 777  # walks [777, i]: neither the training pools ([0, i], [1000, i]) nor the benchmark's seeds


def write_encoders(out) -> Path:
    from flax import nnx

    from yume_jax.core.checkpoint import save_module
    from yume_jax.encoders import ImageEncoder, TextEncoder
    from yume_jax.presets import encoder

    out = Path(out)
    te = TextEncoder.random(encoder("sandbox-umt5"), seed=ENCODER_SEED)
    ie = ImageEncoder.random(encoder("sandbox-clip"), seed=ENCODER_SEED + 1)
    save_module(out / "text_encoder", "t5", te.config.to_dict(), nnx.merge(te.graphdef, te.params))
    save_module(out / "image_encoder", "clip", ie.config.to_dict(), nnx.merge(ie.graphdef, ie.params))
    return out


def held_out(num: int = 32, frames: int = 33, cfg=None):
    """uint8 (N, T, H, W, 3) held-out sandbox walks (rendered by JAX)."""
    from yume_jax.data import world
    from yume_jax.train.sandbox import render_pool

    return render_pool(num, frames, cfg or world.WorldConfig(), seed=HELD_OUT_SEED).frames


def export_vae(run, out, stats_walks: int = 64) -> Path:
    from configs import train as tc
    from yume_jax.data import world
    from yume_jax.train.sandbox import render_pool
    from yume_jax.train.tasks import vae as V

    cfg = json.loads((Path(run) / "config.json").read_text())
    tcfg = tc.from_dict(cfg)
    task = tc.vae_task(tcfg)
    params, step = V.trained_params(run)
    walks = render_pool(stats_walks, 17, world.PRESETS[tcfg.vae.world], seed=HELD_OUT_SEED + 1).frames
    x = walks.astype(np.float32).transpose(0, 4, 1, 2, 3) / 127.5 - 1.0
    V.export(out, task.vae, params, x)
    print(f"exported the VAE of {run} at step {step} to {out}")
    return Path(out)


def eval_vae(path, num: int = 32, frames: int = 33) -> dict:
    """Reconstruction of held-out walks: mean PSNR (dB) and SSIM over frames."""
    import yume_jax
    from yume_jax.eval.metrics import psnr, ssim
    from yume_jax.media import to_uint8

    vae = yume_jax.load_vae(path, latents_per_step=4)
    walks = held_out(num, frames)
    x = walks.astype(np.float32).transpose(0, 4, 1, 2, 3) / 127.5 - 1.0
    ps, ss = [], []
    for i in range(0, num, 8):
        y = np.asarray(vae.decode(vae.encode(x[i:i + 8])))
        for j in range(len(y)):
            rec = to_uint8(y[j:j + 1])
            for t in range(frames):
                ps.append(psnr(rec[t], walks[i + j, t]))
                ss.append(ssim(rec[t], walks[i + j, t]))
    return {"vae": str(path), "walks": num, "frames": frames, "psnr_db": float(np.mean(ps)),
            "ssim": float(np.mean(ss)), "psnr_min_db": float(np.min(ps))}


def export_dit(run, out, dtype: str = "bfloat16") -> Path:
    """The EMA (else current) DiT weights of a flow run as a ``dit`` checkpoint in ``dtype``: what the next
    stage starts from (``--model.init=OUT``; bf16 keeps it under the device tool's 16 MiB per file)."""
    import ml_dtypes

    from configs import train as tc
    from yume_jax.core import params as P
    from yume_jax.core.checkpoint import write_checkpoint
    from yume_jax.train.checkpoint import read_state

    cfg = tc.from_dict(json.loads((Path(run) / "config.json").read_text()))
    step, state = read_state(Path(run) / "checkpoints")
    entry = state["dit"]
    tree = entry["ema"] if entry.get("ema") else entry["params"]
    cast = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    flat = {k: np.asarray(v, np.float32).astype(cast) for k, v in P.flatten(tree).items()}
    write_checkpoint(out, "dit", cfg.dit_config().to_dict(), P.to_checkpoint(flat))
    print(f"exported the DiT of {run} at step {step} ({'ema' if entry.get('ema') else 'params'}) to {out}")
    return Path(out)


def ship(pipeline, out, dtype: str = "bfloat16") -> Path:
    """Copy a pipeline directory (or a training workdir's, :func:`yume_jax.convert.pipeline_dirs.resolve`; links
    resolved), DiT and VAE weights cast to ``dtype``, with SHA256SUMS."""
    import ml_dtypes

    from yume_jax.convert.pipeline_dirs import resolve
    from yume_jax.core.checkpoint import atomic_dir, open_checkpoint, write_checkpoint, write_checksums

    cast = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    src, out = resolve(pipeline), Path(out)
    with atomic_dir(out) as tmp:
        for part in ("dit", "vae"):
            ck = open_checkpoint((src / part).resolve(), part)
            arrays = {k: np.asarray(ck.read(k), np.float32).astype(cast) for k in ck.keys()}
            write_checkpoint(tmp / part, part, ck.meta["config"], arrays)
        for part in ("text_encoder", "image_encoder"):
            if (src / part).exists():
                shutil.copytree((src / part).resolve(), tmp / part)
        meta = json.loads((src / "pipeline.json").read_text())
        meta.pop("source", None)
        (tmp / "pipeline.json").write_text(json.dumps(meta, indent=1))
        write_checksums(tmp)
    return out


def read_metrics(paths) -> list[dict]:
    """The rows of ``metrics.jsonl`` files of consecutive calls of one stage, steps made continuous (a call started
    with ``--model.init`` counts from 1 again)."""
    rows, offset = [], 0
    for p in paths:
        last = 0
        for line in Path(p).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                last = r["step"]
                rows.append({**r, "step": offset + r["step"]})
        offset += last
    return rows


def plot_loss(out, vae_metrics, dit_metrics) -> Path:
    """A PNG: the VAE's reconstruction PSNR and loss, the DiT's flow losses (masked and unmasked MVDT passes),
    against steps, with the boundaries between device calls marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    v = read_metrics(vae_metrics)
    if v:
        a.plot([r["step"] for r in v], [r["loss"] for r in v], lw=0.8, label="loss")
        a2 = a.twinx()
        a2.plot([r["step"] for r in v if "psnr" in r], [r["psnr"] for r in v if "psnr" in r], color="C1", lw=0.8)
        a2.set_ylabel("train PSNR (dB)", color="C1")
        a.set_yscale("log")
    a.set(title="stage 1: VAE", xlabel="step", ylabel="loss")
    d = read_metrics(dit_metrics)
    for key in ("loss_unmasked", "loss_masked"):
        pts = [(r["step"], r[key]) for r in d if key in r]
        if pts:
            b.plot(*zip(*pts), lw=0.8, label=key.replace("loss_", ""))
    offset = 0
    for p in dit_metrics[:-1]:
        offset += read_metrics([p])[-1]["step"]
        b.axvline(offset, color="gray", lw=0.5, ls="--")
    b.set(title="stage 2: DiT flow loss (dashed: device calls)", xlabel="step", ylabel="loss")
    b.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    from yume_jax.core import cli

    def run(args) -> int:
        ap = argparse.ArgumentParser(prog="python -m train.default_model", description=__doc__.split("\n\n")[0])
        sub = ap.add_subparsers(dest="cmd", required=True)
        sub.add_parser("encoders").add_argument("out")
        e = sub.add_parser("export-vae")
        e.add_argument("run")
        e.add_argument("out")
        d = sub.add_parser("export-dit")
        d.add_argument("run")
        d.add_argument("out")
        v = sub.add_parser("eval-vae")
        v.add_argument("vae")
        v.add_argument("--walks", type=int, default=32)
        s = sub.add_parser("ship")
        s.add_argument("pipeline")
        s.add_argument("out")
        pl = sub.add_parser("plot-loss")
        pl.add_argument("out")
        pl.add_argument("vae_metrics")
        pl.add_argument("dit_metrics", nargs="+")
        a = ap.parse_args(args)
        if a.cmd == "encoders":
            print(write_encoders(a.out))
        elif a.cmd == "export-vae":
            export_vae(a.run, a.out)
        elif a.cmd == "export-dit":
            export_dit(a.run, a.out)
        elif a.cmd == "eval-vae":
            print(json.dumps(eval_vae(a.vae, a.walks)))
        elif a.cmd == "plot-loss":
            missing = [p for p in [a.vae_metrics, *a.dit_metrics] if not Path(p).is_file()]
            if missing:
                raise cli.UserError(f"metrics file not found: {missing[0]}")
            print(plot_loss(a.out, [a.vae_metrics], a.dit_metrics))
        else:
            try:
                print(ship(a.pipeline, a.out))
            except (FileNotFoundError, ValueError) as e:
                raise cli.UserError(str(e)) from None
        return 0

    return cli.run(run, argv, prog="python -m train.default_model")


if __name__ == "__main__":
    sys.exit(main())
