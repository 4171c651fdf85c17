"""Anti-Artifact Mechanism (AAM, paper Sec. 5.3; spec/yume.md "Sampling") with a real low-pass projector.

Pass 1 samples z_first from the noise eps. Pass 2 restarts from the same eps and, before each of its first
K steps, replaces the latent by

    P(sigma_i * eps + (1 - sigma_i) * z_first) + (I - P) x_i

(low frequencies from the re-noised first pass, high frequencies from the current latent). The public code
builds P from a full-rank blur through an SVD pseudo-inverse, so P = I there and AAM degenerates into a
restart from the re-noised first pass; here P is an orthogonal projector over the two spatial axes:

- ``lowpass_fft``: keeps the spatial frequencies with radius |f| / 0.5 <= cutoff (cutoff as a fraction of
  Nyquist), removes all others: P x differs from x only above the cutoff, and P P = P;
- ``lowpass_pool``: average-pool by ``factor`` then nearest upsample (blocks at the border are smaller when
  the size is not a multiple); P P = P, P is symmetric and keeps every block mean.

Spatial axes default to (-2, -1): latents in the DiT's layout [B, C, F, H, W] (yume_jax/models/loader.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

PROJECTORS = ("fft", "pool")


def _norm_axes(x, axes):
    axes = tuple(a % x.ndim for a in axes)
    if len(axes) != 2 or axes[0] == axes[1]:
        raise ValueError(f"spatial axes must be two distinct axes of the latents, got {axes}")
    return axes


def fft_mask(h: int, w: int, cutoff: float) -> np.ndarray:
    """[h, w // 2 + 1] boolean mask of the kept rfft2 bins: radius (in units of Nyquist) <= cutoff."""
    fh = np.fft.fftfreq(h)[:, None] / 0.5
    fw = np.fft.rfftfreq(w)[None, :] / 0.5
    return np.sqrt(fh**2 + fw**2) <= cutoff


def lowpass_fft(x, cutoff: float, axes=(-2, -1)):
    """Orthogonal spatial low-pass: zero every frequency above ``cutoff`` (fraction of Nyquist)."""
    ah, aw = _norm_axes(x, axes)
    y = jnp.moveaxis(x.astype(jnp.float32), (ah, aw), (-2, -1))
    h, w = y.shape[-2:]
    spec = jnp.fft.rfft2(y) * fft_mask(h, w, cutoff)
    y = jnp.fft.irfft2(spec, s=(h, w))
    return jnp.moveaxis(y, (-2, -1), (ah, aw)).astype(x.dtype)


def lowpass_pool(x, factor: int, axes=(-2, -1)):
    """Orthogonal projector onto images constant on factor x factor blocks: block mean, then replicate."""
    ah, aw = _norm_axes(x, axes)
    y = jnp.moveaxis(x.astype(jnp.float32), (ah, aw), (-2, -1))
    h, w = y.shape[-2:]
    hb, wb = -(-h // factor), -(-w // factor)
    pad = [(0, 0)] * (y.ndim - 2) + [(0, hb * factor - h), (0, wb * factor - w)]
    sums = jnp.pad(y, pad).reshape(y.shape[:-2] + (hb, factor, wb, factor)).sum((-3, -1))
    counts = np.pad(np.ones((h, w)), pad[-2:]).reshape(hb, factor, wb, factor).sum((1, 3))
    up = jnp.repeat(jnp.repeat(sums / counts, factor, -2), factor, -1)[..., :h, :w]
    return jnp.moveaxis(up, (-2, -1), (ah, aw)).astype(x.dtype)


def projector(kind: str = "fft", *, cutoff: float = 0.25, factor: int = 4, axes=(-2, -1)):
    """The projector P as a function x -> P x."""
    if kind == "fft":
        if not 0 < cutoff <= np.sqrt(2):
            raise ValueError(f"AAM fft cutoff must be in (0, sqrt(2)] (fraction of Nyquist), got {cutoff!r}")
        return functools.partial(lowpass_fft, cutoff=cutoff, axes=axes)
    if kind == "pool":
        if int(factor) != factor or factor < 2:
            raise ValueError(f"AAM pool factor must be an integer >= 2, got {factor!r}")
        return functools.partial(lowpass_pool, factor=int(factor), axes=axes)
    raise ValueError(f"AAM projector must be one of {PROJECTORS}, got {kind!r}")


def mix(project, renoised, x):
    """P renoised + (I - P) x."""
    return project(renoised) + (x - project(x))


def sample(run, noise, sigmas, *, steps: int, project):
    """AAM around a sampler ``run(x, pre=None) -> x0`` (same key and frozen region in both passes).

    ``steps`` is K: the number of leading pass-2 steps whose latent is replaced. K = 0 returns exactly the
    plain sample from ``noise`` (pass 2 then never replaces anything).
    """
    n = len(sigmas) - 1
    if int(steps) != steps or not 0 <= steps <= n:
        raise ValueError(f"AAM steps K must be an integer in [0, {n}], got {steps!r}")
    sigmas = jnp.asarray(sigmas, jnp.float32)
    z_first = run(noise)

    def pre(i, x):
        renoised = (sigmas[i] * noise + (1.0 - sigmas[i]) * z_first).astype(x.dtype)
        return jax.lax.cond(i < steps, lambda: mix(project, renoised, x).astype(x.dtype), lambda: x)

    return run(noise, pre=pre)
