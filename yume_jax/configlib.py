"""Typed config dataclasses from dictionaries and ``--key=value`` overrides, shared by the training,
sampling and rollout configs.

    cfg = configlib.override(cfg, configlib.parse_overrides(["--optim.lr=3e-4", "--model.dit.num_layers=2"]))

Keys are dotted paths into nested (frozen) dataclasses. Values are parsed with the field's type
(``none`` for optional fields, ``true/false``, ``1,2`` or ``(1, 2)`` for tuples, JSON for dicts).
An *open dictionary* is a ``dict`` field whose keys are the fields of another dataclass (e.g.
``model.dit`` holding DiTConfig overrides); pass them as ``open_dicts={("model", "dit"): DiTConfig}``
and its sub-keys are checked and typed against that dataclass. Every error is a :class:`ConfigError`
(a ValueError) of one line naming the key.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import types
import typing
from typing import Mapping

OpenDicts = Mapping[tuple[str, ...], type]


class ConfigError(ValueError):
    pass


def from_dict(cls, d: dict, what: str):
    """``cls(**d)`` after refusing keys the dataclass does not have (named in the error)."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} keys: {unknown}")
    return cls(**d)


def jsonable(x):
    """Nested dicts/tuples of a dataclass's ``asdict`` as JSON values (tuples become lists)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def coerce(value, tp, key: str):
    """``value`` (a CLI string or a JSON value) as type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"--{key}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"--{key}: expected {tp.__name__}, got {value!r}")
        try:
            v = tp(value) if not isinstance(value, str) else (int(value, 0) if tp is int else float(value))
        except (TypeError, ValueError):
            raise ConfigError(f"--{key}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and v != value:
            raise ConfigError(f"--{key}: expected int, got {value!r}")
        return v
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"--{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            s = value.strip()
            if s in ("", "()"):
                value = ()
            else:
                try:
                    value = ast.literal_eval(s if s.startswith(("(", "[")) else f"({s},)")
                except (ValueError, SyntaxError):
                    raise ConfigError(f"--{key}: expected a tuple like 1,2,3, got {value!r}") from None
        if not isinstance(value, (list, tuple)):
            value = (value,)
        elem = args[0] if args else str
        return tuple(coerce(v, elem, key) for v in value)
    if tp is dict or origin is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"--{key}: expected a JSON object, got {value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"--{key}: expected a JSON object, got {value!r}")
        return dict(value)
    raise ConfigError(f"--{key}: unsupported field type {tp}")


def _literal(value):
    """A CLI string as a Python literal when it is one (for the open dictionaries), else the string."""
    if not isinstance(value, str):
        return value
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        if "," in value:
            return tuple(_literal(v.strip()) for v in value.split(","))
        return value


def _set(cfg, path: tuple[str, ...], value, full_key: str, open_dicts: OpenDicts):
    name = path[0]
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    if name not in fields:
        raise ConfigError(f"unknown config key --{full_key}: {type(cfg).__name__} has "
                          f"{', '.join(sorted(fields))}")
    tp = typing.get_type_hints(type(cfg))[name]
    cur = getattr(cfg, name)
    if dataclasses.is_dataclass(cur):
        if len(path) == 1:
            if isinstance(value, dict):
                return dataclasses.replace(cfg, **{name: _apply_dict(cur, value, full_key, open_dicts)})
            raise ConfigError(f"--{full_key} is a section; set its fields (--{full_key}.<field>=...)")
        return dataclasses.replace(cfg, **{name: _set(cur, path[1:], value, full_key, open_dicts)})
    if len(path) > 1:
        parts = full_key.split(".")
        prefix = ".".join(parts[: len(parts) - len(path) + 1])
        target = open_dicts.get(tuple(prefix.split(".")))
        if target is None:
            raise ConfigError(f"unknown config key --{full_key}: --{prefix} has no sub-keys")
        if len(path) != 2:
            raise ConfigError(f"unknown config key --{full_key}")
        sub = path[1]
        known = {f.name for f in dataclasses.fields(target)}
        if sub not in known:
            raise ConfigError(f"unknown config key --{full_key}: {target.__name__} has {', '.join(sorted(known))}")
        new = dict(cur)
        new[sub] = coerce(_literal(value), typing.get_type_hints(target)[sub], full_key)
        return dataclasses.replace(cfg, **{name: new})
    return dataclasses.replace(cfg, **{name: coerce(value, tp, full_key)})


def _apply_dict(cfg, d: dict, prefix: str, open_dicts: OpenDicts):
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if dataclasses.is_dataclass(getattr(cfg, k, None)) and isinstance(v, dict):
            cfg = dataclasses.replace(cfg, **{k: _apply_dict(getattr(cfg, k), v, key, open_dicts)})
        elif isinstance(v, dict) and tuple(key.split(".")) in open_dicts:
            for sk, sv in v.items():
                cfg = _set(cfg, (k, sk), sv, f"{key}.{sk}", open_dicts)
        else:
            cfg = _set(cfg, (k,), v, key, open_dicts)
    return cfg


def merge(cfg, d: dict, open_dicts: OpenDicts = {}):
    """``cfg`` with the (nested) values of ``d`` set; open dictionaries are merged key by key."""
    return _apply_dict(cfg, d, "", open_dicts)


def load(cls, d: dict, open_dicts: OpenDicts = {}):
    """A config from its JSON form (unknown keys are errors); open dictionaries are replaced, not
    merged into the defaults."""
    cfg = cls()
    for path in open_dicts:  # empty the open dictionaries first
        cfg = _replace_path(cfg, path, {})
    return _apply_dict(cfg, d, "", open_dicts)


def _replace_path(cfg, path: tuple[str, ...], value):
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    return dataclasses.replace(cfg, **{path[0]: _replace_path(getattr(cfg, path[0]), path[1:], value)})


def parse_overrides(args) -> list[tuple[str, str]]:
    """``["--a.b=1", ...]`` -> ``[("a.b", "1"), ...]``."""
    out = []
    for a in args:
        if not a.startswith("--") or "=" not in a:
            raise ConfigError(f"expected --key=value, got {a!r}")
        k, v = a[2:].split("=", 1)
        if not k:
            raise ConfigError(f"expected --key=value, got {a!r}")
        out.append((k, v))
    return out


def override(cfg, overrides: list[tuple[str, str]] | dict, open_dicts: OpenDicts = {}):
    """``cfg`` with dotted-key overrides applied in order (a list of pairs or a dict)."""
    items = overrides.items() if isinstance(overrides, dict) else overrides
    for k, v in items:
        cfg = _set(cfg, tuple(k.split(".")), v, k, open_dicts)
    return cfg
