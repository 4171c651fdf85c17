"""What a training task gives the trainer (:class:`yume_jax.train.trainer.Trainer`).

The trainer owns the run: mesh, data sharding per process, Orbax checkpoints (with the Grain iterator
state), resume, signals, progress bar, metric sinks, MFU, and the cache of compiled step variants.
A task owns the learning problem: its named models and their optimizers (the state pytree, see
:mod:`yume_jax.train.state`), the shardings of that state, its dataset, the host-side preparation of
each batch (which picks the static variant of the step), the jitted step (built from the helpers of
:mod:`yume_jax.train.step`) and the FLOPs of a step.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Hashable, Protocol

import grain


@dataclasses.dataclass(frozen=True)
class Env:
    """Where the task runs, as the trainer set it up."""

    mesh: Any
    run_dir: Path
    process_index: int
    process_count: int
    local_batch: int  # samples of one optimizer step that this process loads
    shard_index: int  # this process's data shard
    shard_count: int
    barrier: Callable[[str], None]  # all processes wait here (no-op on one process)
    agree_min: Callable[[int], int]  # the minimum of a host integer over the processes
    log: Callable[[str], None]  # a line on process 0's console

    @property
    def is_main(self) -> bool:
        return self.process_index == 0


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One host batch ready for the step."""

    batch: dict  # host arrays; the task's ``device_keys`` go to the devices
    key: Hashable  # the static variant of the step (compiled once per key)
    flops: float = 0.0  # model FLOPs of this optimizer step over the global batch (0: unknown, no MFU)
    tokens: int = 0  # tokens of this step over the global batch
    ids: dict = dataclasses.field(default_factory=dict)  # sample ids written with log_samples


class Task(Protocol):
    device_keys: tuple[str, ...]  # batch entries the step takes (others stay on the host)

    def setup(self, env: Env) -> grain.IterDataset:
        """Check everything that needs no compile and return this process's dataset (batches of
        ``env.local_batch`` samples). Raise ValueError for a configuration that cannot run."""

    def abstract_state(self) -> Any:
        """The state pytree as ShapeDtypeStructs (no allocation)."""

    def state_shardings(self, mesh) -> Any:
        """Shardings of the state on ``mesh`` (also the restore target on another mesh)."""

    def init_state(self, shardings) -> Any:
        """A fresh state (random, or from pretrained weights) in ``shardings``."""

    def prepare(self, batch: dict, step: int) -> Prepared:
        """Host-side work on one batch before optimizer step ``step`` (0-based); identical choices on
        every process."""

    def make_step(self, key: Hashable, mesh, state_sh, batch_sh) -> Callable:
        """jit(state, batch) -> (state, metrics dict of scalars) for the static variant ``key``."""
