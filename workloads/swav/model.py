"""SwAV network: backbone, projection head, L2 normalisation, prototypes; and the queue of embeddings.

Caron et al. 2020 (arXiv:2006.09882); facebookresearch/swav src/resnet50.py (``projection_head``,
``prototypes``: a linear layer without bias on the normalised embedding) and main_swav.py (the queue,
the prototypes normalised every step). Knows nothing of the loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workloads import dist
from workloads.dist import all_gather


class SwAVModel(nn.Module):
    """``forward(*crops)`` → (embeddings z (N, D), unit rows, float32; prototype scores z·Cᵀ (N, K)).

    Each argument is one resolution's crops stacked (the large crops, then the small ones); the backbone
    runs once per resolution and the head once on all, as the reference's multi-resolution forward, so
    DDP sees one forward per step. ``features`` is the backbone's output (kNN, linear probe, export).

    ``queue`` (large crops, L, D) holds earlier large-crop embeddings of every worker, identical on every
    rank: rank r uses rows [r·L/W, (r+1)·L/W) as its own queue of L/W (the reference's per-GPU queue) and
    shifts its own new embeddings in. Keeping every rank's part in one buffer puts the whole queue in
    rank 0's checkpoint, so a resumed run continues with the queue it had. ``epoch`` is the epoch in
    progress, set by the method before each epoch.
    """

    queue: Tensor

    def __init__(self, encoder: nn.Module, head: nn.Module, dim: int, num_prototypes: int, large_crops: int,
                 queue_length: int) -> None:
        super().__init__()
        if dim <= 0 or num_prototypes <= 0:
            raise ValueError(f"SwAVModel needs a positive dim and num_prototypes; got {dim} and {num_prototypes}")
        self.encoder = encoder
        self.head = head
        self.prototypes = nn.Linear(dim, num_prototypes, bias=False)  # K x D: the codes' centres
        self.normalize_prototypes()
        self.register_buffer("queue", torch.zeros(large_crops, queue_length, dim))  # C x L x D; 0 rows: not filled
        self.epoch = 1

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # N x F

    def forward(self, *crops: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.cat([self.encoder(x) for x in crops])  # N x F, N = all crops of all resolutions
        z = F.normalize(self.head(h).float(), dim=1)  # N x D, unit rows
        return z, self.prototypes(z)  # N x D, N x K

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Each prototype back to unit length (the reference does it before every forward)."""
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def own_queue(self, crop: int) -> Tensor:
        """This rank's part of crop ``crop``'s queue: (L/W, D), a view."""
        part = self.queue.shape[1] // dist.world_size()
        r = dist.rank()
        return self.queue[crop, r * part:(r + 1) * part]

    def queue_full(self) -> bool:
        """Every rank's part has been written to its end (the reference: its last row is not zero)."""
        return self.queue.shape[1] > 0 and bool(self.queue[:, -1].any())

    @torch.no_grad()
    def enqueue(self, z: Tensor) -> None:
        """Shift every rank's newest large-crop embeddings ``z`` (C, B, D) into its part of the queue,
        dropping its oldest B. Gathered from every rank (rank order), so the buffer stays the same on all."""
        world = dist.world_size()
        c, b, d = z.shape
        if c != self.queue.shape[0] or d != self.queue.shape[2]:
            raise ValueError(f"z must be ({self.queue.shape[0]}, B, {self.queue.shape[2]}); got {tuple(z.shape)}")
        parts = self.queue.view(c, world, -1, d)  # C x W x L/W x D
        if b > parts.shape[2]:
            raise ValueError(f"a worker's batch ({b}) is longer than its queue ({parts.shape[2]}); "
                             f"raise swav.queue_length to a multiple of train.batch_size")
        new = all_gather(z.detach().to(self.queue.dtype).transpose(0, 1).contiguous())  # W*B x C x D
        new = new.view(world, b, c, d).permute(2, 0, 1, 3)  # C x W x B x D
        parts.copy_(torch.cat([new, parts[:, :, :-b]], dim=2) if b < parts.shape[2] else new)
