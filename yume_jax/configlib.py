"""Shared helpers of the typed config dataclasses."""
from __future__ import annotations

import dataclasses


def from_dict(cls, d: dict, what: str):
    """``cls(**d)`` after refusing keys the dataclass does not have (named in the error)."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} keys: {unknown}")
    return cls(**d)
