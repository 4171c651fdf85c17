"""Encode Sekai/Yume-layout clips into the latent dataset (ArrayRecord via TFDS) that large training runs read.

    python -m train.build_latents --data DIR --vae VAE_CKPT --text-encoder T5_CKPT --out OUT \\
        [--image-encoder CLIP_CKPT] [--layout sekai|yume] [--preset yume|sandbox|tiny] [--samples-per-clip K] [--seed S] [--dtype bfloat16]

Runs the raw-clip sampling of :mod:`yume_jax.data.pipeline` (chunk + history, I2V with p = 0.4), encodes each
video with ``yume_jax.load_vae(VAE_CKPT).encode`` and both prompts (without / with the speed sentence) with
``yume_jax.load_text_encoder(T5_CKPT).encode``, with ``--image-encoder`` the CLIP features of each sample's
last history frame (``yume_jax.load_image_encoder(CLIP_CKPT).encode``; needed to train I2V models) and the
I2V channels' gray continuation latents (unless ``--no-gray``), and writes ``OUT/<name>/1.0.0/``. Interrupted? Run the same
command again: finished samples are kept in ``OUT/_work`` and not encoded twice. Read the result with
``yume_jax.data.latents.latent_dataset(OUT/<name>/1.0.0)``.

Guarantees: the dataset directory is complete or absent (TFDS writes it under a temporary name and
renames it); a rerun into an ``OUT`` whose finished dataset was built with other settings is refused
(one line, exit 2) and one with the same settings reports the existing dataset; one build per ``OUT``
at a time (``OUT/.lock``); exit 2 with one line for bad flags, inputs, encoders, unwritable or full
``OUT``; 130 / 143 after SIGINT / SIGTERM (finished samples are kept); ``--debug`` prints tracebacks.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import numpy as np

from yume_jax.core import cli


def _encoders(args):
    import yume_jax

    vae = yume_jax.load_vae(args.vae, dtype=args.vae_dtype)
    te = yume_jax.load_text_encoder(args.text_encoder, tokenizer_dir=args.tokenizer_dir, tokenizer=args.tokenizer)

    def video(x):
        return np.asarray(vae.encode(x))

    def text(texts):
        return np.asarray(te.encode(list(texts)), np.float32)

    image = None
    if args.image_encoder:
        from yume_jax.media import to_uint8
        ie = yume_jax.load_image_encoder(args.image_encoder)

        def image(frames):  # (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), as the explorer feeds CLIP
            px = np.concatenate([to_uint8(f[None, :, None]) for f in np.asarray(frames, np.float32)])
            return np.asarray(ie.encode(px), np.float32)

    return video, text, image


def _main(argv) -> int:
    from yume_jax.data import latents, pipeline, sekai

    ap = argparse.ArgumentParser(prog="python -m train.build_latents", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="Sekai-layout or Yume-layout root")
    ap.add_argument("--layout", choices=["sekai", "yume"], help="default: detected")
    ap.add_argument("--vae", required=True, help="VAE checkpoint (converted, Wan .pth or diffusers directory)")
    ap.add_argument("--vae-dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--text-encoder", required=True, help="converted umT5 checkpoint")
    ap.add_argument("--image-encoder", help="converted CLIP checkpoint: store image features (I2V models)")
    ap.add_argument("--no-gray", action="store_true",
                    help="do not store the I2V channels' gray continuation latents (stored by default with "
                         "--image-encoder: a second VAE encode per sample)")
    ap.add_argument("--tokenizer-dir", help="umT5 tokenizer directory (default: <text-encoder>/tokenizer)")
    ap.add_argument("--tokenizer", choices=["umt5", "byt5", "none"], help="override the checkpoint's tokenizer")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--name", default="yume_latents")
    ap.add_argument("--preset", choices=sorted(pipeline.RAW_PRESETS), default="yume")
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--chunk-frames", type=int)
    ap.add_argument("--prompt-style", choices=["yume1", "yume1.5"])
    ap.add_argument("--samples-per-clip", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=list(latents.DTYPES), default="float32", help="storage dtype")
    ap.add_argument("--keep-cache", action="store_true", help="keep OUT/_work after writing the dataset")
    ap.add_argument("--max-samples", type=int, help="stop after encoding this many samples (resumable)")
    args = ap.parse_args(argv)
    for flag, low in (("height", 1), ("width", 1), ("chunk_frames", 1), ("samples_per_clip", 1), ("seed", 0),
                      ("max_samples", 1)):
        v = getattr(args, flag)
        if v is not None:
            cli.integer(v, f"--{flag.replace('_', '-')}", low=low, high=1 << 20 if flag != "seed" else 2 ** 32 - 1)

    cfg = pipeline.RAW_PRESETS[args.preset]
    over = {k: v for k, v in (("height", args.height), ("width", args.width), ("chunk_frames", args.chunk_frames),
                              ("prompt_style", args.prompt_style)) if v is not None}
    try:
        cfg = cfg.replace(**over)
    except ValueError as e:
        raise cli.UserError(f"--preset {args.preset} with {over}: {e}") from None
    if not args.data.is_dir():
        raise cli.UserError(f"--data {args.data}: not a directory")
    data = sekai.read(args.data, args.layout)
    print(data.report(), file=sys.stderr)
    if not data.clips:
        raise cli.UserError(f"--data {args.data}: no usable clips ({data.report()}); first problems: "
                            + "; ".join(data.problems[:3]))
    video, text, image = _encoders(args)
    ident = json.dumps({"vae": str(Path(args.vae).resolve()), "vae_dtype": args.vae_dtype,
                        "text_encoder": str(Path(args.text_encoder).resolve()), "tokenizer": args.tokenizer,
                        "image_encoder": str(Path(args.image_encoder).resolve()) if args.image_encoder else None})
    old = signal.signal(signal.SIGTERM, _on_sigterm)  # SIGTERM like Ctrl-C: finished samples stay, exit 143
    try:
        rep = latents.encode_dataset(data, args.out, video, text, cfg, samples_per_clip=args.samples_per_clip,
                                     seed=args.seed, dtype=args.dtype, name=args.name, encoders=ident,
                                     keep_cache=args.keep_cache, max_samples=args.max_samples, image_encoder=image,
                                     gray=False if args.no_gray else None)
    except KeyboardInterrupt:
        raise cli.Interrupted(signal.SIGINT, f"interrupted; finished samples are kept in {args.out / '_work'}; "
                              "run the same command to continue") from None
    finally:
        signal.signal(signal.SIGTERM, old)
    if rep.reused:
        print(f"{rep.path} is already built with these settings ({rep.examples} examples); nothing to do")
        return 0
    if rep.examples == 0:
        print(f"stopped after {rep.encoded} samples; {rep.problems[0]}; run again to continue", file=sys.stderr)
        return 0
    print(f"wrote {rep.examples} examples to {rep.path} (encoded {rep.encoded} in this run; skipped {rep.skipped})")
    return 0


def _on_sigterm(signum, frame):
    raise cli.Interrupted(signum, "terminated; finished samples are kept; run the same command to continue")


def main(argv=None) -> int:
    return cli.run(_main, argv, prog="python -m train.build_latents")


if __name__ == "__main__":
    sys.exit(main())
