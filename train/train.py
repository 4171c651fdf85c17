"""Sharded Yume / Wan DiT trainer: ``python -m train.train --config NAME [--key=value ...]``.

    python -m train.train --config tiny-sandbox                      # CPU: renders sandbox clips, trains
    python -m train.train --config tiny-sandbox --optim.lr=1e-3 --mesh.fsdp=2 --workdir=/tmp/run
    python -m train.train --config yume14b-540p --model.init=ckpt/yume --data.path=/data/sekai
    python -m train.train --list                                     # named configs

Named configs and every key: :mod:`configs.train`. The resolved config is written to
``<workdir>/config.json``; checkpoints go to ``<workdir>/checkpoints`` (Orbax, async), metrics to
``<workdir>/metrics.jsonl`` and TensorBoard event files to ``<workdir>/tb`` (tensorboardX). Running
the same command again resumes from the last complete checkpoint (params, optimizer state, step, RNG,
data-iterator position), also onto a different mesh (``--mesh.*``); SIGTERM/SIGINT save a checkpoint
and stop. Multi-host: ``--dist.coordinator=host:port --dist.num_processes=N --dist.process_id=i`` on
every process (or ``--dist.auto=true`` where jax.distributed detects the cluster); each process reads
its own disjoint shard of the data.

Objective: :mod:`yume_jax.train.objective`; state/optimizer: :mod:`yume_jax.train.state`; step:
:mod:`yume_jax.train.step`; checkpoints: :mod:`yume_jax.train.checkpoint`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from configs import train as tc


def init_jax(cfg: tc.TrainConfig) -> None:
    """jax.distributed (before any device is touched) and the persistent compilation cache."""
    import jax
    if cfg.compile_cache:
        jax.config.update("jax_compilation_cache_dir", str(Path(cfg.compile_cache).absolute()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    init_distributed(cfg.dist)


def init_distributed(d: tc.DistConfig) -> None:
    import jax
    if d.auto:
        jax.distributed.initialize()
    elif d.coordinator is not None:
        jax.distributed.initialize(d.coordinator, d.num_processes, d.process_id)


def _data_shard(mesh, micro: int) -> tuple[int, int, int]:
    """(shard_index, shard_count, rows) of the micro-batch this process holds, from the batch sharding."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from yume_jax import sharding
    spec = sharding.spec(("batch",), (micro,), mesh)
    idx = NamedSharding(mesh, P(*spec)).devices_indices_map((micro,))
    mine = sorted({idx[d][0].indices(micro)[:2] for d in mesh.devices.flat
                   if d.process_index == jax.process_index()})
    for (_, b0), (a1, _) in zip(mine, mine[1:]):
        if b0 != a1:
            raise tc.ConfigError(f"the mesh puts non-contiguous batch rows {mine} on process {jax.process_index()}")
    lo, hi = mine[0][0], mine[-1][1]
    rows = hi - lo
    if micro % rows or lo % rows:
        raise tc.ConfigError(f"process {jax.process_index()} holds batch rows [{lo}, {hi}) of {micro}: "
                             "not an even split")
    return lo // rows, micro // rows, rows


class Trainer:
    """One training run: set up from a resolved config (everything is checked before any compile), then
    :meth:`fit`."""

    def __init__(self, cfg: tc.TrainConfig):
        import jax

        from yume_jax import sharding
        from yume_jax.train import checkpoint as ck
        from yume_jax.train import data as data_lib
        from yume_jax.train import state as state_lib

        self.cfg = cfg
        self.dit = cfg.dit_config()
        self.raw = cfg.raw_config()
        self.is_main = jax.process_index() == 0
        self.nproc = jax.process_count()
        mesh_shape = tc.check_devices(cfg, jax.device_count(), self.nproc)
        self.mesh = sharding.make_mesh(mesh_shape)
        self.accum = cfg.optim.grad_accum
        self.micro = cfg.batch_size // self.accum
        self.shard_index, self.shard_count, rows = _data_shard(self.mesh, self.micro)
        self.local_batch = rows * self.accum
        self.run_dir = cfg.run_dir.absolute()
        if cfg.data.source == "synthetic":
            h = cfg.data.synthetic_history
            if cfg.data.history_latents and h not in cfg.data.history_latents:
                raise tc.ConfigError(f"--data.synthetic_history={h} is not one of --data.history_latents")

        # data (sandbox clips are rendered by process 0 if asked to); shapes checked before any compile
        path = Path(cfg.data.path).absolute() if cfg.data.path else self.run_dir / "world"
        try:
            if cfg.data.source == "sandbox":
                if self.is_main:
                    data_lib.ensure_world(path, cfg)
                self._barrier("world")
            self.shapes = data_lib.describe(cfg, self.dit, path)
            self.dataset = data_lib.dataset(cfg, self.dit, self.local_batch, self.shard_index, self.shard_count, path)
        except (ValueError, OSError) as e:  # no clips, wrong dataset, shapes that do not fit the model
            raise tc.ConfigError(f"--data: {e}") from None
        self.chunk, self.latent_hw = self.shapes.chunk, self.shapes.latent_hw

        # optimizer, abstract state, shardings (no compile yet)
        self.optimizer, self.schedule = state_lib.make_optimizer(cfg.optim, cfg.steps)
        self.graphdef, self.abstract = state_lib.abstract_state(self.dit, self.optimizer, cfg.optim.ema_decay > 0)
        self.state_sh = state_lib.state_shardings(self.abstract, self.mesh)
        self.ckpt = ck.Checkpointer(self.run_dir / "checkpoints", max_to_keep=cfg.checkpoint.max_to_keep,
                                    async_save=cfg.checkpoint.async_save)
        if self.is_main:
            self._write_config()
        self.compiled: dict = {}
        self.stop_requested = False

    # -- helpers ------------------------------------------------------------------------------------
    def _barrier(self, name: str):
        if self.nproc > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(name)

    def _write_config(self):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.json"
        text = self.cfg.to_json()
        if path.exists() and path.read_text() != text:
            old = json.loads(path.read_text())
            changed = sorted(_diff(old, self.cfg.to_dict()))
            print(f"note: config differs from the saved {path} in {', '.join(changed)}; saving the new one",
                  file=sys.stderr)
        tmp = path.with_name(f".config.json.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)

    def _agree_min(self, value: int) -> int:
        if self.nproc == 1:
            return value
        from jax.experimental import multihost_utils
        return int(np.min(multihost_utils.process_allgather(np.int32(value))))

    def _agree_any(self, flag: bool) -> bool:
        if self.nproc == 1:
            return flag
        from jax.experimental import multihost_utils
        return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))

    def init_state(self):
        """Restore the latest complete checkpoint, or initialise (random or from --model.init)."""
        from yume_jax.train import state as state_lib
        cfg = self.cfg
        self.iterator = iter(self.dataset)
        latest = self.ckpt.latest_step()
        if latest is not None:
            target = state_lib.with_shardings(self.abstract, self.state_sh)
            self.state = self.ckpt.restore(latest, target, self.iterator)
            self.start = int(latest)
            self.log(f"resumed from {self.run_dir / 'checkpoints' / str(latest)}")
            return
        psh = self.state_sh["params"]
        if cfg.model.init:
            params, created = state_lib.checkpoint_params(cfg.model.init, self.dit, cfg.model.seed, psh)
            self.log(f"initialised from {cfg.model.init}" + (f"; new: {', '.join(created)}" if created else ""))
        else:
            params = state_lib.random_params(self.dit, cfg.model.seed, psh)
        self.state = state_lib.init_state(params, self.optimizer, cfg.seed, self.state_sh, cfg.optim.ema_decay > 0)
        self.start = 0

    def log(self, msg: str):
        if self.is_main:
            from tqdm import tqdm
            tqdm.write(msg, file=sys.stderr)

    def to_global(self, batch: dict) -> dict:
        import jax

        from yume_jax.train import step as step_lib
        out = {}
        keys = [k for k in ("latents", "text", "image") if k in batch]
        shapes = {k: (self.accum, self.micro, *np.shape(batch[k])[1:]) for k in keys}
        sh = step_lib.batch_shardings(shapes, self.mesh)
        for k in keys:
            x = np.asarray(batch[k], np.float32)
            x = x.reshape(self.accum, x.shape[0] // self.accum, *x.shape[1:])
            out[k] = jax.make_array_from_process_local_data(sh[k], x, shapes[k])
        return out, sh

    def step_fn(self, chunk: int, keep: int | None, batch_sh: dict, shapes: tuple):
        from yume_jax.train import step as step_lib
        key = (chunk, keep, shapes)
        if key not in self.compiled:
            self.compiled[key] = step_lib.make_train_step(
                self.graphdef, objective_cfg=self.cfg.objective, runtime=self.cfg.runtime_obj(),
                optimizer=self.optimizer, schedule=self.schedule, mesh=self.mesh, state_sh=self.state_sh,
                batch_sh=batch_sh, ema_decay=self.cfg.optim.ema_decay, chunk=chunk, keep=keep)
        return self.compiled[key]

    def prepare(self, batch: dict, step: int):
        """History bucketing (identical on all processes) and the static MVDT kept-token count."""
        from yume_jax.train import data as data_lib
        from yume_jax.train import objective
        nh = int(batch["num_history"][0])
        keep_h = self._agree_min(data_lib.history_bucket(nh, self.cfg.data.history_latents))
        if keep_h != nh:
            batch = data_lib.trim_history(batch, keep_h)
        f = batch["latents"].shape[2]
        tokens = objective.num_tokens(f, *self.latent_hw, self.chunk)
        keep = None
        if self.cfg.objective.mvdt:
            ob = self.cfg.objective
            keep = objective.keep_for_step(self.cfg.seed, step, tokens, ob.mask_low, ob.mask_width, ob.mask_buckets)
        return batch, f, tokens, keep

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self):
        import jax
        from tqdm import tqdm

        from yume_jax.train import metrics as mt
        cfg = self.cfg
        self.init_state()
        if self.start >= cfg.steps:
            self.log(f"nothing to do: checkpoint step {self.start} >= --steps={cfg.steps}")
            self.ckpt.close()
            return self.state
        sinks = mt.Sinks(self.run_dir, self.is_main, cfg.tensorboard)
        samples_log = None
        if cfg.data.log_samples:
            samples_log = open(self.run_dir / f"samples.p{jax.process_index()}.jsonl", "a")
        peak = cfg.peak_tflops or mt.peak_tflops(jax.devices()[0].device_kind)
        n_dev = jax.device_count()
        text_len, image_tokens = self.shapes.text_len, self.shapes.image_tokens
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        bar = tqdm(total=cfg.steps, initial=self.start, disable=not (self.is_main and cfg.progress), unit="step",
                   dynamic_ncols=True, file=sys.stderr)
        pending = []
        t0, n_samples, n_tokens, n_flops, compiles0 = time.perf_counter(), 0, 0, 0.0, len(self.compiled)
        step = self.start
        try:
            while step < cfg.steps:
                batch, f, tokens, keep = self.prepare(next(self.iterator), step)
                gb, bsh = self.to_global(batch)
                fn = self.step_fn(self.chunk, keep, bsh, tuple(tuple(v.shape) for v in gb.values()))
                self.state, m = fn(self.state, gb)
                step += 1
                if samples_log is not None:
                    ids = {k: np.asarray(batch[k]).tolist() for k in ("clip", "start", "item") if k in batch}
                    samples_log.write(json.dumps({"step": step, **ids}) + "\n")
                fw = mt.forward_flops(self.dit, f, *self.latent_hw, self.chunk, text_len, image_tokens, keep)
                n_samples += cfg.batch_size
                n_tokens += cfg.batch_size * tokens
                n_flops += cfg.batch_size * mt.train_flops(fw)
                pending.append((step, m))
                last = step == cfg.steps
                if step % cfg.log_every == 0 or last:
                    vals = jax.device_get([mm for _, mm in pending])
                    dt = time.perf_counter() - t0
                    steady = len(self.compiled) == compiles0 and dt > 0
                    rate = {"samples_per_s": n_samples / dt if steady else None,
                            "tokens_per_s": n_tokens / dt if steady else None,
                            "mfu": (n_flops / dt / (n_dev * peak * 1e12)) if (steady and peak) else None,
                            "step_s": dt / len(pending)}
                    for (s, _), v in zip(pending, vals):
                        sinks.write(s, {k: float(x) for k, x in v.items()} | (rate if s == step else {}))
                    sinks.flush()
                    lv = vals[-1]
                    post = {"loss": f"{float(lv['loss']):.4f}", "gn": f"{float(lv['grad_norm']):.3f}",
                            "lr": f"{float(lv['lr']):.2e}"}
                    if rate["samples_per_s"] is not None:
                        post["sps"] = f"{rate['samples_per_s']:.2f}"
                        if rate["mfu"] is not None:
                            post["mfu"] = f"{100 * rate['mfu']:.1f}%"
                    bar.set_postfix(post, refresh=False)
                    bar.update(step - bar.n)
                    if not cfg.progress:
                        self.log(f"step {step}: " + " ".join(f"{k}={v}" for k, v in post.items()))
                    pending, n_samples, n_tokens, n_flops = [], 0, 0, 0.0
                    t0, compiles0 = time.perf_counter(), len(self.compiled)
                stop = self._agree_any(self.stop_requested) if (self.nproc == 1 or step % cfg.log_every == 0
                                                                 or last) else False
                if step % cfg.checkpoint.every == 0 or last or stop:
                    self.ckpt.save(step, self.state, self.iterator)
                if stop and not last:
                    self.log(f"stopped by signal at step {step}; checkpoint saved; run the same command to resume")
                    break
            if pending:
                jax.device_get([mm for _, mm in pending])
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            bar.close()
            self.ckpt.close()
            sinks.close()
            if samples_log is not None:
                samples_log.close()
        self.log(f"done: step {step}, {len(self.compiled)} compiled step variants, run dir {self.run_dir}")
        return self.state

    def _on_signal(self, signum, frame):
        self.stop_requested = True


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
    elif a != b:
        yield prefix


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.train", description=__doc__.split("\n\n")[0],
                                 epilog="any other --key=value overrides a config field (see configs/train.py)")
    ap.add_argument("--config", help="named config (--list) or a saved config.json")
    ap.add_argument("--list", action="store_true", help="list the named configs and exit")
    args, rest = ap.parse_known_args(argv)
    if args.list:
        for name, make in tc.PRESETS.items():
            print(f"{name:16s} {(make.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if not args.config:
        ap.error("--config NAME is required (see --list)")
    try:
        cfg = tc.resolve(args.config, rest)
        init_jax(cfg)
        trainer = Trainer(cfg)
    except tc.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    trainer.fit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
