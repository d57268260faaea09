"""BYOL's networks (Grill et al. 2020, arXiv:2006.07733, §3.1): the online encoder, projector and predictor,
and the target encoder and projector, a momentum average of the online ones that no gradient reaches.

Knows nothing of the loss or the loop. The target is updated from the online weights after the optimiser
step; under DDP those are the same on every worker (the gradients were all-reduced), so the target is too.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> nn.Sequential:
    """BYOL's projector and predictor: (Linear → BatchNorm → ReLU) × (num_layers − 1), then Linear(out_dim).

    BYOL §3.3: a linear layer of 4096 units, batch normalisation, ReLU, a linear layer to 256 (solo-learn's
    ``byol.py`` builds the same, biases kept). ``num_layers=3`` adds one hidden layer (``model.proj_layers``).
    """
    for field, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
        if value <= 0:
            raise ValueError(f"byol_mlp {field} must be a positive size; got {field}={value}.")
    if num_layers not in (2, 3):
        raise ValueError(f"byol_mlp num_layers must be 2 (BYOL) or 3; got num_layers={num_layers}.")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


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
        self.target_encoder = copy.deepcopy(encoder)  # ξ = θ at initialisation (solo-learn, BYOL's code)
        self.target_projector = copy.deepcopy(projector)
        for p in self.target_parameters():
            p.requires_grad = False  # moved by momentum only; DDP and the optimiser skip them

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

    @torch.no_grad()
    def momentum_update(self, tau: float) -> None:
        """ξ ← τ·ξ + (1 − τ)·θ on parameters (BYOL Eq. 1). BatchNorm running statistics are the target's own,
        from its own forwards, as solo-learn's ``MomentumUpdater`` (parameters only)."""
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"momentum must be in [0, 1]; got tau={tau}.")
        for online, target in zip(self.online_parameters(), self.target_parameters(), strict=True):
            target.mul_(tau).add_(online, alpha=1.0 - tau)
