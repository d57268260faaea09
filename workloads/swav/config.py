"""SwAV's config section, ``swav``. Defaults are facebookresearch/swav's (main_swav.py and its scripts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from workloads.fields import check


@dataclass
class SwAVConfig:
    """SwAV (Caron et al. 2020, arXiv:2006.09882): prototypes, Sinkhorn-Knopp codes, the queue."""

    section: ClassVar[str] = "swav"
    num_prototypes: int = 3000  # K, rows of the prototype matrix (--nmb_prototypes 3000)
    temperature: float = 0.1  # τ of the swapped prediction's softmax (--temperature 0.1)
    epsilon: float = 0.05  # entropy regularisation of the codes (--epsilon 0.05)
    sinkhorn_iterations: int = 3  # (--sinkhorn_iterations 3)
    # large-crop embeddings of earlier batches scored with the codes, all workers together; 0: off
    # (main_swav.py's default 0; 3840 in the batch-256 scripts); a multiple of train.batch_size
    queue_length: int = 0
    epoch_queue_starts: int = 15  # the queue fills from the epoch after this many, and is used once full
    # the prototypes' gradients are dropped during the first epochs (--freeze_prototypes_niters 313: one
    # ImageNet epoch at batch 4096; solo-learn's freeze_prototypes_epochs)
    freeze_prototypes_epochs: int = 1

    def __post_init__(self) -> None:
        s = self.section
        check(self.num_prototypes >= 2, s, "num_prototypes", ">= 2", self.num_prototypes)
        check(self.temperature > 0.0, s, "temperature", "> 0", self.temperature)
        check(self.epsilon > 0.0, s, "epsilon", "> 0 (SwAV uses 0.05)", self.epsilon)
        check(self.sinkhorn_iterations >= 1, s, "sinkhorn_iterations", ">= 1", self.sinkhorn_iterations)
        check(self.queue_length >= 0, s, "queue_length", ">= 0 (0: no queue)", self.queue_length)
        check(self.epoch_queue_starts >= 0, s, "epoch_queue_starts", ">= 0", self.epoch_queue_starts)
        check(self.freeze_prototypes_epochs >= 0, s, "freeze_prototypes_epochs", ">= 0",
              self.freeze_prototypes_epochs)
