"""Orbax checkpoints of a training run: the state pytree (params, optimizer state, step, RNG, EMA) and
the Grain data-iterator state of every process, saved asynchronously, at most ``max_to_keep`` kept.

Layout: ``<dir>/<step>/state`` (Orbax PyTree, arrays written shard by shard by their owners) and
``<dir>/<step>/data/process_<i>-of-<n>.json`` (Grain's handler, written synchronously at save time so
it matches the step). A save goes to ``<step>.orbax-checkpoint-tmp`` and is renamed when every
process has finished (Orbax's atomic finalisation, marked by ``commit_success.txt`` where the file
system needs it): a run killed at any moment leaves either a complete step directory or a temporary
one that :meth:`Checkpointer.latest_step` ignores and the next manager removes.

A step that does not restore (corrupt or truncated files) is reported by :meth:`Checkpointer.restore_latest`,
which falls back to the newest step that does and moves the newer broken ones out of the manager's
directory to ``<dir>.corrupt/<step>`` (kept for inspection, never deleted), so later saves of those
steps are possible and a broken step can never be the "latest" again.

Restore takes ShapeDtypeStructs with shardings, so a checkpoint saved on one mesh restores onto any
other mesh shape (Orbax reads each new shard's slice).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grain.checkpoint as grain_ckpt
import jax
import numpy as np
import orbax.checkpoint as ocp

from yume_jax.core.cli import UserError


class Checkpointer:
    def __init__(self, directory, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                            cleanup_tmp_directories=True, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=opts,
                                             item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_iterator=None) -> bool:
        """Start saving (returns once the data state is written and the arrays are copied to host)."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain_ckpt.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state, data_iterator=None):
        """State onto the shardings carried by ``abstract_state`` (ShapeDtypeStructs); the data iterator
        (if given) is set to its saved position in place."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            if not (self.directory / str(step) / "data").is_dir():
                raise ValueError(f"checkpoint {self.directory / str(step)} has no data-iterator state")
            items["data"] = grain_ckpt.CheckpointRestore(data_iterator)
        out = self.manager.restore(step, args=ocp.args.Composite(**items))
        return out["state"]

    def restore_latest(self, abstract_state, data_iterator_factory=None, log=print, move_broken: bool = True):
        """(step, state, data iterator) of the newest step that restores, or (None, None, None) when there is
        no complete step. Each broken newer step is reported in one line (``log``) and, once an older step
        restored, moved to ``<dir>.corrupt/``. ``data_iterator_factory()`` gives a fresh iterator for each
        attempt. RestoreError (naming every step and why) when steps exist but none restores."""
        failed = []
        for step in sorted(self.all_steps(), reverse=True):
            it = data_iterator_factory() if data_iterator_factory is not None else None
            try:
                state = self.restore(step, abstract_state, it)
            except Exception as e:  # noqa: BLE001 - whatever a broken checkpoint raises (Orbax, TensorStore, JSON)
                why = _one_line(e)
                log(f"checkpoint {self.directory / str(step)} does not restore ({why}); trying the previous one")
                failed.append((step, why))
                continue
            if failed and move_broken:
                for s, _ in failed:
                    dest = self.move_aside(s)
                    log(f"moved the broken checkpoint {self.directory / str(s)} to {dest}")
                self.manager.reload()
            return step, state, it
        if failed:
            raise RestoreError(f"no checkpoint in {self.directory} restores ("
                               + "; ".join(f"step {s}: {w}" for s, w in failed)
                               + f"); move {self.directory} away to start from scratch")
        return None, None, None

    def move_aside(self, step: int) -> Path:
        """Move step ``step`` to ``<dir>.corrupt/<step>-<time>`` (nothing is deleted)."""
        dest_dir = self.directory.with_name(self.directory.name + ".corrupt")
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(self.directory / str(step)), str(dest))
        return dest

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


class RestoreError(UserError):
    """Checkpoints exist but none restores."""


def _one_line(e: BaseException, limit: int = 240) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    msg = f"{type(e).__name__}: {msg}" if type(e).__name__ not in msg else msg
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


class FrozenIterator:
    """A data-iterator state captured earlier, saved in its place (Grain's handler calls ``get_state``):
    for a save after the live iterator moved past (or was interrupted inside) the batch of that step."""

    def __init__(self, state):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state, indent=4).encode()


def read_state(directory, step: int | None = None) -> tuple[int, dict]:
    """(step, saved state as NumPy arrays) of a complete step (default the latest); single host, any
    device count (for tools and tests)."""
    directory = Path(directory).absolute()
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []
    if step is None:
        if not steps:
            raise FileNotFoundError(f"no complete checkpoint in {directory}")
        step = steps[-1]
    path = directory / str(step) / "state"
    ck = ocp.PyTreeCheckpointer()
    tree = ck.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return step, ck.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def tmp_dirs(directory) -> list[str]:
    """Unfinished saves in ``directory`` (what a kill during a save leaves behind)."""
    d = Path(directory)
    return sorted(p.name for p in d.iterdir() if "orbax-checkpoint-tmp" in p.name) if d.is_dir() else []


