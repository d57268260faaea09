"""torch.distributed helpers that fall back to single-process behaviour.

Nothing here knows about Ray: Ray Train initialises the default process group and these helpers only
read it, so the same code runs in a plain script, under torchrun, or inside a Ray Train worker.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist


def _is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group; 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if _is_initialized() else 1


def rank() -> int:
    """Rank of this process in the default group; 0 when torch.distributed is not initialised."""
    return dist.get_rank() if _is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the gradients of every rank for this rank's rows.

    Every rank uses the gathered tensor in its own loss, so the gradient for rank r's rows is the sum
    of the gradients that all ranks computed for them. A backward that only returns the local slice
    of the local gradient drops the other ranks' contributions.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.world_size = dist.get_world_size()
        ctx.rank = dist.get_rank()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(ctx.world_size)]
        dist.all_gather(parts, x)  # W x (N, ...); collective sizes must be equal on every rank
        return torch.cat(parts, dim=0)  # (W*N, ...)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        # all_reduce is in place: work on a copy, autograd may share `grad` with other consumers.
        grad = grad.contiguous().clone()  # (W*N, ...)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        n = grad.shape[0] // ctx.world_size
        return grad[ctx.rank * n : (ctx.rank + 1) * n]  # (N, ...)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, keeping the gradient path to every rank's rows.

    All ranks must pass tensors of the same shape. Ordered by rank: rows [r*N, (r+1)*N) come from
    rank r. In a single process (not initialised, or world size 1) `x` is returned unchanged.
    """
    if world_size() == 1:
        return x
    out: torch.Tensor = _GatherWithGrad.apply(x)
    return out


class _AllReduceWithGrad(torch.autograd.Function):
    """all_reduce (sum) whose backward is an all_reduce (sum) of every rank's gradient.

    y = Σ_r x_r on every rank, and every rank's loss may use y, so the gradient of x_r is Σ_s ∂L_s/∂y.
    When each rank's loss is the same function of y (a loss over the global batch), that is W·∂L/∂y, and
    DDP's average over the W ranks brings the parameters' gradients back to one process's. torch's in-place
    ``all_reduce``, which autograd does not see, drops the other ranks' share: 1/W of the gradients when the
    loss is a function of the sum, plain wrong ones when sums are nested.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous().clone()  # all_reduce is in place; the input may be needed by its own backward
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # autograd may share `grad` with other consumers
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over every rank, on every rank, with the gradient path to every rank's ``x``.

    For statistics of the global batch computed from each rank's local sums (Barlow Twins' batch norm and
    cross-correlation): the local parts need not have the same number of rows, only ``x`` the same shape.
    One process (not initialised, or world size 1): ``x`` itself.
    """
    if world_size() == 1:
        return x
    out: torch.Tensor = _AllReduceWithGrad.apply(x)
    return out


@torch.no_grad()
def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, in rank order, without gradient.

    For keys, embeddings and images, which carry no gradient (``gather_with_grad`` is the one with a
    backward). Every rank must pass the same shape. One process: ``x`` itself.
    """
    world = world_size()
    if world == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)  # W x (N, ...)
    return torch.cat(parts)  # (W*N, ...)


def autocast_disabled(device_type: str) -> AbstractContextManager[object]:
    """Turn autocast off for this device type (a no-op where the device has no autocast): losses
    compute in float32 whatever the forward ran in."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()
