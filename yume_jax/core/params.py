"""Parameter pytrees <-> flat checkpoint names (the naming every checkpoint of ours uses).

An NNX state flattens to dotted names (``blocks.self_attn.q.kernel``); stacked blocks carry a
leading layer axis in the model but are stored per layer in checkpoints (``blocks.3.self_attn.q.kernel``),
so a checkpoint reads like the PyTorch one and converts tensor by tensor.
"""
from __future__ import annotations

import re
from typing import Callable

import jax
import numpy as np

STACKED_PREFIXES = ("blocks.",)


def path_name(path, attrs: bool = False) -> str:
    """Dotted name of a pytree key path. Attribute keys (an NNX Variable's ``value``) are dropped
    unless ``attrs`` (optax states name their moments ``mu``/``nu`` by attribute)."""
    parts = []
    for p in path:
        if isinstance(p, jax.tree_util.DictKey):
            parts.append(str(p.key))
        elif isinstance(p, jax.tree_util.SequenceKey):
            parts.append(str(p.idx))
        elif isinstance(p, jax.tree_util.FlattenedIndexKey):
            parts.append(str(p.key))
        elif attrs and isinstance(p, jax.tree_util.GetAttrKey):
            parts.append(str(p.name))
    return ".".join(parts)


def flatten(tree) -> dict[str, object]:
    """{dotted name: leaf} of an NNX state (or any dict pytree)."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def map_named(tree, get: Callable[[str, object], object]):
    """A copy of ``tree`` whose leaves are ``get(name, old_leaf)``."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return jax.tree_util.tree_unflatten(treedef, [get(path_name(p), leaf) for p, leaf in leaves])


def is_stacked(name: str) -> bool:
    return name.startswith(STACKED_PREFIXES)


def unstacked_names(name: str, num_layers: int) -> list[str]:
    """'blocks.ffn.fc1.kernel' -> ['blocks.0.ffn.fc1.kernel', ...]."""
    head, rest = name.split(".", 1)
    return [f"{head}.{i}.{rest}" for i in range(num_layers)]


def to_checkpoint(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Model-flat (stacked) arrays -> checkpoint-flat (per layer) arrays."""
    out = {}
    for k, v in flat.items():
        if is_stacked(k):
            v = np.asarray(v)
            for i, name in enumerate(unstacked_names(k, v.shape[0])):
                out[name] = v[i]
        else:
            out[k] = np.asarray(v)
    return out


def layer_count(checkpoint_keys) -> int:
    idx = {int(m.group(1)) for k in checkpoint_keys if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0
