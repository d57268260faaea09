"""MoCo's config section, ``moco``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from workloads.fields import check, check_choices
from workloads.sections import Schedule


@dataclass
class MoCoConfig:
    """MoCo v2 (He et al. 2020; Chen et al. 2020, arXiv:2003.04297): key encoder and queue."""

    section: ClassVar[str] = "moco"
    momentum: float = 0.999  # key encoder: key <- m*key + (1-m)*query after every step
    momentum_schedule: Schedule = "constant"  # cosine: m rises to 1 over training, as BYOL
    queue_size: int = 65536  # negatives kept from earlier batches (4096 for small datasets)
    shuffle_bn: bool = True  # shuffle the key batch across workers so BN cannot leak (MoCo §3.3)

    def __post_init__(self) -> None:
        check_choices(self)
        s = self.section
        check(0.0 <= self.momentum < 1.0, s, "momentum", "in [0, 1)", self.momentum)
        check(self.queue_size >= 1, s, "queue_size", ">= 1", self.queue_size)
