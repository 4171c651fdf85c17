"""Sharded Yume / Wan DiT trainer: ``python -m train.train --config NAME [--key=value ...]``.

    python -m train.train --config tiny-sandbox                      # CPU: renders sandbox clips, trains
    python -m train.train --config tiny-sandbox --optim.lr=1e-3 --mesh.fsdp=2 --workdir=/tmp/run
    python -m train.train --config yume14b-540p --model.init=ckpt/yume --data.path=/data/latents/yume_latents/1.0.0
    python -m train.train --list                                     # named configs

Named configs and every key: :mod:`configs.train`. The resolved config is written to
``<workdir>/config.json``; checkpoints go to ``<workdir>/checkpoints`` (Orbax, async), metrics to
``<workdir>/metrics.jsonl`` and TensorBoard event files to ``<workdir>/tb`` (tensorboardX). Running
the same command again resumes from the last complete checkpoint (params, optimizer state, step, RNG,
data-iterator position), also onto a different mesh (``--mesh.*``); SIGTERM/SIGINT save a checkpoint
and stop. Multi-host: ``--dist.coordinator=host:port --dist.num_processes=N --dist.process_id=i`` on
every process (or ``--dist.auto=true`` where jax.distributed detects the cluster); each process reads
its own disjoint shard of the data.

Exit codes (:mod:`yume_jax.core.cli`): 0 finished; 2 one line for a bad config, path, unwritable or full
workdir, a workdir in use by another run, a dataset that does not decode, no checkpoint that restores,
non-finite loss (``--optim.nonfinite=stop``); 130 / 143 stopped by SIGINT / SIGTERM after saving a
checkpoint (run the same command to resume). ``--debug`` prints tracebacks.

The loop: :mod:`yume_jax.train.trainer`; the task it runs: :mod:`yume_jax.train.tasks.flow`.
"""
from __future__ import annotations

import argparse
import sys

from configs import train as tc
from yume_jax.core import cli


def make_trainer(cfg: tc.TrainConfig):
    """The library trainer running the flow/MVDT task of ``cfg`` (call after :func:`init_jax`)."""
    from yume_jax.train.trainer import Trainer
    return Trainer(tc.trainer_config(cfg), tc.make_task(cfg), config=cfg.to_dict())


def init_jax(cfg: tc.TrainConfig) -> None:
    from yume_jax.train.trainer import init_jax as init
    init(cfg.dist, cfg.compile_cache)


def _main(argv) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.train", description=__doc__.split("\n\n")[0],
                                 epilog="any other --key=value overrides a config field (see configs/train.py); "
                                        "--debug: tracebacks")
    ap.add_argument("--config", help="named config (--list) or a saved config.json")
    ap.add_argument("--list", action="store_true", help="list the named configs and exit")
    args, rest = ap.parse_known_args(argv)
    if args.list:
        for name, make in tc.PRESETS.items():
            print(f"{name:16s} {(make.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if not args.config:
        ap.error("--config NAME is required (see --list)")
    cfg = tc.resolve(args.config, rest)
    init_jax(cfg)
    trainer = make_trainer(cfg)
    trainer.fit()
    if trainer.interrupted is not None:
        return cli.interrupted_code(trainer.interrupted)
    return 0


def main(argv=None) -> int:
    return cli.run(_main, argv, prog="python -m train.train")


if __name__ == "__main__":
    sys.exit(main())
