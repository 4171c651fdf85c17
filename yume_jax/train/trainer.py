"""The training loop, for any :class:`yume_jax.train.task.Task`: mesh and per-process data sharding,
Orbax checkpoints with the Grain iterator state of every process (:mod:`yume_jax.train.checkpoint`),
resume from the last complete checkpoint (also onto another mesh), SIGTERM/SIGINT = save and stop,
progress bar, metrics.jsonl / TensorBoard (:mod:`yume_jax.train.metrics`), throughput and MFU, and a
cache of compiled step variants keyed by the task's static key.

Layout of ``run_dir``: ``config.json`` (the resolved config, if given), ``checkpoints/<step>``,
``metrics.jsonl``, ``tb/`` and ``samples.p<i>.jsonl`` (sample ids, with ``log_samples``), ``.lock``.

Guarantees (issue 13):

- One run per ``run_dir`` (an ``flock`` on ``run_dir/.lock``; a second run is refused with one line).
- Resume restores the newest checkpoint that restores; broken newer ones are named (one line each) and
  moved to ``checkpoints.corrupt/``; ``config.json`` is (atomically) rewritten only after that succeeded;
  metrics.jsonl / TensorBoard records past the restored step are dropped, so each step appears once.
- Non-finite ``loss`` / ``grad_norm``: the jitted step leaves the model state unchanged
  (:func:`yume_jax.train.step.guard_nonfinite`); ``nonfinite="stop"`` (default) ends the run with
  :class:`NonFiniteError` before any checkpoint is written after that step, ``"skip"`` counts the skipped
  steps (``nonfinite_steps`` in the metrics). Parameters that became non-finite are never saved.
- Data: skipped samples are counted per cause and reported (``data_skipped*`` metrics, ``skip=`` on the
  progress line); a dataset where nothing decodes or too much is skipped fails fast
  (:class:`yume_jax.data.pipeline.DataError`, naming the first problems) after saving the last good step.
- SIGINT/SIGTERM: save the current step and stop (also while waiting for data that never comes);
  :attr:`Trainer.interrupted` holds the signal, so the CLI exits 130/143.

Multi-host: call :func:`init_jax` (jax.distributed) before anything touches the devices; every process
runs the same loop and reads its own disjoint data shard; the stop flag of a signal and host-side
static choices are agreed between processes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from yume_jax import sharding
from yume_jax.core import cli
from yume_jax.data import pipeline as pl
from yume_jax.train import checkpoint as ck
from yume_jax.train import metrics as mt
from yume_jax.train import step as step_lib
from yume_jax.train.task import Env, Task


class SetupError(cli.UserError):
    """A run that cannot start (mesh, batch or data do not fit); raised before anything compiles."""


class NonFiniteError(cli.UserError):
    """Non-finite loss or gradients (``nonfinite="stop"``) or parameters: the run stopped without saving."""


NONFINITE = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    run_dir: Path
    steps: int
    batch_size: int  # global samples per optimizer step
    grad_accum: int = 1  # micro-batches per optimizer step
    mesh: dict = dataclasses.field(default_factory=lambda: {"fsdp": -1})  # axis sizes, one may be -1
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    peak_tflops: float | None = None  # per-device peak for MFU; None: from the device kind
    checkpoint_every: int = 1000
    max_to_keep: int = 3
    async_save: bool = True
    log_samples: bool = False  # write each process's sample ids per step
    nonfinite: str = "stop"  # non-finite loss/gradients: stop the run (no checkpoint) | skip the update


CACHE_MIN_SECS_ENV = "YUME_JAX_CACHE_MIN_SECS"  # init_jax: the persistent cache's minimum compile time


def init_jax(dist, compile_cache: str | None = None) -> None:
    """The persistent compilation cache and jax.distributed (before any device is touched). ``dist``:
    ``auto`` (jax.distributed detects the cluster) or ``coordinator``, ``num_processes``, ``process_id``
    (all None: one process). Programs that compile in under ``$YUME_JAX_CACHE_MIN_SECS`` seconds (default
    0.5) are not cached; 0 caches every program (tests: restarted tiny runs then compile nothing)."""
    if compile_cache:
        min_secs = float(os.environ.get(CACHE_MIN_SECS_ENV, "0.5"))
        jax.config.update("jax_compilation_cache_dir", str(Path(compile_cache).absolute()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_secs)
        if min_secs == 0:
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if dist.auto:
        jax.distributed.initialize()
    elif dist.coordinator is not None:
        jax.distributed.initialize(dist.coordinator, dist.num_processes, dist.process_id)


def resolve_mesh(mesh: dict[str, int], num_devices: int, batch_size: int, grad_accum: int = 1,
                 num_processes: int = 1) -> dict[str, int]:
    """The concrete mesh shape for ``num_devices``; ValueError for a mesh or batch that does not fit."""
    m = dict(mesh)
    known = math.prod(v for v in m.values() if v != -1)
    if -1 in m.values():
        if num_devices % known:
            raise ValueError(f"--mesh {m} does not divide the {num_devices} devices "
                             f"(the fixed axes need a multiple of {known})")
        m = {k: (num_devices // known if v == -1 else v) for k, v in m.items()}
    if math.prod(m.values()) != num_devices:
        raise ValueError(f"--mesh {m} needs {math.prod(m.values())} devices, have {num_devices}")
    dp = m.get("data", 1) * m.get("fsdp", 1)
    micro = batch_size // grad_accum
    if micro % dp:
        raise ValueError(f"--batch_size={batch_size} (micro-batch {micro} with grad_accum={grad_accum}) is not "
                         f"divisible by the data-parallel size data*fsdp = {dp}")
    if batch_size % num_processes:
        raise ValueError(f"--batch_size={batch_size} is not divisible by the {num_processes} processes")
    return m


def data_shard(mesh, micro: int) -> tuple[int, int, int]:
    """(shard_index, shard_count, rows) of the micro-batch this process holds, from the batch sharding."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    spec = sharding.spec(("batch",), (micro,), mesh)
    idx = NamedSharding(mesh, P(*spec)).devices_indices_map((micro,))
    mine = sorted({idx[d][0].indices(micro)[:2] for d in mesh.devices.flat
                   if d.process_index == jax.process_index()})
    for (_, b0), (a1, _) in zip(mine, mine[1:]):
        if b0 != a1:
            raise SetupError(f"the mesh puts non-contiguous batch rows {mine} on process {jax.process_index()}")
    lo, hi = mine[0][0], mine[-1][1]
    rows = hi - lo
    if micro % rows or lo % rows:
        raise SetupError(f"process {jax.process_index()} holds batch rows [{lo}, {hi}) of {micro}: not an even split")
    return lo // rows, micro // rows, rows


class Trainer:
    """One run of ``task``: set up (everything checked before any compile), then :meth:`fit`.
    ``config``: the resolved configuration to save as ``config.json`` (a JSON-able dict)."""

    def __init__(self, cfg: TrainerConfig, task: Task, config: dict | None = None):
        self.cfg, self.task = cfg, task
        self.is_main = jax.process_index() == 0
        self.nproc = jax.process_count()
        if cfg.nonfinite not in NONFINITE:
            raise SetupError(f"nonfinite must be one of {NONFINITE}, got {cfg.nonfinite!r}")
        try:
            mesh_shape = resolve_mesh(cfg.mesh, jax.device_count(), cfg.batch_size, cfg.grad_accum, self.nproc)
            self.mesh = sharding.make_mesh(mesh_shape)
        except ValueError as e:
            raise SetupError(str(e)) from None
        self.run_dir = Path(cfg.run_dir).absolute()
        self._lock = cli.DirLock(self.run_dir, "training run").acquire() if self.is_main else None
        try:
            self._setup(cfg, task, config)
        except BaseException:
            self.close()
            raise

    def _setup(self, cfg: TrainerConfig, task: Task, config: dict | None):
        self.accum = cfg.grad_accum
        self.micro = cfg.batch_size // self.accum
        shard_index, shard_count, rows = data_shard(self.mesh, self.micro)
        self.env = Env(mesh=self.mesh, run_dir=self.run_dir, process_index=jax.process_index(),
                       process_count=self.nproc, local_batch=rows * self.accum, shard_index=shard_index,
                       shard_count=shard_count, barrier=self._barrier, agree_min=self._agree_min, log=self.log)
        try:
            self.dataset = task.setup(self.env)
        except (ValueError, OSError) as e:
            raise SetupError(str(e)) from None
        self.abstract = task.abstract_state()
        self.state_sh = task.state_shardings(self.mesh)
        self.ckpt = ck.Checkpointer(self.run_dir / "checkpoints", max_to_keep=cfg.max_to_keep,
                                    async_save=cfg.async_save)
        self.config = config  # written by fit once the restore succeeded
        self.compiled: dict = {}
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.interrupted: int | None = None  # the signal that stopped the last fit (None: it finished)
        self.nonfinite_steps = 0
        self._in_data = False
        self._finite_fn = None

    def close(self):
        """Release the run directory (fit does this when it returns)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    # -- helpers ------------------------------------------------------------------------------------
    def _barrier(self, name: str):
        if self.nproc > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(name)

    def _write_config(self, config: dict):
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "config.json"
        text = json.dumps(config, indent=1, sort_keys=True)
        if path.exists():
            try:
                old = path.read_text()
                changed = sorted(_diff(json.loads(old), config)) if old != text else []
            except (ValueError, UnicodeDecodeError):
                changed = ["(unreadable file)"]
            if changed:
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

    def log(self, msg: str):
        if self.is_main:
            from tqdm import tqdm
            tqdm.write(msg, file=sys.stderr)

    def init_state(self):
        """Restore the newest checkpoint that restores (onto this mesh; broken newer ones are reported and
        moved aside, :meth:`Checkpointer.restore_latest`), or let the task initialise."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              self.abstract, self.state_sh)
        step, state, it = self.ckpt.restore_latest(target, lambda: iter(self.dataset), log=self.log,
                                                   move_broken=self.is_main)
        if self.nproc > 1:
            self._barrier("restore")
            self.ckpt.manager.reload()
        if step is not None:
            self.state, self.iterator, self.start = state, it, int(step)
            self.log(f"resumed from {self.run_dir / 'checkpoints' / str(step)}")
            return
        self.iterator = iter(self.dataset)
        self.state = self.task.init_state(self.state_sh)
        self.start = 0

    def state_finite(self) -> bool:
        """Whether every floating-point leaf of the state is finite (one reduction, at checkpoint time)."""
        if self._finite_fn is None:
            def all_finite(state):
                leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state)
                          if jnp.issubdtype(x.dtype, jnp.inexact)]
                return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)
            self._finite_fn = jax.jit(all_finite)
        return bool(self._finite_fn(self.state))

    def _save(self, step: int, iterator, pending: list) -> None:
        """Checkpoint ``step`` unless the state since the last report went bad: NonFiniteError instead."""
        self._check_nonfinite(pending)
        if not self.state_finite():
            raise NonFiniteError(f"the parameters became non-finite by step {step} (finite loss and gradients, "
                                 f"but an update overflowed); not saved, last checkpoint: step {self.last_saved}; "
                                 "lower --optim.lr")
        self.ckpt.save(step, self.state, iterator)
        self.last_saved = step

    def _check_nonfinite(self, pending: list, values: list | None = None) -> None:
        """Count non-finite steps among ``pending`` (their metric values, fetched if not given); with
        ``nonfinite="stop"`` raise NonFiniteError at the first one."""
        if not pending:
            return
        if values is None:
            values = jax.device_get([mm for _, mm in pending])
        for (s, _), v in zip(pending, values):
            if float(v.get("nonfinite", 0.0)) == 0.0:
                continue
            what = ", ".join(f"{k}={float(v[k])}" for k in step_lib.GUARDED if k in v)
            if self.cfg.nonfinite == "stop":
                raise NonFiniteError(f"non-finite loss or gradients at step {s} ({what}); stopped without "
                                     f"saving it, last checkpoint: step {self.last_saved} (lower --optim.lr, or "
                                     "--optim.nonfinite=skip to skip such steps)")
            if s > self._nonfinite_seen:
                self.nonfinite_steps += 1
                self._nonfinite_seen = s
                self.log(f"step {s}: non-finite {what}; update skipped ({self.nonfinite_steps} so far)")

    def to_global(self, batch: dict) -> tuple[dict, dict]:
        """The task's device keys as (A, B/A, ...) global arrays from this process's rows."""
        keys = [k for k in self.task.device_keys if k in batch]
        shapes = {k: (self.accum, self.micro, *np.shape(batch[k])[1:]) for k in keys}
        sh = step_lib.batch_shardings(shapes, self.mesh)
        out = {}
        for k in keys:
            x = np.asarray(batch[k])
            x = x.reshape(self.accum, x.shape[0] // self.accum, *x.shape[1:])
            out[k] = jax.make_array_from_process_local_data(sh[k], x, shapes[k])
        return out, sh

    def step_fn(self, key, batch_sh: dict, shapes: tuple):
        full = (key, shapes)
        if full not in self.compiled:
            self.compiled[full] = self.task.make_step(key, self.mesh, self.state_sh, batch_sh)
        return self.compiled[full]

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self):
        """Train to ``cfg.steps`` (or until a signal: then :attr:`interrupted` is set); returns the state."""
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self):
        from tqdm import tqdm
        cfg = self.cfg
        self.interrupted, self.stop_requested, self.stop_signal = None, False, None
        try:
            self.init_state()
        except BaseException:
            self.ckpt.close()
            raise
        if self.is_main and self.config is not None:
            self._write_config(self.config)
        self.last_saved = self.start
        self._nonfinite_seen = self.start
        if self.start >= cfg.steps:
            self.log(f"nothing to do: checkpoint step {self.start} >= --steps={cfg.steps}")
            self.ckpt.close()
            return self.state
        sinks = mt.Sinks(self.run_dir, self.is_main, cfg.tensorboard, start_step=self.start)
        samples_log = None
        if cfg.log_samples:
            samples_log = open(self.run_dir / f"samples.p{jax.process_index()}.jsonl", "a")
        peak = cfg.peak_tflops or mt.peak_tflops(jax.devices()[0].device_kind)
        n_dev = jax.device_count()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        bar = tqdm(total=cfg.steps, initial=self.start, disable=not (self.is_main and cfg.progress), unit="step",
                   dynamic_ncols=True, file=sys.stderr)
        pending = []
        t0, n_samples, n_tokens, n_flops, compiles0 = time.perf_counter(), 0, 0, 0.0, len(self.compiled)
        step = self.start
        try:
            while step < cfg.steps:
                snapshot = self.iterator.get_state()  # the data position of `step`, for a save mid-fetch
                try:
                    self._in_data = True
                    if self.stop_requested and self.nproc == 1:
                        raise cli.Interrupted(self.stop_signal or signal.SIGTERM)
                    raw = next(self.iterator)
                except (cli.Interrupted, pl.DataError) as e:
                    self._in_data = False
                    if step > self.last_saved:
                        self._save(step, ck.FrozenIterator(snapshot), pending)
                    pending = []
                    if isinstance(e, pl.DataError):
                        raise
                    self.interrupted = e.signum
                    self.log(f"stopped by signal at step {step}; checkpoint saved; run the same command to resume")
                    break
                finally:
                    self._in_data = False
                prep = self.task.prepare(raw, step)
                gb, bsh = self.to_global(prep.batch)
                fn = self.step_fn(prep.key, bsh, tuple((k, tuple(v.shape)) for k, v in gb.items()))
                self.state, m = fn(self.state, gb)
                step += 1
                if samples_log is not None:
                    ids = {k: np.asarray(v).tolist() for k, v in prep.ids.items()}
                    samples_log.write(json.dumps({"step": step, **ids}) + "\n")
                n_samples += cfg.batch_size
                n_tokens += prep.tokens
                n_flops += prep.flops
                pending.append((step, m))
                last = step == cfg.steps
                if step % cfg.log_every == 0 or last:
                    self._report(pending, sinks, bar, step, time.perf_counter() - t0, n_samples, n_tokens, n_flops,
                                 len(self.compiled) == compiles0, n_dev * peak * 1e12 if peak else None)
                    pending, n_samples, n_tokens, n_flops = [], 0, 0, 0.0
                    t0, compiles0 = time.perf_counter(), len(self.compiled)
                stop = self._agree_any(self.stop_requested) if (self.nproc == 1 or step % cfg.log_every == 0
                                                                 or last) else False
                if step % cfg.checkpoint_every == 0 or last or stop:
                    self._save(step, self.iterator, pending)
                if stop and not last:
                    self.interrupted = self.stop_signal or signal.SIGTERM
                    self.log(f"stopped by signal at step {step}; checkpoint saved; run the same command to resume")
                    break
            if pending:
                self._check_nonfinite(pending)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            bar.close()
            self.ckpt.close()
            sinks.close()
            if samples_log is not None:
                samples_log.close()
        if self.interrupted is None:
            self.log(f"done: step {step}, {len(self.compiled)} compiled step variants, run dir {self.run_dir}")
        return self.state

    def _report(self, pending, sinks, bar, step, dt, n_samples, n_tokens, n_flops, steady, peak_flops):
        vals = jax.device_get([mm for _, mm in pending])
        steady = steady and dt > 0
        rate = {"samples_per_s": n_samples / dt if steady else None,
                "tokens_per_s": n_tokens / dt if (steady and n_tokens) else None,
                "mfu": n_flops / dt / peak_flops if (steady and peak_flops and n_flops) else None,
                "step_s": dt / len(pending)}
        extra = dict(rate)
        skips = pl.skip_stats(self.iterator)
        if skips is not None:
            tried, per_cause = skips
            extra["data_skipped"] = sum(per_cause.values())
            extra["data_skip_fraction"] = extra["data_skipped"] / tried if tried else 0.0
            extra.update({f"data_skipped_{k}": v for k, v in sorted(per_cause.items())})
        try:
            self._check_nonfinite(pending, vals)
        finally:
            for (s, _), v in zip(pending, vals):
                sinks.write(s, {k: float(x) for k, x in v.items()}
                            | (extra | {"nonfinite_steps": self.nonfinite_steps} if s == step else {}))
            sinks.flush()
        lv = vals[-1]
        post = {short: f"{float(lv[k]):{fmt}}" for k, short, fmt in
                (("loss", "loss", ".4f"), ("grad_norm", "gn", ".3f"), ("lr", "lr", ".2e")) if k in lv}
        if extra.get("data_skipped"):
            post["skip"] = f"{extra['data_skipped']}({100 * extra['data_skip_fraction']:.0f}%)"
        if self.nonfinite_steps:
            post["nf"] = str(self.nonfinite_steps)
        if rate["samples_per_s"] is not None:
            post["sps"] = f"{rate['samples_per_s']:.2f}"
            if rate["mfu"] is not None:
                post["mfu"] = f"{100 * rate['mfu']:.1f}%"
        bar.set_postfix(post, refresh=False)
        bar.update(step - bar.n)
        if not self.cfg.progress:
            self.log(f"step {step}: " + " ".join(f"{k}={v}" for k, v in post.items()))

    def _on_signal(self, signum, frame):
        self.stop_requested = True
        self.stop_signal = self.stop_signal or signum
        if self._in_data and self.nproc == 1:  # blocked in the data pipeline (maybe for ever): leave it now
            self._in_data = False
            raise cli.Interrupted(signum)


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
    elif a != b:
        yield prefix
