"""Small NNX building blocks with explicit precision (spec/wan.md "Precision").

Linear computes in the run-time dtype with float32 accumulation; the norms always compute in float32
and return the input dtype (Wan's rule: norms, modulation, RoPE and time embedding in fp32).
Parameters: Linear ``kernel`` [in, out] (PyTorch's weight transposed) and ``bias``; norms ``scale``
(PyTorch ``weight``) and ``bias``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

F32 = jnp.float32


def _uniform(key, shape, bound, dtype):
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class Linear(nnx.Module):
    """y = x @ kernel + bias in ``dtype`` (PyTorch's default init: U(+-1/sqrt(fan_in)))."""

    def __init__(self, fan_in: int, fan_out: int, *, rngs: nnx.Rngs, param_dtype=F32, bias: bool = True):
        bound = fan_in ** -0.5
        self.kernel = nnx.Param(_uniform(rngs.params(), (fan_in, fan_out), bound, param_dtype))
        self.bias = nnx.Param(_uniform(rngs.params(), (fan_out,), bound, param_dtype)) if bias else None

    def __call__(self, x: jax.Array, dtype=None) -> jax.Array:
        dtype = dtype or x.dtype
        y = jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype), preferred_element_type=F32)
        if self.bias is not None:
            y = y + self.bias[...].astype(F32)
        return y.astype(dtype)


def layer_norm(x: jax.Array, eps: float, scale=None, bias=None) -> jax.Array:
    """LayerNorm in float32 (biased variance, as torch); returns float32."""
    x = x.astype(F32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mean
    var = jnp.mean(jnp.square(xc), axis=-1, keepdims=True)
    y = xc * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale.astype(F32)
    if bias is not None:
        y = y + bias.astype(F32)
    return y


class LayerNorm(nnx.Module):
    """Affine LayerNorm computed in float32, returned in float32."""

    def __init__(self, dim: int, eps: float, *, param_dtype=F32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.eps, self.scale[...], self.bias[...])


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis (Wan applies it to q and k over ALL heads together)."""

    def __init__(self, dim: int, eps: float, *, param_dtype=F32):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(F32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(F32)).astype(x.dtype)


def gelu_tanh(x):
    return jax.nn.gelu(x, approximate=True)


def gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)
