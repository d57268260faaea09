"""Barlow Twins' config section, ``barlowtwins``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from workloads.fields import check, check_choices

LAMBDA = 0.0051  # the reference code's --lambd (5e-3 in the paper, §4)


@dataclass
class BarlowTwinsConfig:
    """Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230): the weight of the redundancy-reduction term and
    the loss's scale."""

    section: ClassVar[str] = "barlowtwins"
    lambd: float = LAMBDA  # λ, the off-diagonal terms' weight (the reference code's --lambd; 5e-3 in the paper)
    # the loss times this; 1: the paper's. solo-learn's scale_loss (0.1 in its CIFAR script): with LARS the
    # weights' steps do not depend on it, the biases' and norms' (not adapted) and weight decay's share do
    scale_loss: float = 1.0

    def __post_init__(self) -> None:
        check_choices(self)
        s = self.section
        check(math.isfinite(self.lambd) and self.lambd >= 0.0, s, "lambd", ">= 0 (Barlow Twins: 0.0051)", self.lambd)
        check(math.isfinite(self.scale_loss) and self.scale_loss > 0.0, s, "scale_loss", "> 0 (1: the paper's loss)",
              self.scale_loss)
