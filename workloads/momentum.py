"""Momentum (EMA) networks: a copy of online weights that moves toward them after every optimiser step
instead of by gradient (MoCo's key encoder, BYOL's target), and the schedule of its momentum (as
solo-learn's ``solo/utils/momentum.py``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (its weights at this moment) that no gradient reaches: DDP and the optimiser
    skip its parameters, ``ema_update`` moves them."""
    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad = False
    return twin


@torch.no_grad()
def ema_update(online: Iterable[nn.Parameter], target: Iterable[nn.Parameter], m: float) -> None:
    """target ← m·target + (1 − m)·online, parameter by parameter (MoCo Eq. 2, BYOL Eq. 1).

    Parameters only: BatchNorm running statistics stay the target's own, from its own forwards, as
    facebookresearch/moco's ``_momentum_update_key_encoder`` and solo-learn's ``MomentumUpdater``.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum must be in [0, 1]; got m={m}.")
    for o, t in zip(online, target, strict=True):
        t.mul_(m).add_(o, alpha=1.0 - m)


def momentum_at(step: int, total_steps: int, base: float, schedule: str) -> float:
    """The momentum after optimiser step ``step`` of ``total_steps``.

    "constant": ``base`` (MoCo). "cosine": 1 − (1 − base)·(cos(π·step/total) + 1)/2, rising from
    ``base`` at step 0 to 1 at the end (BYOL, Grill et al. 2020, §3.2; solo-learn's MoCo v2+).
    """
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"momentum schedule must be 'constant' or 'cosine'; got {schedule!r}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0; got total_steps={total_steps}")
    progress = min(max(step / total_steps, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
