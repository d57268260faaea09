"""NT-Xent, the SimCLR contrastive loss (Chen et al. 2020, arXiv:2002.05709, Algorithm 1).

Batch size and world size are read from the tensors and from torch.distributed on every call, never
from config, so the last (smaller) batch and any number of workers give the right loss.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from workloads import dist


def _autocast_disabled(device_type: str) -> AbstractContextManager[object]:
    """Turn autocast off for this device type (a no-op where the device has no autocast)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """NT-Xent loss of two views `z0`, `z1` (N, D) of the same N local images.

    For each of the 2N local anchors the positive is the other view of the same image and the
    negatives are every other embedding of the global batch (2·N·W − 2 of them when `gather` and
    W > 1 workers). Returns the cross-entropy averaged over the local 2N anchors: with DDP averaging
    the gradients over W workers this equals one process on all W·N images.

    Computed in (at least) float32 even under autocast: logits of normalised vectors divided by a
    small τ lose too much precision in half precision.
    """
    if not temperature > 0:  # also rejects NaN
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    if z0.dim() != 2:
        raise ValueError(f"z0 and z1 must be 2-D (N, D), got shape {tuple(z0.shape)}")
    n = z0.shape[0]
    if n < 1:
        raise ValueError("z0 and z1 must hold at least one row (N >= 1), got N = 0")

    dtype = torch.promote_types(z0.dtype, torch.float32)  # half/bfloat16 -> float32, float64 kept
    with _autocast_disabled(z0.device.type):
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
        candidates = torch.cat([z0_all, z1_all], dim=0)  # (2*W*N, D): [z0 of ranks 0..W-1, z1 of ...]
        logits = anchors @ candidates.T / temperature  # (2N, 2*W*N)

        # Column of each local anchor itself and of its positive (the other view of the same image).
        idx = torch.arange(n, device=z0.device) + offset  # (N,)
        self_cols = torch.cat([idx, idx + n_all])  # (2N,)
        pos_cols = torch.cat([idx + n_all, idx])  # (2N,)

        # The self-similarity is not a negative: -inf gives it zero weight in the softmax and zero
        # gradient; every row keeps its finite positive, so no NaN.
        self_mask = F.one_hot(self_cols, num_classes=2 * n_all).bool()  # (2N, 2*W*N)
        logits = logits.masked_fill(self_mask, float("-inf"))
        return F.cross_entropy(logits, pos_cols)  # mean over the 2N local anchors


class NTXentLoss(torch.nn.Module):
    """Module wrapper of `nt_xent` holding the temperature and whether to gather across workers."""

    def __init__(self, temperature: float = 0.5, gather: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(
                f"temperature must be > 0, got {temperature}; SimCLR uses 0.1-0.5 (0.5 for CIFAR-10)"
            )
        self.temperature = temperature
        self.gather = gather

    def forward(self, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """Loss of the two views (N, D); see `nt_xent`."""
        return nt_xent(z0, z1, self.temperature, self.gather)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}"
