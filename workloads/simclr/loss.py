"""NT-Xent, the SimCLR contrastive loss (Chen et al. 2020, arXiv:2002.05709, Algorithm 1).

Batch size and world size are read from the tensors and from torch.distributed on every call, never
from config, so the last (smaller) batch and any number of workers give the right loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from workloads import dist


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float, gather: bool = True,
            chunk_rows: int = 0) -> torch.Tensor:
    """NT-Xent loss of two views `z0`, `z1` (N, D) of the same N local images.

    For each of the 2N local anchors the positive is the other view of the same image and the
    negatives are every other embedding of the global batch (2·N·W − 2 of them when `gather` and
    W > 1 workers). Returns the cross-entropy averaged over the local 2N anchors: with DDP averaging
    the gradients over W workers this equals one process on all W·N images.

    Computed in (at least) float32 even under autocast: logits of normalised vectors divided by a
    small τ lose too much precision in half precision.

    `chunk_rows` > 0 computes the logits `chunk_rows` anchor rows at a time and recomputes each block
    in backward instead of keeping the (2N, 2·W·N) matrix and its softmax: peak memory
    O(chunk_rows · 2·W·N) instead of about 3 × 2N · 2·W·N floats, for one more matmul. Same loss and
    gradients to float rounding. 0 (the default) keeps the whole matrix.
    """
    if not temperature > 0:  # also rejects NaN
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 0:
        raise ValueError(f"chunk_rows must be an int >= 0 (0: no chunking, e.g. 1024), got {chunk_rows!r}")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.dim() != 2:
        raise ValueError(f"z0 and z1 must be 2-D (N, D), got shape {tuple(z0.shape)}")
    n = z0.shape[0]
    if n < 1:
        raise ValueError("z0 and z1 must hold at least one row (N >= 1), got N = 0")

    dtype = torch.promote_types(z0.dtype, torch.float32)  # half/bfloat16 -> float32, float64 kept
    with dist.autocast_disabled(z0.device.type):
        z0 = F.normalize(z0.to(dtype), dim=1)  # (N, D)
        z1 = F.normalize(z1.to(dtype), dim=1)  # (N, D)

        if gather and dist.world_size() > 1:
            z0_all = dist.gather_with_grad(z0)  # (W*N, D)
            z1_all = dist.gather_with_grad(z1)  # (W*N, D)
            offset = dist.rank() * n
        else:
            z0_all, z1_all, offset = z0, z1, 0
        n_all = z0_all.shape[0]  # W*N

        anchors = torch.cat([z0, z1], dim=0)  # (2N, D): local rows only
        # (2*W*N, D): [z0 of ranks 0..W-1, z1 of ...]; without a gather, the anchors themselves
        candidates = anchors if z0_all is z0 else torch.cat([z0_all, z1_all], dim=0)

        # Column of each local anchor itself and of its positive (the other view of the same image).
        idx = torch.arange(n, device=z0.device) + offset  # (N,)
        self_cols = torch.cat([idx, idx + n_all])  # (2N,)
        pos_cols = torch.cat([idx + n_all, idx])  # (2N,)
        if chunk_rows:
            loss: torch.Tensor = _ChunkedNTXent.apply(anchors, candidates, self_cols, pos_cols, temperature,
                                                      chunk_rows)
            return loss

        logits = _masked_logits(anchors, candidates, self_cols, temperature)  # (2N, 2*W*N)
        return F.cross_entropy(logits, pos_cols)  # mean over the 2N local anchors


def _masked_logits(anchors: torch.Tensor, candidates: torch.Tensor, self_cols: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """Logits of anchors (M, D) against all candidates (2*W*N, D), each anchor's own column at -inf.

    The self-similarity is not a negative: -inf gives it zero weight in the softmax and zero gradient;
    every row keeps its finite positive, so no NaN. Both steps work in place on the matmul output
    (neither backward needs it): no second (M, 2*W*N) float tensor and no (M, 2*W*N) mask, which
    as an int64 one-hot cost twice the logits' memory and made the loss slower than the naive one.
    """
    logits = (anchors @ candidates.T).div_(temperature)  # (M, 2*W*N)
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    logits[rows, self_cols] = float("-inf")
    return logits


class _ChunkedNTXent(torch.autograd.Function):
    """Mean over anchors of logsumexp(logits) − positive logit, a block of anchor rows at a time.

    Forward keeps only each anchor's logsumexp (2N,); backward recomputes every block's logits and
    forms dL/dlogits = (softmax − onehot(positive)) / 2N in place, so no (2N, 2·W·N) tensor ever
    exists: activation recomputation applied to the loss, one more (M, D) × (D, 2·W·N) matmul per block.
    """

    @staticmethod
    def forward(ctx: Any, anchors: torch.Tensor, candidates: torch.Tensor, self_cols: torch.Tensor,
                pos_cols: torch.Tensor, temperature: float, chunk_rows: int) -> torch.Tensor:
        lse = anchors.new_empty(anchors.shape[0])  # (2N,)
        total = anchors.new_zeros(())
        for start in range(0, anchors.shape[0], chunk_rows):
            block = slice(start, start + chunk_rows)
            logits = _masked_logits(anchors[block], candidates, self_cols[block], temperature)  # (M, 2*W*N)
            lse[block] = torch.logsumexp(logits, dim=1)
            positive = logits.gather(1, pos_cols[block].unsqueeze(1)).squeeze(1)  # (M,)
            total += (lse[block] - positive).sum()
        ctx.save_for_backward(anchors, candidates, self_cols, pos_cols, lse)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return total / anchors.shape[0]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        anchors, candidates, self_cols, pos_cols, lse = ctx.saved_tensors
        temperature, chunk_rows = ctx.temperature, ctx.chunk_rows
        with dist.autocast_disabled(anchors.device.type):  # backward may be called inside an autocast region
            scale = grad.to(anchors.dtype) / (anchors.shape[0] * temperature)  # d(mean)/d(row loss), d(logit)/d(sim)
            grad_anchors = torch.empty_like(anchors)  # (2N, D)
            grad_candidates = torch.zeros_like(candidates)  # (2*W*N, D)
            for start in range(0, anchors.shape[0], chunk_rows):
                block = slice(start, start + chunk_rows)
                a = anchors[block]  # (M, D)
                g = _masked_logits(a, candidates, self_cols[block], temperature)  # (M, 2*W*N)
                g.sub_(lse[block].unsqueeze(1)).exp_()  # softmax; the masked column is exp(-inf) = 0
                rows = torch.arange(a.shape[0], device=a.device)
                g[rows, pos_cols[block]] -= 1.0  # softmax − onehot(positive)
                g.mul_(scale)  # dL/d(anchor · candidate)
                grad_anchors[block] = g @ candidates
                grad_candidates.addmm_(g.T, a)
        return grad_anchors, grad_candidates, None, None, None, None


class NTXentLoss(torch.nn.Module):
    """Module wrapper of `nt_xent` holding the temperature and whether to gather across workers."""

    def __init__(self, temperature: float = 0.5, gather: bool = True, chunk_rows: int = 0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(
                f"temperature must be > 0, got {temperature}; SimCLR uses 0.1-0.5 (0.5 for CIFAR-10)"
            )
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 0:
            raise ValueError(f"chunk_rows must be an int >= 0 (0: no chunking, e.g. 1024), got {chunk_rows!r}")
        self.temperature = temperature
        self.gather = gather
        self.chunk_rows = chunk_rows

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Loss of the two views (N, D); see `nt_xent`."""
        return nt_xent(z0, z1, self.temperature, self.gather, self.chunk_rows)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}, chunk_rows={self.chunk_rows}"
