"""Prompt cache: encode each distinct prompt once per text encoder (issue "Prompt cache").

Camera-action prompts are a small vocabulary, so an interactive session should pay for the
5.7B-parameter umT5 once per distinct prompt. Entries are keyed by (encoder identity, cleaned text)
and hold the encoder's (text_len, dim) output on device, already trimmed to the real token count and
zero-padded (Wan's semantics). One process-wide cache is shared by every text encoder by default, so
two loads of the same checkpoint share entries while different checkpoints, dtypes or tokenizers never
do. Least recently used entries are evicted beyond ``max_entries``.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import jax


class PromptCache:
    def __init__(self, max_entries: int = 1024):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[str, str], jax.Array] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, encoder_id: str, text: str) -> jax.Array | None:
        with self._lock:
            out = self._data.get((encoder_id, text))
            if out is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end((encoder_id, text))
            return out

    def put(self, encoder_id: str, text: str, value: jax.Array) -> None:
        with self._lock:
            self._data[(encoder_id, text)] = value
            self._data.move_to_end((encoder_id, text))
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)


DEFAULT_CACHE = PromptCache()
