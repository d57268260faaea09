"""Barlow Twins' loss (Zbontar et al. 2021, arXiv:2103.03230, Eq. 1 and Algorithm 1) over the global batch.

The two views' embeddings are batch-normalised over the whole global batch, their cross-correlation matrix is
taken over it, and the loss pushes its diagonal to 1 and its off-diagonal entries to 0. The normalisation is
the reference code's (facebookresearch/barlowtwins ``main.py``: ``BatchNorm1d(affine=False)`` in training
mode, biased variance and eps 1e-5, synchronised across GPUs), where Algorithm 1 divides by ``std``
(unbiased, no eps). Batch and world size come from the tensors and torch.distributed, never from config.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workloads import dist
from workloads.barlowtwins.config import LAMBDA
from workloads.joint_embedding import off_diagonal_square_sum

BN_EPS = 1e-5  # nn.BatchNorm1d's default eps, the reference's normalisation layer


def barlow_twins_loss(z0: Tensor, z1: Tensor, lambd: float = LAMBDA) -> Tensor:
    """Σ_i (1 − C_ii)² + λ·Σ_{i≠j} C_ij² of the two views' embeddings ``z0``, ``z1`` (N, D) of N local images.

    C (D, D) is the cross-correlation of the embeddings normalised over the global batch of W·N images
    (W workers), computed from every worker's local sums: each all-reduce carries its gradient back to
    every worker (``dist.all_reduce_with_grad``), so every worker's loss is the loss of the global batch
    and, after DDP averages the gradients, W workers train exactly as one process on all W·N images
    (the reference all-reduces C with torch's in-place all_reduce, which autograd does not see: its
    gradients are 1/W of this).

    Computed in (at least) float32 even under autocast: C's entries are sums over the batch of products
    of unit-variance values.
    """
    if not lambd >= 0:  # also rejects NaN
        raise ValueError(f"lambd must be >= 0 (the off-diagonal weight, 0.0051 in Barlow Twins), got {lambd}")
    if z0.dim() != 2 or z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must both be (N, D), got {tuple(z0.shape)} and {tuple(z1.shape)}")
    n, d = z0.shape
    if n < 1 or n * dist.world_size() < 2:
        raise ValueError(f"Barlow Twins normalises over the batch: the global batch needs at least 2 rows, got "
                         f"{n} on each of {dist.world_size()} worker(s)")
    dtype = torch.promote_types(z0.dtype, torch.float32)  # half/bfloat16 -> float32, float64 kept
    with dist.autocast_disabled(z0.device.type):
        z = torch.cat([z0, z1], dim=1).to(dtype)  # N x 2D: both views' statistics in one all-reduce each
        # the global batch's column sums and its size in one all-reduce (the count carries no gradient)
        totals = dist.all_reduce_with_grad(torch.cat([z.sum(dim=0), z.new_full((1,), float(n))]))  # 2D + 1
        n_all = totals[-1].detach()  # W·N
        centred = z - totals[:-1] / n_all  # N x 2D
        var = dist.all_reduce_with_grad(centred.pow(2).sum(dim=0)) / n_all  # 2D: biased, as BatchNorm trains
        a, b = (centred * torch.rsqrt(var + BN_EPS)).split(d, dim=1)  # N x D each, normalised over W·N rows
        c = dist.all_reduce_with_grad(a.T @ b) / n_all  # D x D cross-correlation of the global batch
        on_diag = (c.diagonal() - 1.0).pow(2).sum()
        return on_diag + lambd * off_diagonal_square_sum(c)
