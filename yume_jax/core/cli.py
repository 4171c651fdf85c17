"""The one error policy of every command-line tool (``python -m infer.explore``, ``train.train``, ...).

    def main(argv=None) -> int:
        return cli.run(_main, argv, prog="python -m infer.explore")

- An expected failure is one line on stderr naming the file, key or flag, and exit code 2
  (:data:`EXIT_USAGE`). Expected: :class:`UserError` and its subclasses, the project's own error types
  that mean bad input (config, checkpoint, video, pose errors: :data:`EXPECTED`), and the operating
  system saying no (missing file, no permission, disk full, read-only file system, a directory where a
  file was expected): :class:`OSError`.
- An interrupted run (SIGINT / SIGTERM turned into :class:`Interrupted` or KeyboardInterrupt) exits 130
  for SIGINT and 143 for SIGTERM (128 + signal number, the shell's convention), after the tool saved what it
  had; a tool that stops early on a signal returns :func:`interrupted_code`.
- A finished run exits 0. Anything else is a bug: a traceback and exit 1.
- ``--debug`` (or ``YUME_JAX_DEBUG=1``) prints the traceback of expected failures too.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from typing import Callable, Sequence

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2


class UserError(ValueError):
    """Bad input the user can fix: printed as one line, exit 2."""


class Interrupted(Exception):
    """A run stopped by a signal after saving; ``signum`` picks the exit code (128 + signum)."""

    def __init__(self, signum: int = signal.SIGINT, message: str = "interrupted"):
        super().__init__(message)
        self.signum = int(signum)


def interrupted_code(signum: int) -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def _expected() -> tuple[type, ...]:
    from yume_jax.configlib import ConfigError
    from yume_jax.core.tensors import CheckpointError

    return (UserError, ConfigError, CheckpointError)


_OS_WORDS = {errno.ENOSPC: "no space left on device", errno.EACCES: "permission denied",
             errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system",
             errno.ENOENT: "no such file or directory", errno.EISDIR: "is a directory",
             errno.ENOTDIR: "not a directory", errno.EDQUOT: "disk quota exceeded"}


def describe(e: BaseException) -> str:
    """One line for an expected failure (file names kept, newlines folded)."""
    if isinstance(e, OSError) and not isinstance(e, _expected()):
        what = _OS_WORDS.get(e.errno) or e.strerror or str(e) or type(e).__name__
        where = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
        msg = f"{where}: {what}" if where else what
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())


def debug_requested(argv: Sequence[str] | None) -> bool:
    return "--debug" in (argv if argv is not None else sys.argv[1:]) or os.environ.get("YUME_JAX_DEBUG") == "1"


def strip_debug(argv: Sequence[str] | None) -> list[str] | None:
    """``argv`` without ``--debug`` (None stays None: the tool reads sys.argv[1:] minus --debug)."""
    args = list(argv if argv is not None else sys.argv[1:])
    return [a for a in args if a != "--debug"]


def run(main: Callable[[list[str]], int], argv: Sequence[str] | None = None, *, prog: str = "",
        expected: tuple[type, ...] = ()) -> int:
    """Call ``main(argv)`` under the policy above and return the exit code. ``expected``: more exception
    types that mean bad input for this tool."""
    debug = debug_requested(argv)
    args = strip_debug(argv)
    prefix = f"{prog}: " if prog else ""
    try:
        code = main(args)
        return EXIT_OK if code is None else int(code)
    except Interrupted as e:
        print(f"{prefix}{describe(e)}", file=sys.stderr)
        return interrupted_code(e.signum)
    except KeyboardInterrupt:
        print(f"{prefix}interrupted", file=sys.stderr)
        return interrupted_code(signal.SIGINT)
    except (*_expected(), *expected, OSError) as e:
        if debug:
            traceback.print_exc()
        print(f"{prefix}error: {describe(e)}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        if debug:
            traceback.print_exc()
        print(f"{prefix}error: out of memory (lower the resolution, chunk or batch size)", file=sys.stderr)
        return EXIT_USAGE


def finite(value: float, flag: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """``value`` as a float if finite and within [low, high] (``low_open``: > low), else UserError naming
    ``flag``."""
    import math

    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise UserError(f"{flag} must be finite, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise UserError(f"{flag} must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and v > high:
        raise UserError(f"{flag} must be <= {high:g}, got {value!r}")
    return v


def integer(value, flag: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within [low, high], else UserError naming ``flag``."""
    try:
        v = int(value)
        if isinstance(value, float) and v != value:
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be an integer, got {value!r}") from None
    if low is not None and v < low:
        raise UserError(f"{flag} must be >= {low}, got {value!r}")
    if high is not None and v > high:
        raise UserError(f"{flag} must be <= {high}, got {value!r}")
    return v


class DirLock:
    """An exclusive lock on a directory (``<dir>/.lock``, ``flock``): a second run into the same output
    is refused with one line instead of corrupting it. Released by :meth:`release`, on exit of a ``with``
    block, and by the kernel when the process dies (no stale locks)."""

    def __init__(self, directory, what: str = "run"):
        from pathlib import Path
        self.directory, self.what, self._fh = Path(directory), what, None

    def acquire(self) -> "DirLock":
        import fcntl
        self.directory.mkdir(parents=True, exist_ok=True)
        fh = open(self.directory / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "?"
            fh.close()
            raise UserError(f"{self.directory} is in use by another {self.what} (pid {pid}); wait for it to "
                            "finish or use another directory") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def signals_raise(signums: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)):
    """Within the block, ``signums`` raise :class:`Interrupted` (like SIGINT raises KeyboardInterrupt), so
    ``finally`` / ``except BaseException`` clean-ups run (temporary directories removed) and :func:`run`
    exits 128 + signum. Only in the main thread (elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name}; nothing half-written was kept")

    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
