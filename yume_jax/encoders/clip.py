"""CLIP ViT visual tower in Flax NNX: Wan's open-clip xlm-roberta ViT-H/14 (spec/wan.md "Image encoder").

tokens = [cls, patches] + pos; x = pre_norm(tokens); pre-LN blocks x += Attn(LN(x)); x += MLP(LN(x))
(MLP = fc2(gelu(fc1)), exact GELU for ViT-H). Wan takes the output of the first ``num_layers - 1``
blocks with no post-norm: (B, 257, 1280) for ViT-H/14 at 224 px, the same tensor as transformers'
``CLIPVisionModel(pixel_values, output_hidden_states=True).hidden_states[-2]``.

Preprocessing (Wan's ``CLIPModel.visual``): uint8 -> [0, 1], bicubic resize to the model's size
(PyTorch's ``F.interpolate(mode="bicubic", align_corners=False)``: Keys cubic a = -0.75, borders
clamped, no antialiasing), then CLIP mean/std. Precision rule as in :mod:`yume_jax.encoders.t5`:
matmuls in the compute dtype, residual stream, LayerNorm and softmax in float32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from yume_jax.encoders.config import CLIPVisionConfig
from yume_jax.encoders.t5 import scan_blocks, stacked
from yume_jax.models.layers import F32, LayerNorm, Linear, gelu_exact

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACT = {"gelu": gelu_exact, "quick_gelu": quick_gelu}


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] float32 weights of PyTorch's 1-D bicubic resize (align_corners=False, a=-0.75, clamped)."""
    a = -0.75
    scale = np.float32(in_size / out_size)
    # source coordinate rounded once (as PyTorch's fused multiply-add), weights in float32
    src = (np.float64(scale) * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
    i0 = np.floor(src)
    t = src - i0

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    w = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    m = np.zeros((out_size, in_size), np.float64)
    for j in range(4):
        idx = np.clip(i0.astype(np.int64) - 1 + j, 0, in_size - 1)
        np.add.at(m, (np.arange(out_size), idx), w[:, j])
    return m.astype(np.float32)


def preprocess(images: jax.Array, size: int) -> jax.Array:
    """uint8 (B, H, W, 3) -> float32 (B, size, size, 3): /255, bicubic resize, CLIP mean/std."""
    _, h, w, _ = images.shape
    x = images.astype(F32) / 255.0
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("ih,bhwc->biwc", jnp.asarray(bicubic_matrix(h, size)), x, precision=hi)
    x = jnp.einsum("jw,biwc->bijc", jnp.asarray(bicubic_matrix(w, size)), x, precision=hi)
    return (x - jnp.asarray(CLIP_MEAN, F32)) / jnp.asarray(CLIP_STD, F32)


class PatchEmbed(nnx.Module):
    """Conv p x p, stride p, no bias; kernel [p, p, 3, dim] (PyTorch [dim, 3, p, p] transposed)."""

    def __init__(self, patch: int, dim: int, *, rngs: nnx.Rngs, param_dtype=F32):
        self.patch = patch
        bound = (3 * patch * patch) ** -0.5
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (patch, patch, 3, dim), param_dtype, -bound, bound))

    def __call__(self, x, dtype):
        """x (B, H, W, 3) -> (B, H/p * W/p, dim), patches in row-major order."""
        b, h, w, c = x.shape
        p = self.patch
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * p * c)
        k = self.kernel[...].reshape(p * p * c, -1)
        return jnp.dot(x.astype(dtype), k.astype(dtype), preferred_element_type=F32)


class Attention(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        self.heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (Linear(cfg.dim, cfg.dim, rngs=rngs, param_dtype=param_dtype)
                                          for _ in range(4))

    def __call__(self, x, dtype):
        b, n, d = x.shape
        hd = d // self.heads
        q, k, v = (f(x, dtype).reshape(b, n, self.heads, hd) for f in (self.q, self.k, self.v))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=F32) * (hd ** -0.5)
        p = jax.nn.softmax(s, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", p.astype(dtype), v, preferred_element_type=F32)
        return self.o(out.reshape(b, n, d), dtype)


class MLP(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        self.act = ACT[cfg.activation]
        self.fc1 = Linear(cfg.dim, cfg.mlp_dim, rngs=rngs, param_dtype=param_dtype)
        self.fc2 = Linear(cfg.mlp_dim, cfg.dim, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, dtype):
        return self.fc2(self.act(self.fc1(x, dtype).astype(F32)).astype(dtype), dtype)


class Block(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        self.norm1 = LayerNorm(cfg.dim, cfg.eps, param_dtype=param_dtype)
        self.attn = Attention(cfg, rngs=rngs, param_dtype=param_dtype)
        self.norm2 = LayerNorm(cfg.dim, cfg.eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x, dtype):
        x = x + self.attn(self.norm1(x), dtype).astype(F32)
        return x + self.mlp(self.norm2(x), dtype).astype(F32)


class VisionTransformer(nnx.Module):
    def __init__(self, cfg: CLIPVisionConfig, *, rngs: nnx.Rngs, param_dtype=F32):
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = PatchEmbed(cfg.patch_size, d, rngs=rngs, param_dtype=param_dtype)
        self.cls_embedding = nnx.Param((d ** -0.5 * jax.random.normal(rngs.params(), (d,))).astype(param_dtype))
        self.pos_embedding = nnx.Param(
            (d ** -0.5 * jax.random.normal(rngs.params(), (cfg.num_tokens, d))).astype(param_dtype))
        self.pre_norm = LayerNorm(d, cfg.eps, param_dtype=param_dtype)
        self.blocks = stacked(lambda r: Block(cfg, rngs=r, param_dtype=param_dtype), cfg.num_layers, rngs)
        self.post_norm = LayerNorm(d, cfg.eps, param_dtype=param_dtype)
        self.head = Linear(d, cfg.proj_dim, rngs=rngs, param_dtype=param_dtype, bias=False) if cfg.proj_dim else None

    def __call__(self, pixels: jax.Array, dtype=F32, num_blocks: int | None = None) -> jax.Array:
        """pixels (B, H, W, 3) normalised -> hidden states after ``num_blocks`` blocks (default: Wan's
        ``num_layers - 1``), float32 residual stream returned in ``dtype``."""
        n = self.cfg.num_layers - 1 if num_blocks is None else num_blocks
        x = self.patch_embedding(pixels, dtype)
        cls = jnp.broadcast_to(self.cls_embedding[...].astype(F32), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...].astype(F32)
        x = self.pre_norm(x)
        return scan_blocks(self.blocks, x, n, jnp.dtype(dtype)).astype(dtype)

    def pool(self, hidden: jax.Array, dtype=F32) -> jax.Array:
        """CLIP image embedding from the LAST block's output: post_norm(cls) (@ head when there is one)."""
        y = self.post_norm(hidden[:, 0])
        return (self.head(y, dtype) if self.head is not None else y).astype(dtype)
