"""``python -m infer.evaluate``: does a world model follow the keys and stay consistent?

Runs one or several configurations over sandbox-bench (held-out sandbox start views x action scripts with
the exact ground-truth continuation of every view) and writes into --out:

  report.json   every case, every chunk, every number; seeds, settings and library versions
  summary.md    one row per configuration
  psnr_drift.png, if_by_action.png, reversal_latency.png, contact_<i>_<run>.png

Metrics: instruction following (per chunk, the camera motion estimated from the pixels, labelled with
Algorithm 1, equals the command: keys, mouse, both), rotation error against the commanded trajectory,
PSNR/SSIM against the ground-truth renders per chunk (drift), reversal latency, revisit consistency,
chunk-boundary discontinuity, temporal flicker, seconds per chunk.

Numbers are checked where they enter, flags and --compare values alike (infer.explore's LIMITS; --views
1..64). The report files appear complete or not at all (written aside, renamed in, report.json last); one run
at a time per --out (a lock beside it). Exit codes: 0 ok, 2 bad input (one line; --debug for the traceback),
130 / 143 interrupted.

Examples:
  python -m infer.evaluate --out eval/                          # the default (tiny random) pipeline
  python -m infer.evaluate --checkpoint ckpt/ --steps 50 --cfg 5 --out eval/
  python -m infer.evaluate --checkpoint ckpt/ --compare "name=50-step,steps=50,cfg=5" \\
      "name=4-step,steps=4,cfg=1" "name=aam,aam=1" "name=cache,cache=2" truth noise --out eval/
  python -m infer.evaluate --image a.png b.png --actions "W*4, →*4" --out eval/   # no ground truth

A --compare entry is key=value pairs overriding the flags (name, checkpoint, steps, sampler, cfg, aam,
cache, history_mode, chunk_frames, height, width, seed) or a reference video: truth (the ground truth:
IF ~1), opposite (renders of the opposite script), shuffled (a different key and mouse label every
chunk), noise. Exit codes: 0 ok, 2 bad input.

Trust: the estimator is validated on ground truth (all 81 key x mouse actions, 4 held-out seeds) in
BENCHMARKS.md: keys 0.978 / mouse 0.975 at 96x160, 0.991 / 0.991 at 544x960, moving cameras included;
a few single labels stay below 0.95 at 96x160 (keys W, S+D; mouse down, none). Instruction following
is therefore a slight lower bound: compare runs against each other and against the `truth` reference,
which states the ceiling on the same cases.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from yume_jax.core import cli

UsageError = cli.UserError  # bad input: one line, exit code 2
MAX_VIEWS = 64


def parse_args(argv):
    from yume_jax.eval import bench

    ap = argparse.ArgumentParser(prog="python -m infer.evaluate", description=__doc__,
                                 epilog=bench.describe(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="pipeline directory; default: the embedded default (tiny random) model")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps per chunk (default: pipeline.json's)")
    ap.add_argument("--sampler", choices=["euler", "sde", "tts", "tts-sde"], default="euler")
    ap.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (1 = off)")
    ap.add_argument("--aam", action="store_true", help="anti-artifact mechanism (two passes)")
    ap.add_argument("--cache", type=int, default=0, metavar="N", help="block residual caching every N steps")
    ap.add_argument("--history-mode", choices=["renoise", "clean"], default=None,
                    help="renoise (Yume 1.0) or clean (Yume 1.5); default: pipeline.json's, else renoise")
    ap.add_argument("--chunk-frames", type=int, default=None, help="new latent frames per chunk")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (the benchmark's start views are fixed)")
    ap.add_argument("--compare", nargs="+", metavar="SPEC", help="several configurations into one table (see above)")
    ap.add_argument("--cases", default="all", help="all | quick | comma-separated case names or kinds "
                                                  "(key, mouse, combo, reversal, revisit, long)")
    ap.add_argument("--views", type=int, default=1, help="start views per case")
    ap.add_argument("--image", nargs="+", help="image-start mode: your own start images (no ground truth)")
    ap.add_argument("--actions", help="image-start mode: the script, e.g. 'W*4, →*4'")
    ap.add_argument("--out", default="eval", help="report directory")
    from infer.explore import add_compile_cache_flag

    add_compile_cache_flag(ap)
    return ap.parse_args(argv)


def _read_image(path: str):
    from yume_jax.media import load_image

    return load_image(path)


def check_spec(s) -> None:
    """The numbers of one run spec (from flags or --compare) within infer.explore's LIMITS."""
    from infer.explore import LIMITS, check_number

    for name in LIMITS:
        if hasattr(s, name):
            where = f"--{name.replace('_', '-')}" if s.name == "pipeline" else f"--compare {s.name!r}: {name}"
            check_number(name, getattr(s, name), where)


def run(a) -> int:
    from yume_jax.eval import harness
    from yume_jax.pipeline import enable_compile_cache

    enable_compile_cache(a.compile_cache)

    base = harness.RunSpec(name="pipeline", checkpoint=a.checkpoint, steps=a.steps, sampler=a.sampler, cfg=a.cfg,
                           aam=a.aam, cache=a.cache, history_mode=a.history_mode, chunk_frames=a.chunk_frames,
                           height=a.height, width=a.width, seed=a.seed)
    try:
        specs = [harness.parse_spec(s, base) for s in a.compare] if a.compare else [base]
    except ValueError as e:
        raise UsageError(str(e)) from None
    for s in specs:
        check_spec(s)
    cli.integer(a.views, "--views", low=1, high=MAX_VIEWS)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"--compare names must differ (give name=...): {names}")
    for s in specs:
        if s.checkpoint and not Path(s.checkpoint).is_dir():
            raise UsageError(f"checkpoint not found: {s.checkpoint}")
    out = Path(a.out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UsageError(f"--out {a.out}: exists and is not a directory")
    from yume_jax.core.checkpoint import output_lock

    with output_lock(out):
        return _evaluate(a, specs, out)


def _evaluate(a, specs, out) -> int:
    from tqdm import tqdm

    from infer.explore import default_pipeline_dir
    from yume_jax.camera import parse_keys
    from yume_jax.eval import bench, harness, report

    t0 = time.perf_counter()
    if a.image:
        if not a.actions:
            raise UsageError("--image needs --actions (the script to command)")
        try:
            n = len(parse_keys(a.actions))
        except ValueError as e:
            raise UsageError(str(e)) from None
        if any(s.kind != "pipeline" for s in specs):
            raise UsageError("reference videos (truth, noise, ...) need the sandbox: drop --image")
        images = [(Path(p).name, _read_image(p)) for p in a.image]
        bar = tqdm(total=len(specs) * len(images), desc="evaluate", unit="case")
        runs = []
        for s in specs:
            bar.set_postfix_str(s.name)
            runs.append(harness.run_images(s, images, a.actions, default_dir=default_pipeline_dir,
                                           progress=lambda _: bar.update()))
        bar.close()
        rep = report.write(out, "images", runs, dict(script=a.actions, chunks=n))
    else:
        if a.actions:
            raise UsageError("--actions is for image-start mode (--image); sandbox-bench has its own scripts")
        try:
            cases = bench.select(a.cases, a.views)
        except ValueError as e:
            raise UsageError(str(e)) from None
        truth = harness.Truth()
        bar = tqdm(total=len(specs) * len(cases), desc="evaluate", unit="case")
        runs = []
        for s in specs:
            bar.set_postfix_str(s.name)
            try:
                runs.append(harness.run_sandbox(s, cases, truth, default_dir=default_pipeline_dir,
                                                progress=lambda _: bar.update()))
            except (FileNotFoundError, ValueError) as e:
                raise UsageError(f"run {s.name!r}: {e}") from None
        bar.close()
        rep = report.write(out, "sandbox", runs, dict(case_selection=a.cases, views=a.views))
    print(report.markdown(rep))
    print(f"wrote {out}/report.json, summary.md and plots in {time.perf_counter() - t0:.0f} s")
    return 0


def main(argv=None) -> int:
    with cli.signals_raise():
        return cli.run(lambda args: run(parse_args(args)), argv, prog="python -m infer.evaluate")


if __name__ == "__main__":
    sys.exit(main())
