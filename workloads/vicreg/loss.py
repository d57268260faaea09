"""VICReg's loss (Bardes et al. 2022, arXiv:2105.04906, Eqs. 1-6 and Algorithm 1) over the global batch.

Invariance: the mean squared error between the two views' embeddings. Variance: a hinge keeping each
dimension's standard deviation over the batch at 1 or more. Covariance: the squared off-diagonal entries of
each view's covariance matrix, divided by the dimension. As the reference code (facebookresearch/vicreg
``main_vicreg.py``), the variance term is the mean of the two views' hinges, where Algorithm 1 and Eq. 6 sum
them (so the code's 25 is 12.5 per view there; solo-learn sums, as the paper). Batch and world size come
from the tensors and torch.distributed, never from config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workloads import dist
from workloads.joint_embedding import off_diagonal_square_sum
from workloads.vicreg.config import COV_COEFF, SIM_COEFF, STD_COEFF

VAR_EPS = 1e-4  # ε inside the standard deviation (Eq. 1): keeps its gradient finite at zero variance
VAR_TARGET = 1.0  # γ, the standard deviation each dimension is held at (Eq. 1)


def variance_term(z: Tensor) -> Tensor:
    """v(Z) = mean over the D dimensions of max(0, γ − sqrt(Var(z_j) + ε)), Var unbiased over the N rows."""
    std = torch.sqrt(z.var(dim=0) + VAR_EPS)  # D
    return F.relu(VAR_TARGET - std).mean()


def covariance_term(z: Tensor) -> Tensor:
    """c(Z) = Σ_{i≠j} C(Z)_ij² / D with C(Z) the (D, D) covariance over the N rows (divided by N − 1)."""
    n, d = z.shape
    centred = z - z.mean(dim=0)  # N x D
    cov = (centred.T @ centred) / (n - 1)  # D x D
    return off_diagonal_square_sum(cov) / d


def vicreg_loss(z0: Tensor, z1: Tensor, sim_coeff: float = SIM_COEFF, std_coeff: float = STD_COEFF,
                cov_coeff: float = COV_COEFF) -> Tensor:
    """λ·s(Z, Z′) + μ·(v(Z) + v(Z′))/2 + ν·(c(Z) + c(Z′)) of the embeddings ``z0``, ``z1`` (N, D) of N local
    images, every term over the global batch of W·N images (W workers).

    The embeddings are all-gathered from every worker with the gradient path back to each worker's rows
    (``dist.gather_with_grad``, as NT-Xent's negatives), so every worker's loss is the loss of the global batch
    and, after DDP averages the gradients, W workers train exactly as one process on all W·N images. Every
    worker must pass the same N (the stream drops the last, smaller batch). Computed in (at least) float32
    even under autocast: the covariance sums products over the batch.
    """
    for name, coeff in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
        if not coeff >= 0:  # also rejects NaN
            raise ValueError(f"{name} must be >= 0 (VICReg: 25, 25, 1), got {coeff}")
    if z0.dim() != 2 or z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must both be (N, D), got {tuple(z0.shape)} and {tuple(z1.shape)}")
    n, d = z0.shape
    if n < 1 or n * dist.world_size() < 2:
        raise ValueError(f"VICReg's variance and covariance need at least 2 rows in the global batch, got {n} on "
                         f"each of {dist.world_size()} worker(s)")
    dtype = torch.promote_types(z0.dtype, torch.float32)  # half/bfloat16 -> float32, float64 kept
    with dist.autocast_disabled(z0.device.type):
        z = dist.gather_with_grad(torch.cat([z0, z1], dim=1).to(dtype))  # W·N x 2D: both views, one gather
        a, b = z.split(d, dim=1)  # W·N x D each, rows in rank order
        invariance = F.mse_loss(a, b)
        variance = (variance_term(a) + variance_term(b)) / 2
        covariance = covariance_term(a) + covariance_term(b)
        return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
