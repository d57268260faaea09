"""BYOL's networks (Grill et al. 2020, arXiv:2006.07733, §3.1): the online encoder, projector and predictor,
and the target encoder and projector, a momentum average of the online ones that no gradient reaches.

Knows nothing of the loss or the loop. The target is updated from the online weights after the optimiser
step; under DDP those are the same on every worker (the gradients were all-reduced), so the target is too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workloads.momentum import ema_update, momentum_copy


class BYOLModel(nn.Module):
    """Online network (``encoder`` + ``projector`` + ``predictor``) and target (``target_encoder`` +
    ``target_projector``).

    ``forward`` is the online prediction q(g(f(x))) and runs through DDP; ``target`` the target projection
    g′(f′(x)) without gradient; ``features`` the online backbone's, what kNN, the linear probe and the
    exported model use (BYOL §3.3 evaluates f_θ). The target starts as a copy of the online network and
    moves only by ``momentum_update``; it is part of the state dict, so checkpoints carry it.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, predictor: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.predictor = predictor
        # ξ = θ at initialisation (solo-learn, BYOL's code), moved by momentum only
        self.target_encoder = momentum_copy(encoder)
        self.target_projector = momentum_copy(projector)

    def online_parameters(self) -> list[nn.Parameter]:
        """The online parameters that have a target twin (the predictor has none)."""
        return [*self.encoder.parameters(), *self.projector.parameters()]

    def target_parameters(self) -> list[nn.Parameter]:
        return [*self.target_encoder.parameters(), *self.target_projector.parameters()]

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # N x F

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor(self.projector(self.encoder(x)))  # online predictions: N x D

    @torch.no_grad()
    def target(self, x: Tensor) -> Tensor:
        """Target projections (N, D), no gradient. BatchNorm uses the batch's statistics, as the online
        network in training (the target runs in the module's own mode)."""
        return self.target_projector(self.target_encoder(x))  # N x D

    def momentum_update(self, tau: float) -> None:
        """ξ ← τ·ξ + (1 − τ)·θ on parameters (BYOL Eq. 1); BatchNorm statistics stay the target's own."""
        ema_update(self.online_parameters(), self.target_parameters(), tau)
