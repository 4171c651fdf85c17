"""``load_text_encoder``: the umT5 encoder with its tokenizer and prompt cache (spec/wan.md "Text encoder").

    te = yume_jax.load_text_encoder("ckpt/umt5", tokenizer_dir="umt5-xxl-tokenizer/")
    ctx = te.encode(["the camera moves forward"])         # (B, 512, 4096), Wan's semantics, cached
    h = te.encode_ids(input_ids, attention_mask)           # == UMT5EncoderModel(...).last_hidden_state

``encode`` follows Wan's ``T5EncoderModel.__call__`` plus the pipeline's padding: clean the text,
tokenize (EOS appended; longer than ``text_len`` tokens: truncated with a warning, as Wan's tokenizer
does), encode, keep the real tokens, zero-pad to ``text_len`` (512). By default the encoder runs at the
fixed padded length ``text_len``, as Wan's tokenizer pads (``padding="max_length"``): ONE program per batch
size, so a new prompt never recompiles (issue 17). ``fixed_length=False`` runs at the smallest power-of-two
length (>= 16) that holds the batch instead (padded keys are masked, so the real rows agree with the fixed
length to float rounding; cheaper for short prompts on a large encoder, one program per length bucket).
"""
from __future__ import annotations

import os
import uuid
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yume_jax.core.checkpoint import fill, open_checkpoint
from yume_jax.encoders import checkpoint as ckpt
from yume_jax.encoders.cache import DEFAULT_CACHE, PromptCache
from yume_jax.encoders.config import UMT5Config
from yume_jax.encoders.t5 import UMT5Encoder
from yume_jax.encoders.tokenizer import clean, load_tokenizer

TEXT_LEN = 512


class TextEncoder:
    """A umT5 encoder bound to its parameters, compute dtype, tokenizer and prompt cache."""

    def __init__(self, model: UMT5Encoder, *, dtype="float32", tokenizer=None, text_len: int = TEXT_LEN,
                 cache: PromptCache | None = DEFAULT_CACHE, identity: str | None = None, fixed_length: bool = True):
        self.config: UMT5Config = model.cfg
        self.dtype = jnp.dtype(dtype)
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.fixed_length = fixed_length
        self.cache = cache
        self.identity = identity or uuid.uuid4().hex  # unknown provenance: never shares cache entries
        self.graphdef, self.params = nnx.split(model)
        self._hidden = jax.jit(self._apply)
        self._padded = jax.jit(self._apply_padded)

    @classmethod
    def random(cls, cfg: UMT5Config, *, seed: int = 0, dtype="float32", **kw) -> "TextEncoder":
        """Random weights created on the default device in ``dtype`` (tests, benchmarks)."""
        model = ckpt.build(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(seed), param_dtype=jnp.dtype(dtype)))
        if "tokenizer" not in kw:
            kw["tokenizer"] = load_tokenizer(cfg.tokenizer) if cfg.tokenizer != "umt5" else None
        return cls(model, dtype=dtype, **kw)

    # -- compiled functions -------------------------------------------------------------------
    def _apply(self, params, ids, mask):
        return nnx.merge(self.graphdef, params)(ids, mask, self.dtype)

    def _apply_padded(self, params, ids, mask):
        out = self._apply(params, ids, mask) * mask[..., None].astype(self.dtype)
        return jnp.pad(out, ((0, 0), (0, self.text_len - ids.shape[1]), (0, 0)))

    # -- ids in, hidden states out ------------------------------------------------------------
    def encode_ids(self, input_ids, attention_mask=None) -> jax.Array:
        """(B, L) ids and 0/1 mask -> (B, L, dim): transformers ``UMT5EncoderModel`` last_hidden_state."""
        ids, mask = self._check_ids(input_ids, attention_mask)
        return self._hidden(self.params, ids, mask)

    def _check_ids(self, input_ids, attention_mask):
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"input_ids must be integer (B, L) with L >= 1; got {ids.dtype} {tuple(ids.shape)}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(f"input_ids must be in [0, {self.config.vocab_size}); got [{ids.min()}, {ids.max()}]")
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape {tuple(ids.shape)}")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold only 0 and 1")
        empty = np.flatnonzero(mask.sum(1) == 0)
        if empty.size:
            raise ValueError(f"attention_mask row {empty[0]} has no tokens")
        return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)

    # -- text in, Wan context out -------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Cleaned texts -> right-padded int32 ids (n, L_max) and real lengths (n,), truncated to text_len."""
        if self.tokenizer is None:
            raise ValueError("this text encoder has no tokenizer (config tokenizer 'none', or 'umt5' loaded without "
                             "tokenizer_dir); use encode_ids")
        rows = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        for i, r in enumerate(rows):
            if len(r) > self.text_len:
                warnings.warn(f"prompt {i} is {len(r)} tokens long; truncated to {self.text_len} tokens "
                              f"(as Wan's tokenizer does): {texts[i][:60]!r}...", UserWarning, stacklevel=3)
                rows[i] = self.tokenizer([texts[i]], add_special_tokens=True, truncation=True,
                                         max_length=self.text_len)["input_ids"][0]
        lengths = np.array([len(r) for r in rows], np.int32)
        ids = np.zeros((len(rows), lengths.max()), np.int32)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
        if ids.max() >= self.config.vocab_size:
            raise ValueError(f"tokenizer produced id {ids.max()} but the model's vocab_size is "
                             f"{self.config.vocab_size}: wrong tokenizer for this checkpoint")
        return ids, lengths

    def encode(self, texts, *, use_cache: bool = True) -> jax.Array:
        """Texts -> (B, text_len, dim) in the compute dtype, rows past each prompt's length zero.

        With ``use_cache`` (the default) each distinct prompt is encoded once per encoder identity and
        reused from ``self.cache`` afterwards."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be a non-empty list of strings")
        cleaned = [clean(t) for t in texts]
        cache = self.cache if use_cache else None
        rows: dict[str, jax.Array] = {}
        for t in dict.fromkeys(cleaned):
            hit = cache.get(self.identity, t) if cache is not None else None
            if hit is not None:
                rows[t] = hit
        todo = [t for t in dict.fromkeys(cleaned) if t not in rows]
        if todo:
            ids, lengths = self.tokenize(todo)
            out = self._compute(ids, lengths)
            for i, t in enumerate(todo):
                rows[t] = out[i]
                if cache is not None:
                    cache.put(self.identity, t, out[i])
        return jnp.stack([rows[t] for t in cleaned])

    def _compute(self, ids: np.ndarray, lengths: np.ndarray) -> jax.Array:
        """The encoder run behind ``encode``: (n, L) ids -> (n, text_len, dim), padding rows zero."""
        n = ids.shape[1]
        bucket = self.text_len if self.fixed_length else min(self.text_len, max(16, 1 << (n - 1).bit_length()))
        ids = np.pad(ids, ((0, 0), (0, bucket - n)))
        mask = (np.arange(bucket)[None] < lengths[:, None]).astype(np.int32)
        return self._padded(self.params, jnp.asarray(ids), jnp.asarray(mask))


def load_text_encoder(path: str | os.PathLike, *, dtype: str | None = None,
                      tokenizer_dir: str | os.PathLike | None = None, tokenizer: str | None = None,
                      text_len: int = TEXT_LEN, cache: PromptCache | None = DEFAULT_CACHE,
                      fixed_length: bool = True) -> TextEncoder:
    """Load a converted umT5 checkpoint (family ``t5``).

    ``dtype``: compute and parameter dtype (default: bfloat16 for a bfloat16 checkpoint, else float32).
    ``tokenizer``: override the checkpoint's choice (``umt5`` | ``byt5`` | ``none``). The umT5 tokenizer is
    read from ``tokenizer_dir``, else from ``<path>/tokenizer`` when that exists. ``cache=None`` disables
    the prompt cache. ``fixed_length``: encode at ``text_len`` tokens (one program), else at a power-of-two
    bucket."""
    src = open_checkpoint(path, "t5")
    cfg = UMT5Config.from_dict(src.meta["config"])
    if tokenizer is not None:
        cfg = cfg.replace(tokenizer=tokenizer)
    if cfg.tokenizer == "umt5" and tokenizer_dir is None and os.path.isdir(os.path.join(path, "tokenizer")):
        tokenizer_dir = os.path.join(path, "tokenizer")
    tok = load_tokenizer(cfg.tokenizer, tokenizer_dir)
    dt = ckpt.resolve_dtype(dtype, src)
    abstract = ckpt.build(lambda: UMT5Encoder(cfg, rngs=nnx.Rngs(0), param_dtype=dt), abstract=True)
    model = fill(abstract, src)
    tok_id = [cfg.tokenizer, os.path.abspath(tokenizer_dir) if tokenizer_dir else None]
    ident = ckpt.identity(src, dtype=dt.name, tokenizer=tok_id, text_len=text_len)
    return TextEncoder(model, dtype=dt, tokenizer=tok, text_len=text_len, cache=cache, identity=ident,
                       fixed_length=fixed_length)
