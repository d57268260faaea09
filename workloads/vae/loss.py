"""The VAE's objective (Kingma & Welling 2014, arXiv:1312.6114, Eq. 10 and Appendix B), as a loss to minimise:

    −ELBO_β(x) = −log p(x|z) + β·KL(q(z|x) ‖ N(0, I)),   z = μ + σ·ε, ε ~ N(0, I)  (one sample, L = 1)

per image, summed over pixels and latent dimensions, averaged over the batch (nats per image). The decoder
gives one logit per pixel ℓ; the pixel's mean is sigmoid(ℓ). Targets are pixels in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from workloads.dist import autocast_disabled


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per row (N,): ½·Σ_j (μ_j² + σ_j² − 1 − log σ_j²), K&W Appendix B."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def log_likelihood(logits: Tensor, target: Tensor, likelihood: str, sigma: float = 0.1) -> Tensor:
    """log p(x|z) per image (N,), summed over its pixels.

    "bernoulli": Σ x·log m + (1 − x)·log(1 − m) with m = sigmoid(ℓ), the cross-entropy K&W use for MNIST
    (grey levels in [0, 1] as probabilities). "gaussian": Σ log N(x; m, σ²) with a fixed σ, a density.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits and target must have the same shape; got {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    if likelihood == "bernoulli":
        per_pixel = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif likelihood == "gaussian":
        per_pixel = (-(target - torch.sigmoid(logits)).pow(2) / (2.0 * sigma**2)
                     - math.log(sigma) - 0.5 * math.log(2.0 * math.pi))
    else:
        raise ValueError(f"likelihood must be 'bernoulli' or 'gaussian'; got {likelihood!r}")
    return per_pixel.flatten(1).sum(dim=1)


def negative_elbo(logits: Tensor, target: Tensor, mu: Tensor, logvar: Tensor, beta: float = 1.0,
                  likelihood: str = "bernoulli", sigma: float = 0.1) -> Tensor:
    """Mean over the batch of −log p(x|z) + β·KL(q(z|x) ‖ N(0, I)); with β = 1 the negative ELBO.

    ``logits`` and ``target`` (N, C, H, W), ``mu`` and ``logvar`` (N, D). In (at least) float32 even under
    autocast: sums over hundreds of pixels.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0; got beta={beta}")
    if mu.dim() != 2 or mu.shape != logvar.shape or mu.shape[0] != logits.shape[0]:
        raise ValueError(f"mu and logvar must both be (N, D) with N = {logits.shape[0]}; got {tuple(mu.shape)} "
                         f"and {tuple(logvar.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with autocast_disabled(logits.device.type):
        nll = -log_likelihood(logits.to(dtype), target.to(dtype), likelihood, sigma)  # (N,)
        kl = gaussian_kl(mu.to(dtype), logvar.to(dtype))  # (N,)
        return (nll + beta * kl).mean()
