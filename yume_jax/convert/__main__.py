"""``python -m yume_jax.convert SRC DST``: convert checkpoints between PyTorch and yume_jax.
``python -m yume_jax.convert --pipeline RELEASE_DIR OUT_DIR``: an official Yume release directory
(Yume-I2V-540P, Yume-5B-720P) -> a pipeline directory (yume_jax/convert/release.py).

Exit codes: 0 success, 2 bad input (one line on stderr naming the file and key; --debug: the traceback),
130 / 143 interrupted by SIGINT / SIGTERM (nothing half-written kept). DST appears complete or not at all;
--force replaces only a previous output of this tool, never the input or a folder holding it.
"""
from __future__ import annotations

import argparse
import sys

from yume_jax.convert.driver import MAX_HEADS, convert
from yume_jax.core import cli
from yume_jax.core.tensors import ConversionError


def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m yume_jax.convert", description=__doc__)
    ap.add_argument("src", help="checkpoint file or directory (.safetensors, *.index.json dir, diffusers or "
                                "transformers dir, .pt/.pth/.bin, or a yume_jax checkpoint with --to torch)")
    ap.add_argument("dst", help="output directory")
    ap.add_argument("--pipeline", action="store_true",
                    help="SRC is an official Yume release directory; build the pipeline directory DST")
    ap.add_argument("--to", choices=["jax", "torch"], default="jax")
    ap.add_argument("--naming", help="torch-side naming: wan | diffusers (DiT, VAE), wan | transformers "
                                     "(text and image encoders); default: detected / the source's")
    ap.add_argument("--family", choices=["dit", "vae", "t5", "clip"], help="skip detection")
    ap.add_argument("--num-heads", type=int, help="attention heads where they cannot be inferred (default dim/128; 1..4096)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast (default: keep source dtype)")
    ap.add_argument("--force", action="store_true", help="replace an existing DST")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.num_heads is not None:
        cli.integer(a.num_heads, "--num-heads", low=1, high=MAX_HEADS)
    with cli.signals_raise():
        if a.pipeline:
            from yume_jax.convert.release import build_pipeline
            if a.to != "jax" or a.naming or a.family:
                raise ConversionError("--pipeline takes no --to, --naming or --family")
            out = build_pipeline(a.src, a.dst, dtype=a.dtype, num_heads=a.num_heads, force=a.force,
                                 progress=not a.no_progress)
        else:
            opts = {"num_heads": a.num_heads} if a.num_heads is not None else {}
            out = convert(a.src, a.dst, to=a.to, naming=a.naming, family=a.family, dtype=a.dtype, force=a.force,
                          progress=not a.no_progress, **opts)
    print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The CLI under the error policy of :mod:`yume_jax.core.cli`: one line and exit 2 for bad input, 130/143
    when interrupted (nothing half-written kept), ``--debug`` for the traceback."""
    return cli.run(_main, argv, prog="python -m yume_jax.convert")


if __name__ == "__main__":
    sys.exit(main())
