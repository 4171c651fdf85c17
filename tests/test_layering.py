"""The library's import structure: no import cycles, and imports only go down the floors.

Floors (lowest first): core (checkpoint I/O, configlib, sharding) < models, vae, encoders, camera, data,
presets < sampling, training tasks < pipeline / session / rollout < evaluation < the converter <
``configs`` < entry points (``train/``, ``infer/``). Every import counts, also one inside a function (a lazy
import still ties the two modules together). The ``yume_jax`` package itself imports its public names
lazily (``_LAZY`` in ``yume_jax/__init__.py``): it counts as importing those modules, on their floor.
"""
from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# first name under yume_jax (or the top-level package) -> floor
FLOORS = {
    "yume_jax.core": 0, "yume_jax.configlib": 0, "yume_jax.sharding": 0,
    "yume_jax.models": 1, "yume_jax.vae": 1, "yume_jax.encoders": 1, "yume_jax.camera": 1, "yume_jax.data": 1,
    "yume_jax.presets": 1,
    "yume_jax.sampling": 2, "yume_jax.train": 2,
    "yume_jax.rollout": 3, "yume_jax.pipeline": 3, "yume_jax.session": 3, "yume_jax.media": 3,
    "yume_jax.testing": 3,
    "yume_jax.eval": 4,
    "yume_jax.convert": 5,
    "configs": 6,
    "train": 7, "infer": 7,
}


def lazy_targets() -> set[str]:
    """The modules ``yume_jax/__init__.py`` imports its public names from (its ``_LAZY`` table)."""
    for node in ast.walk(ast.parse((ROOT / "yume_jax" / "__init__.py").read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return set(ast.literal_eval(node.value).values())
    return set()


def floor(module: str) -> int:
    if module == "yume_jax":
        return max(map(floor, lazy_targets()), default=0)
    parts = module.split(".")
    key = ".".join(parts[:2]) if parts[0] == "yume_jax" and len(parts) > 1 else parts[0]
    if key not in FLOORS:
        raise KeyError(f"{module}: no floor for {key!r}; add it to FLOORS in tests/test_layering.py")
    return FLOORS[key]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def library_modules(packages=("yume_jax", "configs")) -> dict[str, Path]:
    return {module_name(p): p for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ours ``path`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m.split(".")[0] in ("yume_jax", "configs", "train", "infer")}


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    known = set(mods)
    graph = {m: imports(p, known) for m, p in mods.items()}
    if "yume_jax" in graph:
        graph["yume_jax"] |= lazy_targets()
    return graph


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (floor {floor(m)}) imports {d} (floor {floor(d)})"
                  for m, deps in graph.items() for d in deps if floor(d) > floor(m))


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter({m: {d for d in deps if d != m} for m, deps in graph.items()}).static_order())
    except graphlib.CycleError as e:
        return e.args[1]
    return None


def test_no_import_cycles():
    graph = import_graph(library_modules())
    assert cycle(graph) is None, f"import cycle: {' -> '.join(cycle(graph))}"


def test_imports_only_go_down():
    graph = import_graph(library_modules())
    assert not upward(graph), "upward imports:\n" + "\n".join(upward(graph))


def test_the_checker_finds_cycles_and_upward_imports():
    graph = {"yume_jax.models.a": {"yume_jax.core.x"}, "yume_jax.core.x": {"yume_jax.models.a"}}
    assert set(cycle(graph)) == {"yume_jax.models.a", "yume_jax.core.x"}
    assert upward(graph) == ["yume_jax.core.x (floor 0) imports yume_jax.models.a (floor 1)"]
    assert upward({"yume_jax.vae.x": {"yume_jax.convert.vae", "configs.models", "train.train"}}) == [
        "yume_jax.vae.x (floor 1) imports configs.models (floor 6)",
        "yume_jax.vae.x (floor 1) imports train.train (floor 7)",
        "yume_jax.vae.x (floor 1) imports yume_jax.convert.vae (floor 5)"]
    with pytest.raises(KeyError, match="no floor"):
        floor("yume_jax.newthing")
    assert floor("yume_jax") == 1 and "yume_jax.models.loader" in lazy_targets()


def test_import_parsing(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import numpy\nfrom yume_jax.vae import names, WanVAE\n"
                 "def f():\n    from configs.models import get\n    import yume_jax.core.tensors\n")
    assert imports(p, {"yume_jax.vae.names"}) == {"yume_jax.vae.names", "yume_jax.vae", "configs.models",
                                                 "yume_jax.core.tensors"}
