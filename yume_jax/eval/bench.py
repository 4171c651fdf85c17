"""``sandbox-bench``: the benchmark definition (versioned), the same cases for every pipeline.

A case is a held-out start view of the sandbox world (:mod:`yume_jax.data.world`) and an action script
of one :class:`~yume_jax.camera.Action` per generated chunk. The world and its start view are those of
``world.render_walk(case.seed, ...)``: the scene is scattered around the case's whole path, so the
exact ground-truth continuation of the start view under the script is known for every frame.

Seeds are NumPy entropy lists ``[SEED_TAG, VERSION, case, view]``; the training data renders clips from
``[seed, i]`` (two entries, :func:`yume_jax.data.world.write_dataset`), so no benchmark start view is in
any training set. Kinds of case (spec/yume.md "Camera-motion quantization": the 9 key and 9 mouse labels):

- ``key``: each of the 8 movement labels alone; ``mouse``: each of the 8 camera labels alone;
- ``combo``: keys and mouse together;
- ``reversal``: a command then its opposite (W then S, A then D, turn right then left, tilt up then down);
  ``reversal_at`` is the chunk where the command changes;
- ``revisit``: out and back to the start pose (the reversals W-S, A-D and turn do so too);
  :meth:`Case.returns` says whether a walk ends at its start pose at a given chunk length;
- ``long``: >= 16 chunks of mixed commands (``long-loop`` walks out, turns 180 degrees at 8 frames a
  chunk, walks back and turns again).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from yume_jax.camera import KEYS, MOUSE, Action, format_keys, parse_keys
from yume_jax.data import world

NAME = "sandbox-bench"
VERSION = 1
SEED_TAG = 0x5EEDBE7C


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str  # key | mouse | combo | reversal | revisit | long
    script: str  # keyboard grammar, one step per chunk
    index: int  # position in the full benchmark (part of the seed)
    view: int = 0  # start view number (part of the seed)
    reversal_at: int | None = None  # reversal: first chunk of the opposite command

    @property
    def seed(self) -> list[int]:
        return [SEED_TAG, VERSION, self.index, self.view]

    @property
    def actions(self) -> list[Action]:
        return parse_keys(self.script)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.view}"

    def walk(self, frames_per_chunk: int) -> list[world.Step]:
        """The sandbox script: ``frames_per_chunk`` frame pairs per chunk at the nominal speed."""
        return [world.Step(a, frames_per_chunk) for a in self.actions]

    def returns(self, frames_per_chunk: int, cfg: world.WorldConfig = world.WorldConfig()) -> bool:
        """Whether the walk ends at its start pose (a revisit: the last frame should show the start view)."""
        c2w = world.simulate(self.walk(frames_per_chunk), cfg)
        return bool(np.allclose(c2w[0], c2w[-1], atol=1e-6))

    def to_dict(self) -> dict:
        return dict(name=self.name, id=self.id, kind=self.kind, script=self.script, seed=self.seed,
                    chunks=len(self.actions), reversal_at=self.reversal_at)


def _definitions() -> list[tuple]:
    d = []
    for k in KEYS:
        if k != "None":
            d.append((f"key-{k}", "key", f"{k}*4", None))
    for m in MOUSE:
        if m != "·":
            d.append((f"mouse-{m}", "mouse", f"{m}*4", None))
    for script in ("W+→*4", "S+A+↑*4", "W+D+↓←*4", "A+↑→*4"):
        d.append((f"combo-{script.split('*')[0]}", "combo", script, None))
    d += [("reverse-W-S", "reversal", "W*4, S*4", 4),
          ("reverse-A-D", "reversal", "A*3, D*3", 3),
          ("reverse-turn", "reversal", "→*4, ←*4", 4),
          ("reverse-tilt", "reversal", "↑*3, ↓*3", 3),
          ("revisit-square", "revisit", "D*2, W*2, A*2, S*2", None),
          ("revisit-look", "revisit", "←*3, ↑*2, →*3, ↓*2", None),
          ("long-loop", "long", "W*3, →*12, W*3, →*12", None),
          ("long-mixed", "long", "W*2, →*2, D*2, ↑*2, W+A*2, ↓*2, S*2, ←*2", None)]
    return d


def cases(views: int = 1) -> list[Case]:
    """Every case of the benchmark, ``views`` start views each."""
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    return [Case(n, k, s, i, v, r) for i, (n, k, s, r) in enumerate(_definitions()) for v in range(views)]


QUICK = ("key-W", "mouse-→", "reverse-A-D")


def select(spec: str = "all", views: int = 1) -> list[Case]:
    """``all``, ``quick`` (a 3-case smoke subset), or comma-separated case names and kinds."""
    every = cases(views)
    if spec == "all":
        return every
    wanted = QUICK if spec == "quick" else tuple(s.strip() for s in spec.split(",") if s.strip())
    known = {c.name for c in every} | {c.kind for c in every}
    bad = [w for w in wanted if w not in known]
    if bad or not wanted:
        raise ValueError(f"unknown case or kind {', '.join(bad) or spec!r}; valid: all, quick, kinds "
                         f"{', '.join(sorted({c.kind for c in every}))}, or names such as "
                         f"{', '.join(c.name for c in every[:3])}")
    return [c for c in every if c.name in wanted or c.kind in wanted]


def describe() -> str:
    """The benchmark as text (for --help and the report)."""
    lines = [f"{NAME} v{VERSION}: {len(cases())} cases (seed [{SEED_TAG:#x}, {VERSION}, case, view]; "
             "held out from every training config)"]
    for c in cases():
        lines.append(f"  {c.name:<16} {c.kind:<9} {format_keys(c.actions)}")
    return "\n".join(lines)
