"""Small NNX building blocks with explicit precision (spec/wan.md "Precision").

Linear computes in the run-time dtype with float32 accumulation; the norms always compute in float32
and return the input dtype (Wan's rule: norms, modulation, RoPE and time embedding in fp32).
Parameters: Linear ``kernel`` [in, out] (PyTorch's weight transposed) and ``bias``; norms ``scale``
(PyTorch ``weight``) and ``bias``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

F32 = jnp.float32


def matmul(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """``x @ kernel`` with both operands in the compute ``dtype`` and a float32 result (float32 accumulation).

    The backward runs its two matmuls in ``dtype`` with float32 accumulation too: JAX's own transpose of
    a mixed-precision dot multiplies the float32 output cotangent with the operand upcast to float32,
    so under bf16 compute every backward matmul ran in float32 (half or less of the bf16 tensor-core
    rate) and FSDP gathered float32 kernels for it. The output cotangent is rounded to ``dtype`` (exact
    where the caller casts the result to ``dtype``, as Linear does); the kernel gradient comes back in
    the kernel's own dtype (float32 masters keep a float32-accumulated gradient)."""
    return _matmul(jnp.dtype(dtype).name, jnp.dtype(x.dtype).name, jnp.dtype(kernel.dtype).name, x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _matmul(dtype: str, x_dtype: str, k_dtype: str, x, kernel):
    return jnp.dot(x.astype(dtype), kernel.astype(dtype), preferred_element_type=F32)


def _matmul_fwd(dtype, x_dtype, k_dtype, x, kernel):
    xc, kc = x.astype(dtype), kernel.astype(dtype)
    return jnp.dot(xc, kc, preferred_element_type=F32), (xc, kc)


def _matmul_bwd(dtype, x_dtype, k_dtype, res, g):
    xc, kc = res
    g = g.astype(dtype)
    lead = tuple(range(g.ndim - 1))
    dx = jax.lax.dot_general(g, kc, (((g.ndim - 1,), (1,)), ((), ())), preferred_element_type=F32)
    dk = jax.lax.dot_general(xc, g, ((lead, lead), ((), ())), preferred_element_type=F32)
    return dx.astype(x_dtype), dk.astype(k_dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


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
        y = matmul(x, self.kernel[...], dtype)
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
