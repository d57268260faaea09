"""SwAV's codes and loss (Caron et al. 2020, arXiv:2006.09882, §3.1 and Algorithm 1; facebookresearch/swav
main_swav.py ``distributed_sinkhorn`` and the loss loop in ``train``).

Batch size, number of prototypes and world size are read from the tensors and from ``torch.distributed``
on every call, never from config; one process needs no process group.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor

from workloads import dist
from workloads.dist import autocast_disabled


def _all_reduce(x: Tensor, op: tdist.ReduceOp.RedOpType = tdist.ReduceOp.SUM) -> Tensor:
    if dist.world_size() > 1:
        tdist.all_reduce(x, op=op)
    return x


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """Codes Q (B, K) for this worker's B rows of ``scores`` (B, K), balanced over the K prototypes across
    the rows of every worker together: each row sums to 1, each prototype gets 1/K of the global mass.

    Q = exp(scores / ε)ᵀ (K x B), divided by its total; then ``iterations`` times: rows (prototypes)
    divided by their sums and by K, columns (samples) by theirs and by B_global = B x world. The total and
    the row sums are all-reduced, the column sums are each sample's own, so W workers with B rows give the
    rows that one process computes on all W·B. No gradient; computed in float32 at least, even under
    autocast. The scores are shifted by their global maximum first: the first normalisation cancels any
    constant, and exp stays finite for a small ε (the reference relies on |scores| <= 1).
    """
    if not epsilon > 0:  # also rejects NaN
        raise ValueError(f"epsilon must be > 0, got {epsilon}; SwAV uses 0.05")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}; SwAV uses 3")
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be (B, K) with B >= 1, got {tuple(scores.shape)}")
    dtype = torch.promote_types(scores.dtype, torch.float32)
    with autocast_disabled(scores.device.type):
        s = scores.detach().to(dtype)
        top = _all_reduce(s.max().clone(), tdist.ReduceOp.MAX)
        q = torch.exp((s - top) / epsilon).T  # K x B
        k, b = q.shape[0], q.shape[1] * dist.world_size()
        q /= _all_reduce(q.sum())
        for _ in range(iterations):
            q /= _all_reduce(q.sum(dim=1, keepdim=True))  # each prototype: 1/K of the mass
            q /= k
            q /= q.sum(dim=0, keepdim=True)  # each sample: 1/B of the mass
            q /= b
        return (q * b).T  # B x K, rows sum to 1


def swapped_prediction(scores: list[Tensor], codes: list[Tensor], temperature: float) -> Tensor:
    """SwAV's loss: the mean over every (assigned crop i, other crop v ≠ i) pair of
    −mean_b Σ_k q_i[b, k] · log softmax(scores_v[b] / τ)[k].

    ``scores`` holds every crop's (B, K) prototype scores, large crops first; ``codes[i]`` (B, K) the
    codes of crop i (SwAV: the large crops). Averaged over this worker's rows: with DDP averaging the
    gradients, W workers train as one process on all rows. Float32 at least, even under autocast.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; SwAV uses 0.1")
    if len(scores) < 2 or not 1 <= len(codes) <= len(scores):
        raise ValueError(f"need >= 2 crops and 1..crops codes; got {len(scores)} crops and {len(codes)} codes")
    if any(s.shape != scores[0].shape for s in scores) or any(q.shape != scores[0].shape for q in codes):
        raise ValueError(f"every crop's scores and codes must be (B, K) alike; got "
                         f"{[tuple(s.shape) for s in scores]} and {[tuple(q.shape) for q in codes]}")
    dtype = torch.promote_types(scores[0].dtype, torch.float32)
    with autocast_disabled(scores[0].device.type):
        log_p = [F.log_softmax(s.to(dtype) / temperature, dim=1) for s in scores]  # V x (B x K)
        terms = [-(q.to(dtype) * log_p[v]).sum(dim=1).mean()
                 for i, q in enumerate(codes) for v in range(len(scores)) if v != i]
        return torch.stack(terms).mean()
