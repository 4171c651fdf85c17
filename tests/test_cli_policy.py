"""The one CLI error policy (yume_jax/core/cli.py): exit codes, one-line messages, --debug, validators,
signals turned into exceptions."""
from __future__ import annotations

import errno
import os
import signal

import pytest

from yume_jax.core import cli
from yume_jax.core.tensors import CheckpointError


def _raiser(exc):
    def main(argv):
        raise exc
    return main


@pytest.mark.parametrize("exc, code, words", [
    (cli.UserError("--steps must be >= 1, got 0"), 2, "--steps must be >= 1"),
    (CheckpointError("corrupt entry", file="m.safetensors", key="w"), 2, "m.safetensors: w: corrupt entry"),
    (OSError(errno.ENOSPC, "No space left on device", "/out/x"), 2, "/out/x: no space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 2, "/root/x: permission denied"),
    (MemoryError(), 2, "out of memory"),
    (cli.Interrupted(signal.SIGTERM, "stopped"), 143, "stopped"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_expected_failures_are_one_line_with_their_exit_code(exc, code, words, capsys):
    assert cli.run(_raiser(exc), [], prog="tool") == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tool: ") and words in err and "Traceback" not in err


def test_debug_shows_the_traceback_and_is_not_passed_on(capsys):
    seen = []

    def main(argv):
        seen.append(argv)
        raise cli.UserError("bad\nvalue")
    assert cli.run(main, ["--x", "--debug"], prog="t") == 2
    err = capsys.readouterr().err
    assert seen == [["--x"]] and "Traceback" in err and err.rstrip().endswith("t: error: bad value")


def test_bugs_propagate_and_success_codes_pass_through():
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda argv: 1 / 0, [])
    assert cli.run(lambda argv: None, []) == 0 and cli.run(lambda argv: 3, []) == 3


def test_validators_name_the_flag():
    assert cli.finite("2.5", "--cfg", low=0) == 2.5 and cli.integer(4.0, "--n", low=1) == 4
    for bad, why in ((float("nan"), "finite"), ("inf", "finite"), ("x", "a number"), (-1, ">= 0")):
        with pytest.raises(cli.UserError, match=f"--cfg must be .*{why}"):
            cli.finite(bad, "--cfg", low=0, high=10)
    with pytest.raises(cli.UserError, match="--cfg must be > 0"):
        cli.finite(0, "--cfg", low=0, low_open=True)
    for bad, why in ((2.5, "an integer"), ("a", "an integer"), (0, ">= 1"), (10**12, "<= 100")):
        with pytest.raises(cli.UserError, match=f"--n must be {why}"):
            cli.integer(bad, "--n", low=1, high=100)


def test_signals_raise_turns_sigterm_into_exit_143_and_restores_the_handler(capsys):
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []

    def main(argv):
        with cli.signals_raise():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                raise AssertionError("not interrupted")
            finally:
                cleaned.append(True)
    assert cli.run(main, [], prog="t") == 143
    assert cleaned == [True] and signal.getsignal(signal.SIGTERM) == before
    assert "SIGTERM" in capsys.readouterr().err
