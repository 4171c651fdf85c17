"""Tokenizers of the text encoder (spec/wan.md "Text encoder").

The choice is part of the checkpoint's config (``UMT5Config.tokenizer``):

- ``umt5``: the real umT5 tokenizer (``google/umt5-xxl`` files: ``spiece.model`` and/or ``tokenizer.json``),
  loaded with transformers ``AutoTokenizer`` from a LOCAL directory; nothing is fetched from a hub.
- ``byt5``: transformers ``ByT5Tokenizer`` (UTF-8 bytes + 3), which needs no files: for small
  self-contained models.
- ``none``: no tokenizer; only ``encode_ids`` works.

Text is cleaned as Wan's ``HuggingfaceTokenizer(clean="whitespace")``: ftfy.fix_text, HTML unescape
(twice), whitespace runs collapsed, stripped.
"""
from __future__ import annotations

import functools
import html
import os
import re
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "tokenizer_config.json")


def clean(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


def load_tokenizer(kind: str, directory: str | os.PathLike | None = None):
    """A transformers tokenizer for ``kind`` (see the module doc), or None for ``none``."""
    if kind == "none":
        return None
    if kind == "byt5":
        return _byt5()
    if kind != "umt5":
        raise ValueError(f"unknown tokenizer {kind!r}; use umt5, byt5 or none")
    if directory is None:
        raise ValueError("this checkpoint uses the umT5 tokenizer: pass tokenizer_dir=<local directory with the "
                         f"google/umt5-xxl tokenizer files ({' / '.join(TOKENIZER_FILES[:2])})>, or put them in "
                         "<checkpoint>/tokenizer/")
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"tokenizer directory {d} does not exist (expected the google/umt5-xxl tokenizer files: "
                         f"{' / '.join(TOKENIZER_FILES[:2])})")
    if not any((d / f).exists() for f in TOKENIZER_FILES[:2]):
        raise ValueError(f"tokenizer directory {d} holds neither {TOKENIZER_FILES[0]} nor {TOKENIZER_FILES[1]}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as e:  # transformers raises many types for a broken directory
        raise ValueError(f"cannot load the tokenizer from {d} ({type(e).__name__}: {str(e).splitlines()[0]})") from None


@functools.lru_cache(maxsize=1)
def _byt5():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()  # slow to build (seconds) and stateless: one shared instance
