"""Yume's DiT: the Wan DiT plus compressed history memory and MVDT (spec/yume.md).

``YumeDiT(hidden_states, timestep, text, image, chunk=N)``: the last N latent frames are the current
chunk, earlier frames are history, compressed by :mod:`yume_jax.models.memory`; the output is the
chunk's velocity (B, C_out, N, H, W). ``chunk=None`` (or N = F) is exactly the plain Wan forward.

Timesteps: (B,) gives every token the same t (Yume 1.0: history noised at the chunk's t);
``history_timestep=0.0`` gives history tokens t = 0 and chunk tokens the given t (Yume 1.5: clean
history); (B, tokens) sets every token explicitly (tokens = history tokens + chunk tokens, see
:meth:`YumeDiT.token_layout`).

:meth:`YumeDiT.forward_masked` is the MVDT training forward (see :mod:`yume_jax.models.masking`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yume_jax.models import masking, memory
from yume_jax.models import rope as rope_lib
from yume_jax.models.config import DiTConfig, Runtime
from yume_jax.models.layers import F32
from yume_jax.models.wan import Block, BlockCache, Conditioning, PatchEmbed, WanDiT

TIER_KERNEL = {"2x": 4, "4x": 8, "8x": 16, "16x": 32, "2x_f": 4}


class HistoryEmbedding(nnx.Module):
    """Patch embeddings of the history tiers: attributes x2x, x4x, x8x, x16x, x2x_f."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        for tier in cfg.history_tiers:
            k = TIER_KERNEL[tier]
            c_out = cfg.in_channels if tier == "2x_f" else cfg.dim
            setattr(self, f"x{tier}", PatchEmbed(cfg.in_channels, c_out, (1, k, k), rngs=rngs, param_dtype=param_dtype))

    def __getitem__(self, name: str) -> PatchEmbed:
        if not hasattr(self, name):
            raise ValueError(f"this model has no history embedding {name!r} (tiers: {name})")
        return getattr(self, name)


class YumeDiT(WanDiT):
    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        super().__init__(cfg, rngs=rngs, param_dtype=param_dtype)
        self.history_embedding = HistoryEmbedding(cfg, rngs=rngs, param_dtype=param_dtype) if cfg.history_tiers else None
        self.sideblock = Block(cfg, rngs=rngs, param_dtype=param_dtype) if cfg.sideblock else None
        self.mask_token = nnx.Param(jnp.zeros((1, 1, cfg.dim), param_dtype)) if cfg.mask_token else None

    # -- token layout ------------------------------------------------------------------------------
    def token_layout(self, frames: int, height: int, width: int, chunk: int) -> dict[str, int]:
        """Token counts per history tier and for the chunk (static; no compute)."""
        return memory.token_counts(frames - chunk, height, width, chunk)

    def embed(self, hidden_states, chunk, rt: Runtime):
        """Tokens (B, L, D) float32, static positions (L, 3), the chunk's grid and its token count."""
        f = hidden_states.shape[2]
        chunk = f if chunk is None else chunk
        cur = hidden_states[:, :, f - chunk:]
        x, grid = self.patch_embedding(cur, rt.dtype)
        if chunk == f:
            return x, rope_lib.grid_positions(*grid), grid, x.shape[1]
        if self.history_embedding is None:
            raise ValueError("this checkpoint has no history embeddings, so it cannot take history frames; "
                             "initialise them with yume_jax.models.yume.add_yume_extras")
        h_tok, h_pos = memory.embed_history(self, hidden_states[:, :, : f - chunk], rt.dtype)
        f0 = int(h_pos[:, 0].max()) + 1 if len(h_pos) else 0
        pos = np.concatenate([h_pos, rope_lib.grid_positions(*grid, f0=f0)])
        if h_tok is not None:
            x = jnp.concatenate([h_tok, x], axis=1)
        return x, pos, grid, grid[0] * grid[1] * grid[2]

    def token_timesteps(self, timestep, history_timestep, num_tokens: int, chunk_tokens: int):
        t = jnp.asarray(timestep, F32)
        if history_timestep is not None:
            if t.ndim != 1:
                raise ValueError("history_timestep needs a (B,) timestep for the chunk")
            hist = jnp.full((t.shape[0], num_tokens - chunk_tokens), history_timestep, F32)
            return jnp.concatenate([hist, jnp.broadcast_to(t[:, None], (t.shape[0], chunk_tokens))], axis=1)
        if t.ndim == 2 and t.shape[1] != num_tokens:
            raise ValueError(f"per-token timestep has {t.shape[1]} entries; the input has {num_tokens} tokens "
                             "(history + chunk)")
        return t

    def _head_out(self, x, cond: Conditioning, grid, chunk_tokens):
        x = x[:, -chunk_tokens:]
        e = cond.e[:, -chunk_tokens:] if cond.e.ndim == 3 else cond.e
        return self.unpatchify(self.head(x, e), grid)

    # -- forwards ---------------------------------------------------------------------------------
    def __call__(self, hidden_states, timestep, text_context, image_context=None, *, chunk: int | None = None,
                 history_timestep: float | None = None, runtime: Runtime = Runtime(),
                 cache: BlockCache | None = None, refresh=None):
        """The chunk's velocity. With a block residual ``cache`` (residuals shaped (num_slots, B, tokens,
        dim), tokens from :meth:`num_tokens`; see :meth:`WanDiT._scan`) and a ``refresh`` flag, returns
        (v, cache)."""
        rt = runtime
        x, pos, grid, n_chunk = self.embed(hidden_states, chunk, rt)
        t = self.token_timesteps(timestep, history_timestep, x.shape[1], n_chunk)
        cond = self.condition(t, text_context, image_context, rt)
        if cache is None:
            return self._head_out(self.run_blocks(x, cond, pos, rt), cond, grid, n_chunk)
        x, cache = self.run_blocks(x, cond, pos, rt, cache=cache, refresh=refresh)
        return self._head_out(x, cond, grid, n_chunk), cache

    def num_tokens(self, frames: int, height: int, width: int, chunk: int | None) -> int:
        if chunk is None or chunk == frames:
            pt, ph, pw = self.cfg.patch_size
            return (frames // pt) * (height // ph) * (width // pw)
        return sum(self.token_layout(frames, height, width, chunk).values())

    def forward_masked(self, hidden_states, timestep, text_context, image_context=None, *, key: jax.Array,
                       keep: int, chunk: int | None = None, history_timestep: float | None = None,
                       runtime: Runtime = Runtime()):
        """MVDT forward: ``keep`` (static, from :func:`masking.keep_count`) tokens survive the mask."""
        if self.sideblock is None or self.mask_token is None:
            raise ValueError("MVDT needs sideblock and mask_token (add them with add_yume_extras)")
        rt = runtime
        x, pos, grid, n_chunk = self.embed(hidden_states, chunk, rt)
        b, n, _ = x.shape
        if not 0 < keep <= n:
            raise ValueError(f"keep={keep} must be in 1..{n}")
        t = self.token_timesteps(timestep, history_timestep, n, n_chunk)
        cond = self.condition(t, text_context, image_context, rt)
        cos, sin = rope_lib.rope_tables(pos, self.cfg.head_dim, self.cfg.rope_theta)
        split = masking.split_layer(self.cfg.num_layers)
        idx = masking.sample_keep(key, b, n, keep)
        cond_k = cond._replace(e0=masking.gather(cond.e0, idx) if cond.e0.ndim == 4 else cond.e0)
        xk = masking.gather(x, idx)
        xk = self._scan(xk, cond_k, (cos[idx], sin[idx]), rt, layers=(0, split))
        full, masked = masking.scatter_with_mask_token(xk, idx, n, self.mask_token[...].astype(F32))
        side = self.sideblock(full, cond.e0, cond.ctx, cond.ctx_img, cos, sin, rt)
        x = jnp.where(masked[..., None], side, full)
        x = self._scan(x, cond, (cos, sin), rt, layers=(split, self.cfg.num_layers))
        return self._head_out(x, cond, grid, n_chunk)


def add_yume_extras(model: WanDiT, *, seed: int = 0, tiers=("2x", "4x", "8x", "16x", "2x_f"), sideblock=True,
                    mask_token=True) -> YumeDiT:
    """A Yume model from a Wan model: history embeddings initialised from the base patch embedding
    (trilinear, bias copied; spec/yume.md), a freshly initialised side block, a zero mask token.
    Everything already in ``model`` is kept as is."""
    cfg = model.cfg
    new_cfg = cfg.replace(history_tiers=tuple(dict.fromkeys(cfg.history_tiers + tuple(tiers))),
                          sideblock=cfg.sideblock or sideblock, mask_token=cfg.mask_token or mask_token)
    pdt = model.patch_embedding.kernel[...].dtype
    out = YumeDiT(new_cfg, rngs=nnx.Rngs(seed), param_dtype=pdt)
    old = nnx.state(model)
    nnx.update(out, old)
    base_k = np.asarray(model.patch_embedding.kernel[...], np.float32)
    base_b = np.asarray(model.patch_embedding.bias[...], np.float32)
    for tier in new_cfg.history_tiers:
        if tier in cfg.history_tiers:
            continue
        k, bias = memory.init_history_from_base(base_k, base_b, tier)
        emb = out.history_embedding[f"x{tier}"]
        emb.kernel[...] = jnp.asarray(k, pdt)
        emb.bias[...] = jnp.asarray(bias, pdt)
    return out
