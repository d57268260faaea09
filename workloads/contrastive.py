"""The ``loss`` config section: the contrastive loss settings SimCLR (NT-Xent) and MoCo (InfoNCE) share.

MoCo reads only ``temperature``; ``gather`` and ``chunk_rows`` are NT-Xent's. One section for both keeps
``loss.temperature`` the same key (YAML, ``--set``, MLflow param) whichever contrastive method runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from workloads.fields import check

AUTO_CHUNK_ROWS = 1024


@dataclass
class LossConfig:
    """Contrastive loss: temperature for both methods; negatives and chunking for SimCLR's NT-Xent."""

    section: ClassVar[str] = "loss"
    temperature: float = 0.5
    gather: bool = True  # negatives from every worker (SimCLR); False: only the worker's own batch
    # logits computed this many anchor rows at a time, recomputed in backward: memory O(rows x 2N) for
    # no loss of speed (docs/BENCHMARKS.md). -1: auto (1024 rows once a worker has more anchors); 0: off
    chunk_rows: int = -1

    def __post_init__(self) -> None:
        check(self.temperature > 0.0, self.section, "temperature", "> 0", self.temperature)
        check(self.chunk_rows >= -1, self.section, "chunk_rows", ">= -1 (-1: auto, 0: off)", self.chunk_rows)

    def rows_per_chunk(self, local_anchors: int) -> int:
        """``chunk_rows`` resolved for a worker with ``local_anchors`` anchors (2 x its batch)."""
        if self.chunk_rows >= 0:
            return self.chunk_rows
        return AUTO_CHUNK_ROWS if local_anchors > AUTO_CHUNK_ROWS else 0
