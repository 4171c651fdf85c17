"""The PyTorch reference for parity checks and benchmarks: diffusers ``AutoencoderKLWan`` built from a
:class:`VAEConfig`, and its weights as our parameters (needs torch and diffusers; imported lazily)."""
from __future__ import annotations

import numpy as np

from yume_jax.vae.config import VAEConfig


def diffusers_model(cfg: VAEConfig, seed: int = 0, perturb: float = 0.1, device: str = "cpu", dtype=None):
    """A randomly initialised diffusers VAE with ``cfg``; ``perturb`` adds noise to RMS gammas and biases
    (which diffusers initialises to 1 and 0) so that every parameter takes part in a parity check."""
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    kw = {k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")}
    with torch.device(device):
        m = AutoencoderKLWan(**kw)
    if perturb:
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.endswith(("gamma", "bias")):
                    p.add_(perturb * torch.randn_like(p))
    m = m.eval()
    return m.to(dtype) if dtype is not None else m


def params_from_diffusers(model, cfg: VAEConfig) -> dict[str, np.ndarray]:
    """Our flat parameters from a diffusers state dict (the conversion ops, applied in memory)."""
    import torch

    from yume_jax.vae.names import entries, to_jax

    sd = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in model.state_dict().items()}
    return {e.jax: to_jax(e.kind)([sd[e.diffusers]]) for e in entries(cfg)}
