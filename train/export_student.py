"""Write the student of a distillation run as a pipeline directory (docs/distillation.md).

    python -m train.export_student WORKDIR OUT [--encoders PIPELINE_DIR] [--step N]

WORKDIR is a ``python -m train.train --task=distill`` run. OUT gets ``dit/`` (the student's EMA parameters,
else its parameters, from the latest complete checkpoint or ``--step``), the VAE and encoders the run was
trained with (or those of ``--encoders``, for runs on stand-in encoders) and a ``pipeline.json`` whose
sampler defaults are the student's: ``"sampler": "euler"``, ``"steps": K``, ``"sigmas": [...]`` (the exact
sigmas it was trained at) and ``"cfg": 1``. ``python -m infer.explore --checkpoint OUT``, the rollout
(``RolloutConfig.for_pipeline``) and ``python -m infer.evaluate --checkpoint OUT`` then sample as the student
was trained, without flags. The explorer also takes WORKDIR itself (the same directory, built under
``WORKDIR/pipeline/step_<N>``; :func:`yume_jax.convert.pipeline_dirs.from_workdir`).
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from yume_jax.core import cli


def main(argv: list[str]) -> int:
    from yume_jax.convert import pipeline_dirs
    from yume_jax.core.checkpoint import atomic_dir

    ap = argparse.ArgumentParser(prog="python -m train.export_student", description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", help="a distillation run (config.json + checkpoints/)")
    ap.add_argument("out", help="the pipeline directory to write")
    ap.add_argument("--encoders", default=None, help="pipeline dir whose VAE and encoders to use (stand-in runs)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest complete one)")
    a = ap.parse_args(argv)
    work, out = Path(a.workdir), Path(a.out)
    if pipeline_dirs.kind(work) != "workdir":
        raise cli.UserError(f"{work}: not a training workdir (config.json + checkpoints/)")
    cfg = json.loads((work / "config.json").read_text())
    if cfg.get("task") != "distill":
        raise cli.UserError(f"{work}: a --task={cfg.get('task', 'flow')} run, not a distillation run")
    try:
        built = pipeline_dirs.from_workdir(work, encoders=a.encoders, step=a.step)
    except (FileNotFoundError, ValueError) as e:
        raise cli.UserError(str(e)) from None
    with atomic_dir(out) as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(built, tmp, symlinks=True)
    d = json.loads((out / "pipeline.json").read_text())
    print(f"wrote {out}: student step {d['step']} ({d['weights']}), {d['steps']} Euler steps at sigmas {d['sigmas']}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(cli.run(main, prog="python -m train.export_student"))
