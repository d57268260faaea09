"""BYOL's config section, ``byol``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from workloads.fields import check, check_choices
from workloads.sections import Schedule


@dataclass
class BYOLConfig:
    """BYOL (Grill et al. 2020, arXiv:2006.07733): the target network's momentum and the predictor."""

    section: ClassVar[str] = "byol"
    momentum: float = 0.996  # τ_base: target <- τ·target + (1-τ)·online after every step (BYOL §3.2)
    momentum_schedule: Schedule = "cosine"  # cosine: τ rises from τ_base to 1 over training (BYOL §3.2)
    pred_hidden_dim: int = 0  # predictor MLP hidden width; 0: the projector's (4096 in BYOL, as its projector)

    def __post_init__(self) -> None:
        check_choices(self)
        s = self.section
        check(0.0 <= self.momentum <= 1.0, s, "momentum", "in [0, 1] (BYOL: 0.996)", self.momentum)
        check(self.pred_hidden_dim >= 0, s, "pred_hidden_dim", ">= 0 (0: the projector's hidden width)",
              self.pred_hidden_dim)
