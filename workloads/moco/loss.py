"""InfoNCE with a queue of negatives, the MoCo loss (He et al. 2020, arXiv:1911.05722, Eq. 1 and Algorithm 1).

Batch size and queue size are read from the tensors on every call, never from config.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from workloads.dist import autocast_disabled


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """Mean over the N queries of −log( exp(q·k₊/τ) / (exp(q·k₊/τ) + Σ_j exp(q·queue_j/τ)) ).

    ``q`` (N, D) queries and ``k`` (N, D) their positive keys, row by row; ``queue`` (K, D) the negatives.
    The inputs are used as given (MoCo L2-normalises them in the encoders); the logits are
    [q·k, q·queueᵀ] / τ with the positive in column 0, so the loss is a (K+1)-way cross-entropy with
    label 0. Averaged over the local queries: with DDP averaging gradients, W workers train as one.

    Computed in (at least) float32 even under autocast, as ``nt_xent`` is: logits of unit vectors divided
    by τ = 0.07–0.2 lose too much precision in half precision. Pass ``queue`` detached and cloned when
    the caller updates it in place before ``backward`` (the matmul keeps it for q's gradient).
    """
    if not temperature > 0:  # also rejects NaN
        raise ValueError(f"temperature must be > 0, got {temperature}; MoCo v2 uses 0.2")
    if q.dim() != 2 or q.shape != k.shape:
        raise ValueError(f"q and k must both be (N, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[0] < 1:
        raise ValueError("q and k must hold at least one row (N >= 1), got N = 0")
    if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be (K, {q.shape[1]}) like q's rows, got {tuple(queue.shape)}")

    dtype = torch.promote_types(q.dtype, torch.float32)  # half/bfloat16 -> float32, float64 kept
    with autocast_disabled(q.device.type):
        q, k, queue = q.to(dtype), k.to(dtype), queue.to(dtype)
        l_pos = (q * k).sum(dim=1, keepdim=True)  # positive logits: N x 1
        l_neg = q @ queue.T  # negative logits: N x K
        logits = torch.cat([l_pos, l_neg], dim=1).div_(temperature)  # N x (1+K)
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is column 0
        return F.cross_entropy(logits, labels)
