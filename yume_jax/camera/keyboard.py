"""A small keyboard grammar for interactive control (spec/yume.md: "W/A/S/D move, arrow keys (or I/J/K/L)
turn and tilt, combinations allowed").

A script is comma-separated steps; a step is keys and camera moves joined by "+" with an optional
repeat count: ``"W, W+A, →, W+→*4, S+D+↑"``. Tokens (case-insensitive): W A S D, the arrows → ← ↑ ↓
(also the combined labels ↑→ ↑← ↓→ ↓←), ASCII aliases right/left/up/down and l/j/i/k, and ``None`` /
``·`` / ``still`` for a step without motion.
"""
from __future__ import annotations

from yume_jax.camera.qcm import Action

_ARROWS = {"→": "→", "←": "←", "↑": "↑", "↓": "↓", "right": "→", "left": "←", "up": "↑", "down": "↓",
           "l": "→", "j": "←", "i": "↑", "k": "↓"}
_COMBINED = {"↑→": "↑→", "↑←": "↑←", "↓→": "↓→", "↓←": "↓←"}
_KEYS = ("w", "a", "s", "d")
_STILL = ("none", "·", "still")
VALID_TOKENS = ("W, A, S, D (move); → ← ↑ ↓ or right/left/up/down or l/j/i/k (turn/tilt); ↑→ ↑← ↓→ ↓← ; "
                "None / · / still (no motion). Join tokens with '+', separate steps with ',', repeat a step "
                "with '*N' (e.g. 'W+→*8, S')")


def _err(step: str, why: str) -> ValueError:
    return ValueError(f"invalid step {step!r}: {why}. Valid tokens: {VALID_TOKENS}")


def parse_step(step: str) -> Action:
    """One step ("W+A+↑") -> :class:`Action`."""
    raw = step
    tokens = [t.strip() for t in step.split("+")]
    if not step.strip() or any(not t for t in tokens):
        raise _err(raw, "empty token")
    move = {"z": None, "x": None}
    turn = {"v": None, "h": None}

    def put(slot: dict, axis: str, value: str):
        if slot[axis] is not None:
            raise _err(raw, f"{value!r} conflicts with {slot[axis]!r}")
        slot[axis] = value

    still = False
    for tok in tokens:
        low = tok.lower()
        if low in _KEYS:
            up = low.upper()
            put(move, "z" if up in "WS" else "x", up)
        elif low in _ARROWS:
            arrow = _ARROWS[low]
            put(turn, "v" if arrow in "↑↓" else "h", arrow)
        elif tok in _COMBINED:
            put(turn, "v", tok[0])
            put(turn, "h", tok[1])
        elif low in _STILL:
            still = True
        else:
            raise _err(raw, f"unknown token {tok!r}")
    if still and len(tokens) > 1:
        raise _err(raw, "'None'/'·' cannot be combined with other tokens")
    keys = "+".join(k for k in (move["z"], move["x"]) if k) or "None"
    mouse = "".join(m for m in (turn["v"], turn["h"]) if m) or "·"
    return Action(keys, mouse)


MAX_STEPS = 100_000  # a script expands to at most this many steps (W*300000000 is an error, not an OOM)


def parse_keys(text: str) -> list[Action]:
    """A whole script -> one :class:`Action` per step (repeats expanded; at most :data:`MAX_STEPS` in all)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty keyboard script. Valid tokens: {VALID_TOKENS}")
    actions = []
    for step in text.split(","):
        body, star, count = step.partition("*")
        n = 1
        if star:
            if not count.strip().isdigit() or int(count) < 1:
                raise _err(step.strip(), f"repeat count {count.strip()!r} is not a positive integer")
            n = int(count)
            if len(actions) + n > MAX_STEPS:
                raise _err(step.strip(), f"the script would expand to more than {MAX_STEPS} steps")
        actions.extend([parse_step(body)] * n)
    return actions


def format_keys(actions) -> str:
    """Inverse of :func:`parse_keys`: run-length encoded script ("W+→*8, S*16")."""
    out, i = [], 0
    actions = list(actions)
    while i < len(actions):
        j = i
        while j < len(actions) and actions[j] == actions[i]:
            j += 1
        a = actions[i]
        parts = [k for k in a.keys.split("+") if k != "None"] + ([a.mouse] if a.mouse != "·" else [])
        tok = "+".join(parts) or "None"
        out.append(tok if j - i == 1 else f"{tok}*{j - i}")
        i = j
    return ", ".join(out)
