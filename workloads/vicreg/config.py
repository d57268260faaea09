"""VICReg's config section, ``vicreg``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from workloads.fields import check, check_choices

SIM_COEFF, STD_COEFF, COV_COEFF = 25.0, 25.0, 1.0  # λ, μ, ν (§4.2; the reference's defaults)


@dataclass
class VICRegConfig:
    """VICReg (Bardes et al. 2022, arXiv:2105.04906): the weights λ, μ, ν of its three terms (Eq. 6)."""

    section: ClassVar[str] = "vicreg"
    sim_coeff: float = SIM_COEFF  # λ: invariance, the MSE between the views' embeddings (the reference's --sim-coeff)
    std_coeff: float = STD_COEFF  # μ: variance, the hinge on each dimension's std (--std-coeff)
    cov_coeff: float = COV_COEFF  # ν: covariance, the squared off-diagonal covariances / D (--cov-coeff)

    def __post_init__(self) -> None:
        check_choices(self)
        s = self.section
        for name, default in (("sim_coeff", SIM_COEFF), ("std_coeff", STD_COEFF), ("cov_coeff", COV_COEFF)):
            value = getattr(self, name)
            check(math.isfinite(value) and value >= 0.0, s, name, f">= 0 (VICReg: {default:g})", value)
