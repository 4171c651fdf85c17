"""Our checkpoint format and the one function that fills a model from a checkpoint.

A converted (JAX) checkpoint is a directory::

    DST/yume_jax.json        {"format": 1, "family": ..., "config": {...}, "source_naming": ..., "extras": [...]}
    DST/params.safetensors   flat JAX names ("blocks.3.self_attn.q.kernel"), dtypes kept from the source

Directories are written into ``DST.partial-<pid>-<token>`` and renamed into place only when complete, so a
failed or interrupted write never leaves a DST that looks valid (:func:`atomic_dir`); the next writer removes
the leftovers of killed ones. ``--force`` replaces only a previous output of the same tool
(:func:`check_replaceable`).

:func:`fill` is how every family (DiT, VAE, encoders, the trainer) gets its parameters: one policy for
names the model has and the checkpoint lacks (an error, unless ``create`` makes them: the Yume extras
when a run starts from Wan, spec/yume.md "History embeddings"), for names the checkpoint has and the
model lacks (an error, except the ``extras`` the metadata lists: read when the model has them, else
left alone), for stacked layers present only in
part (an error), for shapes (must match) and dtypes (cast to the model's, or ``dtype``).
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from yume_jax.core import params as P
from yume_jax.core.tensors import JAX_META, JAX_PARAMS, WRITTEN_BY, ArraySource, CheckpointError, SafetensorsFiles, \
    SafetensorsWriter, TensorSource, open_source

FORMAT_VERSION = 1


def make_meta(family: str, config: dict, *, source_naming: str | None = None, extras: Sequence[str] = ()) -> dict:
    """The content of ``yume_jax.json``."""
    return {"format": FORMAT_VERSION, "family": family, "config": config, "source_naming": source_naming,
            "extras": list(extras)}


def open_checkpoint(path: str | os.PathLike, family: str) -> TensorSource:
    """One of our converted checkpoints holding a ``family`` model (its metadata in ``.meta``)."""
    src = open_source(path)
    if src.meta is None:
        raise CheckpointError(f"not a yume_jax checkpoint (no {JAX_META}); convert it first with "
                              f"python -m yume_jax.convert SRC DST", file=path)
    if src.meta.get("family") != family:
        raise CheckpointError(f"checkpoint holds a {src.meta.get('family')!r} model, not {family!r}", file=path)
    return src


_LEFTOVER = re.compile(r"\.(partial|old)-(\d+)(?:-[0-9a-f]+)?$")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a pid we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove ``PATH.partial-<pid>[-<token>]`` / ``PATH.old-<pid>[-<token>]`` siblings left by killed writers
    (SIGKILL, power loss) whose process is gone; those of live processes (a concurrent writer) are kept.
    Returns what was removed."""
    path = Path(path)
    removed = []
    try:
        siblings = list(path.parent.glob(glob.escape(path.name) + ".*-*"))
    except OSError:
        return removed
    for p in siblings:
        m = _LEFTOVER.fullmatch(p.name[len(path.name):])
        if m is None or pid_alive(int(m.group(2))) or p.is_symlink() or not p.is_dir():
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _unique(path: Path, kind: str) -> Path:
    return path.with_name(f"{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Write a directory completely or not at all: yields ``PATH.partial-<pid>-<token>`` to fill; on success
    any previous ``path`` is moved aside (one rename), the temporary directory renamed into place and the old
    one removed; on any exception (or interrupt turned into one, see :func:`yume_jax.core.cli.signals_raise`)
    the temporary directory is removed and ``path`` is left as it was. Leftovers of killed writers are
    cleaned first (:func:`clean_leftovers`). Concurrent writers each build their own temporary directory;
    ``path`` is always one writer's complete result (or absent for an instant between the renames)."""
    path = Path(path)
    clean_leftovers(path)
    tmp = _unique(path, "partial")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        publish_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def publish_dir(tmp: Path, path: Path) -> None:
    """Rename the complete directory ``tmp`` to ``path``, replacing a previous ``path`` (moved aside first,
    then removed: never deleted in place while another reader or writer may see it)."""
    old = None
    if path.is_symlink() or path.exists():
        old = _unique(path, "old")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.replace(old, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() and not old.is_symlink() else old.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file completely or not at all (temporary name in the same folder, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def is_checkpoint_output(path: Path) -> bool:
    """Whether directory ``path`` is one of our converted checkpoints (a ``yume_jax.json`` of this format) or
    a PyTorch export of the converter (a safetensors file whose metadata says ``written_by``)."""
    meta = path / JAX_META
    if meta.is_file():
        try:
            m = json.loads(meta.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(m, dict) and "family" in m and m.get("format") == FORMAT_VERSION
    for f in path.glob("*.safetensors"):
        try:
            if SafetensorsFiles([f]).metadata.get("written_by") == WRITTEN_BY:
                return True
        except (OSError, CheckpointError):
            continue
    return False


def check_replaceable(out: str | os.PathLike, inputs: Sequence[str | os.PathLike], is_output: Callable[[Path], bool],
                      what: str) -> None:
    """The one rule of ``--force`` (``python -m yume_jax.convert``, ``--pipeline``): replace ``out`` only if it
    is a directory (not a link, a file or a device) that ``is_output`` recognises as a previous output of the
    same tool (``what`` names it in the error), and never an input or a folder holding one."""
    out = Path(out)
    if out.is_symlink() or not out.is_dir():
        raise CheckpointError(f"refusing --force: not a directory (only a previous {what} is replaced)", file=out)
    dst = out.resolve()
    for i in inputs:
        src = Path(i).resolve()
        if dst == src or dst in src.parents:
            raise CheckpointError(f"refusing --force: the destination is the input {i} or holds it", file=out)
    if not is_output(out):
        raise CheckpointError(f"refusing --force: not a previous {what}", file=out)


CHECKSUMS = "SHA256SUMS"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(root: str | os.PathLike) -> Path:
    """``root/SHA256SUMS``: one ``<sha256>  <relative path>`` line per file under ``root`` (``sha256sum -c``
    format; links resolved), sorted; what a shipped directory is verified against (:func:`verify_checksums`)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    text = "".join(f"{sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in files)
    return atomic_write_text(root / CHECKSUMS, text)


def verify_checksums(root: str | os.PathLike) -> int:
    """Check every file ``root/SHA256SUMS`` lists (and that no listed file is missing); the number checked.
    CheckpointError naming the first file that differs or is missing, or a malformed line."""
    root = Path(root)
    sums = root / CHECKSUMS
    n = 0
    for i, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not line.strip():
            continue
        if not sep or len(digest) != 64 or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"line {i} is not '<sha256>  <relative path>'", file=sums)
        f = root / name
        if not f.is_file():
            raise CheckpointError(f"{name} is listed but missing", file=sums)
        if sha256(f) != digest:
            raise CheckpointError(f"{name} does not match its checksum (modified or corrupt)", file=sums)
        n += 1
    return n


def write_checkpoint(path: str | os.PathLike, family: str, config: dict, tensors: dict[str, np.ndarray],
                     *, source_naming: str | None = None, extras: Sequence[str] = ()) -> Path:
    """Write flat JAX-named arrays as one of our checkpoints (``yume_jax.json`` + ``params.safetensors``),
    atomically (temporary directory renamed into place)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        w = SafetensorsWriter(tmp / JAX_PARAMS, [(k, np.asarray(v).dtype, np.asarray(v).shape) for k, v in tensors.items()])
        for k, v in tensors.items():
            w.write(k, np.asarray(v))
        w.close()
        meta = make_meta(family, config, source_naming=source_naming, extras=extras)
        (tmp / JAX_META).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return path


def save_module(path: str | os.PathLike, family: str, config: dict, module) -> Path:
    """Save an NNX module (stacked ``blocks.`` layers written per layer) as one of our checkpoints."""
    from flax import nnx

    flat = {k: np.asarray(jax.device_get(v)) for k, v in P.flatten(nnx.state(module)).items()}
    return write_checkpoint(path, family, config, P.to_checkpoint(flat))


def place_with(shardings: Mapping[str, jax.sharding.Sharding]) -> Callable[[str, np.ndarray], jax.Array]:
    """A ``place`` for :func:`fill`: each parameter as a global array in its sharding (each process puts only
    the slices its devices hold, so this works on many hosts)."""
    def place(name: str, arr: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(arr.shape, shardings[name], lambda idx: arr[idx])

    return place


def fill(abstract, source: TensorSource | Mapping[str, np.ndarray], *, dtype=None,
         create: Callable[[str, object], object] | None = None,
         place: Callable[[str, np.ndarray], jax.Array] | None = None, file=None):
    """``abstract`` (an NNX module, an NNX state or a nested dict of arrays / ShapeDtypeStructs) with every
    parameter read from ``source`` (a :class:`TensorSource`, e.g. from :func:`open_checkpoint`, or a dict
    of arrays named like the checkpoint).

    Names are the flat parameter names; stacked ``blocks.`` parameters are read per layer
    (``blocks.0.x`` ... ``blocks.{L-1}.x``). Arrays are cast to ``dtype`` (default: the abstract leaf's)
    and put on device by ``place(name, array)`` (default ``jnp.asarray``; see :func:`place_with`).

    A parameter the source lacks is made by ``create(name, abstract_leaf)`` when that returns something
    (a NumPy array is cast and placed, a JAX array kept as is), else it is a "missing key" error. A
    parameter of which only some layers are present, a shape mismatch, and a source tensor the model
    does not use (other than the ``extras`` the source's metadata lists: tensors a converter kept that
    some configurations use, e.g. the Yume history embeddings, the CLIP text tower) are errors too.
    """
    from flax import nnx

    if isinstance(source, TensorSource):
        src = source
    else:
        src = ArraySource(source, path=file)
    where = src.path if file is None else file
    extras = set((src.meta or {}).get("extras", []))
    have = set(src.keys())
    used: set[str] = set()
    put = place or (lambda name, arr: jnp.asarray(arr))

    def get(name, leaf):
        names = P.unstacked_names(name, leaf.shape[0]) if P.is_stacked(name) else [name]
        present = [n in have for n in names]
        dt = np.dtype(jnp.dtype(dtype if dtype is not None else leaf.dtype))
        if not all(present):
            if any(present):
                raise CheckpointError("checkpoint holds only some layers of this parameter", file=where, key=name)
            made = create(name, leaf) if create is not None else None
            if made is None:
                raise CheckpointError("missing key", file=where, key=names[0])
            if isinstance(made, jax.Array):
                return made
            made = np.asarray(made)
            if tuple(made.shape) != tuple(leaf.shape):
                raise CheckpointError(f"created shape {list(made.shape)}, model expects {list(leaf.shape)}", key=name)
            return put(name, made.astype(dt, copy=False))
        used.update(names)
        for n in names:
            got = tuple(src.info(n).shape)
            want = tuple(leaf.shape[1:]) if P.is_stacked(name) else tuple(leaf.shape)
            if got != want:
                raise CheckpointError(f"shape {list(got)}, model expects {list(want)}", file=where, key=n)
        if P.is_stacked(name):
            arr = np.empty(leaf.shape, dt)
            for i, n in enumerate(names):
                arr[i] = src.read(n).astype(dt, copy=False)
        else:
            arr = src.read(name).astype(dt, copy=False)
        return put(name, arr)

    if isinstance(abstract, nnx.Module):
        graphdef, state = nnx.split(abstract)
        out = nnx.merge(graphdef, P.map_named(state, get))
    else:
        out = P.map_named(abstract, get)
    unknown = sorted(have - used - extras)
    if unknown:
        raise CheckpointError(f"unexpected key (not part of the model; {len(unknown)} in all)", file=where,
                              key=unknown[0])
    return out


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive advisory lock (``.NAME.lock`` beside ``path``) while a run writes ``path``: a second
    run into the same output fails at once with a one-line error instead of interleaving its files with the
    first one's. The lock dies with the process (kill -9 included); the small lock file stays."""
    import fcntl

    from yume_jax.core.cli import UserError

    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{path}: another run is writing this output (lock {lock} is held); "
                            "wait for it or choose another output") from None
        yield lock
    finally:
        os.close(fd)
