"""Projection and prediction heads: the MLPs methods put on the backbone's features (as lightly's
``models/modules/heads.py``). Each keeps its paper's layout, so checkpoints keep their parameter names.

- ``ProjectionHead``: SimCLR's g(·), (Linear without bias → BN → ReLU) × (n − 1) → Linear; SwAV's too.
- ``mlp_head``: MoCo v2's, (Linear → ReLU) × (n − 1) → Linear, no BatchNorm.
- ``byol_mlp``: BYOL's projector and predictor, (Linear → BN → ReLU) × (n − 1) → Linear, biases kept.
- ``expander_mlp``: Barlow Twins' projector and VICReg's expander, (Linear → BN → ReLU) × (n − 1) → Linear
  without bias.
"""

from __future__ import annotations

from torch import Tensor, nn


def _check_sizes(owner: str, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, layers: str) -> None:
    for field, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
        if value <= 0:
            raise ValueError(f"{owner} {field} must be a positive size; got {field}={value}.")
    if num_layers not in (2, 3):
        raise ValueError(f"{owner} num_layers must be {layers}; got num_layers={num_layers}.")


class ProjectionHead(nn.Module):
    """MLP g(·) mapping backbone features to the space where the contrastive loss is computed.

    (Linear without bias → BN → ReLU) × (num_layers − 1), then Linear(out_dim). SimCLR v1 uses 2
    layers (Chen et al. 2020, §2.1), SimCLR v2 uses 3 (Chen et al. 2020b, §2.2).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128, num_layers: int = 2) -> None:
        super().__init__()
        _check_sizes("ProjectionHead", in_dim, hidden_dim, out_dim, num_layers, "2 (SimCLR v1) or 3 (SimCLR v2)")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            # no bias: the BatchNorm right after it has its own shift
            layers += [
                nn.Linear(dim, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.layers = nn.Sequential(*layers)
        self.num_layers = num_layers

    def forward(self, h: Tensor) -> Tensor:
        return self.layers(h)  # N x out_dim


def mlp_head(in_dim: int, hidden_dim: int, out_dim: int = 128, num_layers: int = 2) -> nn.Sequential:
    """MoCo v2's projection MLP: (Linear → ReLU) × (num_layers − 1), then Linear(out_dim).

    MoCo v2 replaces v1's linear fc with a 2-layer MLP, hidden = the backbone's width, no BatchNorm
    (Chen et al. 2020, §2; facebookresearch/moco builder.py ``--mlp``). ``num_layers=3`` adds one more
    hidden layer for ``model.proj_layers = 3``.
    """
    _check_sizes("mlp_head", in_dim, hidden_dim, out_dim, num_layers, "2 (MoCo v2) or 3")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2) -> nn.Sequential:
    """BYOL's projector and predictor: (Linear → BatchNorm → ReLU) × (num_layers − 1), then Linear(out_dim).

    BYOL §3.3: a linear layer of 4096 units, batch normalisation, ReLU, a linear layer to 256 (solo-learn's
    ``byol.py`` builds the same, biases kept). ``num_layers=3`` adds one hidden layer (``model.proj_layers``).
    """
    _check_sizes("byol_mlp", in_dim, hidden_dim, out_dim, num_layers, "2 (BYOL) or 3")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


def expander_mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3,
                 hidden_bias: bool = False) -> nn.Sequential:
    """Barlow Twins' projector and VICReg's expander: (Linear → BatchNorm → ReLU) × (num_layers − 1), then a
    Linear(out_dim) without bias.

    Both papers use 8192-8192-8192 (three layers) on a ResNet-50. ``hidden_bias``: a bias on the hidden
    layers' Linear, which VICReg's ``Projector`` keeps and Barlow Twins' drops (the BatchNorm right after it
    has its own shift, so the two compute the same functions). ``num_layers=2`` drops one hidden layer.
    """
    _check_sizes("expander_mlp", in_dim, hidden_dim, out_dim, num_layers, "2 or 3 (Barlow Twins, VICReg: 3)")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=hidden_bias), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=False))
    return nn.Sequential(*layers)
