"""Streaming tensor I/O for checkpoints: readers of every container, a streaming safetensors writer, the
checkpoint error.

Readers expose a checkpoint as a lazy mapping (key -> shape, dtype, read()) whatever the container:
one ``.safetensors`` file, a directory of shards with ``*.index.json``, a diffusers/transformers model
directory (``config.json`` + weights), a ``.pt``/``.pth``/``.bin`` pickle (torch needed only for
these; loaded with ``weights_only=True`` and ``mmap=True``), or one of our own converted checkpoints.
Each ``read`` materialises exactly one tensor, so converting a checkpoint never holds more than the
tensors of one conversion op in memory.

The writer streams safetensors: the header is reserved up front (space-padded JSON, which the format
allows), tensors are written in order, the real header is filled in at ``close``.
"""
from __future__ import annotations

import abc
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import ml_dtypes
import numpy as np


class CheckpointError(Exception):
    """A checkpoint problem with a one-line message that names the file and the key."""

    def __init__(self, message: str, *, file: str | os.PathLike | None = None, key: str | None = None):
        self.file, self.key = (str(file) if file is not None else None), key
        parts = [p for p in (self.file, key) if p]
        super().__init__(": ".join(parts + [message]))


ConversionError = CheckpointError  # the converter's name for it (used throughout tests and the CLI)


# safetensors dtype codes <-> numpy dtypes. Only float weights are supported for model tensors.
ST_TO_NP = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NP_TO_ST = {v: k for k, v in ST_TO_NP.items()}
FLOAT_DTYPES = ("float32", "bfloat16", "float16")
WRITTEN_BY = "yume_jax.convert"  # safetensors metadata of the converter's PyTorch exports
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit


@dataclass(frozen=True)
class TensorInfo:
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    file: str


class TensorSource(abc.ABC):
    """Lazy, read-only view of a checkpoint: ``keys()``, ``info(key)``, ``read(key)``."""

    path: Path
    hf_config: dict | None = None  # config.json beside the weights, when there is one
    meta: dict | None = None  # our own checkpoints: the yume_jax.json content

    @abc.abstractmethod
    def keys(self) -> list[str]: ...

    @abc.abstractmethod
    def info(self, key: str) -> TensorInfo: ...

    @abc.abstractmethod
    def read(self, key: str) -> np.ndarray: ...

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: self.info(k).shape for k in self.keys()}

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# safetensors


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    """The header of a safetensors file and where its data starts, validated at least as strictly as the
    ``safetensors`` library (``Metadata::validate`` / ``read_metadata``): a JSON object, every entry a known
    dtype, an integer shape and a pair of integer offsets, extents exactly ``prod(shape) * itemsize`` bytes,
    the extents (sorted by start) contiguous from 0 with no gap or overlap, and the last one ending exactly
    at the end of the file. Any violation: a one-line :class:`CheckpointError` naming the file and tensor."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError("truncated safetensors file (no header)", file=path)
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise CheckpointError(f"corrupt safetensors header (header length {n}, file has {size} bytes)",
                                  file=path)
        text = f.read(n)
    if not text.lstrip(b" ").startswith(b"{"):
        raise CheckpointError("corrupt safetensors header (does not start with '{')", file=path)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt safetensors header ({e})", file=path) from None
    if not isinstance(header, dict):
        raise CheckpointError("corrupt safetensors header (not an object)", file=path)
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise CheckpointError("corrupt safetensors header (__metadata__ must map strings to strings)", file=path)
    data_start = 8 + n
    data_len = size - data_start
    extents = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise CheckpointError("corrupt safetensors header entry (not an object)", file=path, key=key)
        dt, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dt, str) or dt not in ST_TO_NP:
            raise CheckpointError(f"unsupported dtype {dt!r}", file=path, key=key)
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise CheckpointError(f"corrupt shape {shape!r} (a list of non-negative integers)", file=path, key=key)
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_uint(o) for o in offs)):
            raise CheckpointError(f"corrupt data_offsets {offs!r} (two non-negative integers)", file=path, key=key)
        b, e = offs
        if e < b:
            raise CheckpointError(f"corrupt data_offsets {offs} (end before start)", file=path, key=key)
        nbytes = math.prod(shape) * ST_TO_NP[dt].itemsize
        if e - b != nbytes:
            raise CheckpointError(f"corrupt entry: {e - b} bytes for shape {shape} {dt} ({nbytes} needed)",
                                  file=path, key=key)
        if e > data_len:
            raise CheckpointError(f"truncated file: tensor ends at byte {data_start + e}, file has {size}",
                                  file=path, key=key)
        extents.append((b, e, key))
    end = 0
    for b, e, key in sorted(extents):
        if b != end:
            what = "overlaps the previous tensor" if b < end else f"leaves a gap of {b - end} bytes before it"
            raise CheckpointError(f"corrupt data_offsets [{b}, {e}]: {what} (tensors must be contiguous)",
                                  file=path, key=key)
        end = e
    if end != data_len:
        raise CheckpointError(f"corrupt safetensors file: tensors end at data byte {end}, data has {data_len} "
                              "bytes", file=path)
    return header, data_start


def _is_uint(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


class SafetensorsFiles(TensorSource):
    """One or more safetensors files viewed as one mapping."""

    def __init__(self, files: Iterable[Path], path: Path | None = None):
        files = [Path(f) for f in files]
        self.path = path or files[0]
        self._entries: dict[str, tuple[Path, int, dict]] = {}
        self.metadata: dict = {}
        for f in files:
            if not f.is_file():
                raise CheckpointError("missing file" if not f.exists() else "not a regular file", file=f)
            header, start = _read_safetensors_header(f)
            self.metadata.update(header.pop("__metadata__", None) or {})
            for k, entry in header.items():
                if k in self._entries:
                    raise CheckpointError("key appears in two shard files", file=f, key=k)
                self._entries[k] = (f, start, entry)

    def keys(self) -> list[str]:
        return list(self._entries)

    def info(self, key: str) -> TensorInfo:
        f, _, e = self._entries[key]
        return TensorInfo(key, tuple(e["shape"]), ST_TO_NP[e["dtype"]], str(f))

    def read(self, key: str) -> np.ndarray:
        f, start, e = self._entries[key]
        b, end = e["data_offsets"]
        dt = ST_TO_NP[e["dtype"]]
        out = np.empty(tuple(e["shape"]), dtype=dt)
        with open(f, "rb") as fh:
            fh.seek(start + b)
            n = fh.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if n != end - b:
            raise CheckpointError("truncated file while reading tensor", file=f, key=key)
        return out


class SafetensorsWriter:
    """Streams tensors into one safetensors file; the header is reserved first and filled at close."""

    def __init__(self, path: str | os.PathLike, specs: list[tuple[str, np.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self._order = [k for k, _, _ in specs]
        if len(set(self._order)) != len(self._order):
            raise ValueError("duplicate output keys")
        header: dict = {}
        off = 0
        for key, dt, shape in specs:
            dt = np.dtype(dt)
            if dt not in NP_TO_ST:
                raise CheckpointError(f"unsupported dtype {dt}", key=key)
            n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            header[key] = {"dtype": NP_TO_ST[dt], "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        blob = json.dumps(header, separators=(",", ":")).encode()
        pad = (8 - len(blob) % 8) % 8  # keep the data 8-byte aligned
        self._header = blob + b" " * pad
        self._entries = header
        self._next = 0
        self._f = open(self.path, "wb")
        self._f.write(struct.pack("<Q", len(self._header)))
        self._f.write(self._header)

    def write(self, key: str, array: np.ndarray) -> None:
        if self._next >= len(self._order) or self._order[self._next] != key:
            raise ValueError(f"tensors must be written in declared order; got {key}")
        e = self._entries[key]
        array = np.ascontiguousarray(array).reshape(np.shape(array))  # keeps 0-d tensors 0-d
        if list(array.shape) != e["shape"] or NP_TO_ST.get(array.dtype) != e["dtype"]:
            raise ValueError(f"{key}: declared {e['shape']} {e['dtype']}, got {array.shape} {array.dtype}")
        self._f.write(memoryview(array.reshape(-1).view(np.uint8)))
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            self._f.close()
            raise ValueError(f"only {self._next} of {len(self._order)} tensors written")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def abort(self) -> None:
        self._f.close()


def save_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict | None = None):
    """Write a dict of numpy arrays (small checkpoints, tests)."""
    w = SafetensorsWriter(path, [(k, np.asarray(v).dtype, np.asarray(v).shape) for k, v in tensors.items()],
                          metadata)
    for k, v in tensors.items():
        w.write(k, np.asarray(v))
    w.close()


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    src = SafetensorsFiles([Path(path)])
    return {k: src.read(k) for k in src.keys()}


class ArraySource(TensorSource):
    """In-memory arrays (a dict named like a checkpoint) viewed as a source."""

    def __init__(self, arrays, path: str | os.PathLike | None = None):
        self._arrays = dict(arrays)
        self.path = Path(path) if path is not None else None  # None: errors name only the key

    def keys(self) -> list[str]:
        return list(self._arrays)

    def info(self, key: str) -> TensorInfo:
        a = self._arrays[key]
        return TensorInfo(key, tuple(np.shape(a)), np.dtype(getattr(a, "dtype", np.float32)),
                          str(self.path) if self.path else "")

    def read(self, key: str) -> np.ndarray:
        return np.asarray(self._arrays[key])


# ----------------------------------------------------------------------------------------------
# torch pickles


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.contiguous().numpy()


class TorchPickle(TensorSource):
    """A ``.pt``/``.pth``/``.bin`` state dict (``weights_only=True``; memory-mapped when possible)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            import torch
        except ImportError:  # pragma: no cover - depends on the environment
            raise CheckpointError("reading a pickle checkpoint needs torch (pip install torch)", file=path) from None
        if not path.exists():
            raise CheckpointError("missing file", file=path)
        try:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # legacy (non-zip) format cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                sd = torch.load(path, map_location="cpu", weights_only=True)
        except CheckpointError:
            raise
        except Exception as e:  # torch raises many types for corrupt files
            first = (str(e).strip().splitlines() or ["empty or truncated file"])[0]
            raise CheckpointError(f"cannot read torch checkpoint ({type(e).__name__}: {first})", file=path) from None
        for wrapper in ("state_dict", "model", "module"):
            if isinstance(sd, dict) and set(sd) == {wrapper}:
                sd = sd[wrapper]
        if not isinstance(sd, dict):
            raise CheckpointError("not a state dict", file=path)
        self._sd = {}
        for k, v in sd.items():
            if not isinstance(v, torch.Tensor):
                raise CheckpointError(f"value is {type(v).__name__}, not a tensor", file=path, key=str(k))
            self._sd[str(k)] = v
        self._np_dtypes = {}
        for k, v in self._sd.items():
            name = str(v.dtype).replace("torch.", "")
            try:
                self._np_dtypes[k] = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
            except TypeError:
                raise CheckpointError(f"unsupported dtype {name}", file=path, key=k) from None

    def keys(self) -> list[str]:
        return list(self._sd)

    def info(self, key: str) -> TensorInfo:
        return TensorInfo(key, tuple(self._sd[key].shape), self._np_dtypes[key], str(self.path))

    def read(self, key: str) -> np.ndarray:
        try:
            return _torch_to_numpy(self._sd[key])
        except Exception as e:
            raise CheckpointError(f"cannot read tensor ({e})", file=self.path, key=key) from None


# ----------------------------------------------------------------------------------------------
# opening any supported path

JAX_META = "yume_jax.json"
JAX_PARAMS = "params.safetensors"


def open_source(path: str | os.PathLike) -> TensorSource:
    """Open a checkpoint file or directory as a lazy :class:`TensorSource`."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError("no such file or directory", file=p)
    if p.is_file():
        if p.suffix == ".safetensors":
            return SafetensorsFiles([p])
        if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
            return TorchPickle(p)
        if p.name.endswith(".index.json"):
            return _from_index(p, p.parent)
        raise CheckpointError("unknown checkpoint format (expected .safetensors, .index.json, .pt/.pth/.bin "
                              "or a directory)", file=p)
    if not p.is_dir():
        raise CheckpointError("not a regular file or directory", file=p)
    if (p / JAX_META).exists():
        src = SafetensorsFiles([p / JAX_PARAMS], path=p)
        src.meta = _read_json(p / JAX_META)
        return src
    hf = _read_json(p / "config.json") if (p / "config.json").exists() else None
    indexes = sorted(p.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(f"several index files: {[i.name for i in indexes]}", file=p)
    if indexes:
        src = _from_index(indexes[0], p)
    else:
        st = sorted(p.glob("*.safetensors"))
        pk = sorted([*p.glob("*.pth"), *p.glob("*.pt"), *p.glob("*.bin")])
        if st:
            src = SafetensorsFiles(st, path=p)
        elif len(pk) == 1:
            src = TorchPickle(pk[0])
        elif not pk:
            raise CheckpointError("directory holds no checkpoint (.safetensors, .index.json, .pth)", file=p)
        else:
            raise CheckpointError(f"several pickle files, name one: {[x.name for x in pk]}", file=p)
    src.path = p
    src.hf_config = hf
    return src


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read JSON ({e})", file=path) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"corrupt JSON (expected an object, got {type(data).__name__})", file=path)
    return data


def _from_index(index: Path, folder: Path) -> SafetensorsFiles:
    """The shards an ``*.index.json`` lists: each must be a plain file name inside ``folder`` (no absolute
    path, no ``..``, no link leading out), every listed key must be in the shard the index names."""
    data = _read_json(index)
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError("index has no weight_map (an object of tensor name -> shard file)", file=index)
    root = folder.resolve()
    shards = {}
    for k, v in wm.items():
        if not isinstance(v, str) or not v:
            raise CheckpointError(f"shard file {v!r} is not a file name", file=index, key=k)
        if v not in shards:
            rel = Path(v)
            target = (folder / rel).resolve()
            if rel.is_absolute() or ".." in rel.parts or not target.is_relative_to(root):
                raise CheckpointError(f"shard file {v!r} is outside the model folder", file=index, key=k)
            shards[v] = folder / rel
    src = SafetensorsFiles(sorted(set(shards.values())), path=folder)
    for k, v in wm.items():
        if k not in src._entries:
            raise CheckpointError(f"listed in the index but not in {v}", file=index, key=k)
        if src._entries[k][0] != shards[v]:
            raise CheckpointError(f"the index says {v}, the tensor is in {src._entries[k][0].name}", file=index, key=k)
    return src
