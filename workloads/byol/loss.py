"""BYOL's loss (Grill et al. 2020, arXiv:2006.07733, Eq. 2 and Algorithm 1): the mean squared error between
the L2-normalised online prediction and the L2-normalised target projection, 2 − 2·cos(p, z′), symmetrised
over the two views. No negatives; batch size is read from the tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workloads.dist import autocast_disabled


def normalized_mse(p: Tensor, z: Tensor) -> Tensor:
    """Mean over the N rows of ‖p/‖p‖ − z/‖z‖‖² = 2 − 2·cos(p, z); ``z`` (the target) gets no gradient.

    In (at least) float32 even under autocast, as the other losses here: the difference of two unit
    vectors that agree to a few percent loses its digits in half precision.
    """
    if p.dim() != 2 or p.shape != z.shape:
        raise ValueError(f"p and z must both be (N, D), got {tuple(p.shape)} and {tuple(z.shape)}")
    if p.shape[0] < 1:
        raise ValueError("p and z must hold at least one row (N >= 1), got N = 0")
    dtype = torch.promote_types(p.dtype, torch.float32)
    with autocast_disabled(p.device.type):
        p, z = F.normalize(p.to(dtype), dim=1), F.normalize(z.detach().to(dtype), dim=1)  # N x D, unit rows
        return (2.0 - 2.0 * (p * z).sum(dim=1)).mean()


def byol_loss(p0: Tensor, p1: Tensor, z0: Tensor, z1: Tensor) -> Tensor:
    """L + L̃ of BYOL: view 0's prediction against view 1's target projection, plus the swap.

    ``p0, p1`` (N, D) the online predictions of views 0 and 1, ``z0, z1`` (N, D) the target projections.
    Summed, as the paper's L_total and solo-learn's ``byol_loss_func`` over the two pairs, so the loss
    lies in [0, 8]. Averaged over the local rows: with DDP averaging gradients, W workers train as one.
    """
    return normalized_mse(p0, z1) + normalized_mse(p1, z0)
