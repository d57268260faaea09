"""MoCo v2 network: query encoder + MLP head, their momentum (key) copies, and the queue of negative keys.

He et al. 2020 (arXiv:1911.05722) §3.2; Chen et al. 2020 (arXiv:2003.04297) for the MLP head. Knows
nothing of the loss or the loop. The distributed parts (shuffle-BN, the queue update) read the world
size from ``torch.distributed`` and fall back to one process when it is not initialised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor, nn

from workloads import dist
from workloads.dist import all_gather
from workloads.momentum import ema_update, momentum_copy


@torch.no_grad()
def batch_shuffle(x: Tensor) -> tuple[Tensor, Tensor]:
    """Gather the global batch, permute it with rank 0's permutation and return this rank's slice.

    Returns (x_this (N, ...), idx_unshuffle (W*N,)), identical ``idx_unshuffle`` on every rank. Every rank
    draws a permutation (so each rank's RNG advances the same way, as in the reference) and rank 0's is
    broadcast. Every rank must hold the same N. One process: ``(x, arange(N))``, since BatchNorm over a
    permuted batch computes the same statistics (MoCo §3.3 shuffles *across* GPUs).
    """
    world = dist.world_size()
    if world == 1:
        return x, torch.arange(x.shape[0], device=x.device)
    x_all = all_gather(x)  # (W*N, ...)
    idx_shuffle = torch.randperm(x_all.shape[0], device=x.device)  # (W*N,)
    tdist.broadcast(idx_shuffle, src=0)
    idx_this = idx_shuffle.view(world, -1)[dist.rank()]  # (N,): global rows this rank encodes
    return x_all[idx_this], torch.argsort(idx_shuffle)


@torch.no_grad()
def batch_unshuffle(x: Tensor, idx_unshuffle: Tensor) -> Tensor:
    """Undo ``batch_shuffle``: gather the shuffled outputs and take back this rank's own rows, in order."""
    world = dist.world_size()
    if world == 1:
        return x[idx_unshuffle]
    x_all = all_gather(x)  # (W*N, ...), in shuffled order
    idx_this = idx_unshuffle.view(world, -1)[dist.rank()]  # (N,)
    return x_all[idx_this]


class MoCoModel(nn.Module):
    """Query encoder f_q (``encoder`` + ``head``), key encoder f_k (``key_encoder`` + ``key_head``), queue.

    ``forward`` gives the L2-normalised queries and is what runs through DDP; ``features`` the backbone
    features that kNN / linear evaluation use (the query encoder's, as MoCo's linear protocol does).
    f_k starts as a copy of f_q and is never trained by gradient: ``momentum_update`` moves it after
    each optimiser step. The queue (K, D) and its pointer are buffers, so checkpoints carry them.
    """

    queue: Tensor
    queue_ptr: Tensor

    def __init__(self, encoder: nn.Module, head: nn.Module, dim: int, queue_size: int,
                 shuffle_bn: bool = True) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"MoCoModel dim must be the head's positive output size; got dim={dim}.")
        if queue_size <= 0:
            raise ValueError(f"MoCoModel queue_size must be >= 1 (MoCo uses 65536, 4096 on CIFAR); "
                             f"got queue_size={queue_size}.")
        self.encoder = encoder
        self.head = head
        # f_k = f_q at initialisation (MoCo Algorithm 1), updated by momentum only
        self.key_encoder = momentum_copy(encoder)
        self.key_head = momentum_copy(head)
        self.shuffle_bn = shuffle_bn
        # random unit keys stand in for the first K negatives, as in the reference builder
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))  # K x D
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def query_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.head.parameters()]

    def key_parameters(self) -> list[nn.Parameter]:
        return [*self.key_encoder.parameters(), *self.key_head.parameters()]

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # N x F

    def forward(self, x: Tensor) -> Tensor:
        q = self.head(self.encoder(x))  # queries: N x D
        return F.normalize(q.float(), dim=1)  # float32 so the loss and the queue see full precision

    def momentum_update(self, m: float) -> None:
        """f_k ← m·f_k + (1 − m)·f_q on parameters only (MoCo Eq. 2); BatchNorm statistics stay f_k's own."""
        ema_update(self.query_parameters(), self.key_parameters(), m)

    @torch.no_grad()
    def keys(self, x: Tensor, to_input: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """L2-normalised keys (N, D), float32, of this rank's images ``x`` in their original order.

        With ``shuffle_bn`` and more than one worker, the global batch is shuffled across workers before
        f_k and unshuffled after, so the BatchNorm statistics of a key's sub-batch do not come from the
        same images as its query's: otherwise the model can "cheat" the pretext task (MoCo §3.3).
        ``to_input`` (e.g. uint8 → normalised float) runs after the shuffle, so the cross-worker gather
        can move uint8 images: 4× fewer bytes than float32. Every worker must hold the same N.
        """
        shuffle = self.shuffle_bn and dist.world_size() > 1
        idx_unshuffle = None
        if shuffle:
            x, idx_unshuffle = batch_shuffle(x)  # N x ...: a slice of the shuffled global batch
        if to_input is not None:
            x = to_input(x)
        k = self.key_head(self.key_encoder(x))  # keys: N x D
        k = F.normalize(k.float(), dim=1)
        if idx_unshuffle is not None:
            k = batch_unshuffle(k, idx_unshuffle)  # N x D, this rank's images again
        return k

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write the keys of every worker (gathered in rank order) at ``queue_ptr``; the oldest are dropped.

        The queue is a FIFO of the newest K keys. A global batch B that does not divide K wraps around
        the end (the reference asserts K % B == 0 instead); B > K keeps only the newest K keys of the
        batch. Every rank writes the same gathered keys, so queues stay identical without a broadcast.
        """
        if keys.dim() != 2 or keys.shape[1] != self.queue.shape[1]:
            raise ValueError(f"keys must be (N, {self.queue.shape[1]}); got shape {tuple(keys.shape)}.")
        keys = all_gather(keys.detach().to(self.queue.dtype))  # (W*N, D), rank order
        n, size = keys.shape[0], self.queue.shape[0]
        ptr = int(self.queue_ptr)
        kept = min(n, size)  # sequential writes of n > K rows leave only the last K
        rows = (ptr + n - kept + torch.arange(kept, device=self.queue.device)) % size  # (kept,)
        self.queue[rows] = keys[n - kept:]
        self.queue_ptr[0] = (ptr + n) % size
