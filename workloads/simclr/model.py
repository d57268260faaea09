"""SimCLR network: backbone + projection head. Knows nothing of the loss, the loop or distribution."""

from torch import Tensor, nn

from workloads.encoders import build_encoder


class ProjectionHead(nn.Module):
    """MLP g(·) mapping backbone features to the space where the contrastive loss is computed.

    (Linear without bias → BN → ReLU) × (num_layers − 1), then Linear(out_dim). SimCLR v1 uses 2
    layers (Chen et al. 2020, §2.1), SimCLR v2 uses 3 (Chen et al. 2020b, §2.2).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 128, num_layers: int = 2) -> None:
        super().__init__()
        for field, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value <= 0:
                raise ValueError(f"ProjectionHead {field} must be a positive size; got {field}={value}.")
        if num_layers not in (2, 3):
            raise ValueError(
                f"ProjectionHead num_layers must be 2 (SimCLR v1) or 3 (SimCLR v2); got num_layers={num_layers}."
            )
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


class SimCLRModel(nn.Module):
    """Backbone f(·) and projection head g(·): `forward` gives z = g(f(x)) for the loss, `features` gives
    h = f(x), the representation that kNN / linear evaluation use (SimCLR §4.2: h beats g(h))."""

    def __init__(self, encoder: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # N x F

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(x)  # N x F
        return self.head(h)  # N x out_dim


def build_simclr_model(
    arch: str,
    cifar_stem: bool,
    widths: tuple[int, ...] = (32, 64, 128),
    blocks: tuple[int, ...] = (1, 1, 1),
    proj_hidden_dim: int | None = None,
    proj_dim: int = 128,
    proj_layers: int = 2,
) -> SimCLRModel:
    """Build backbone and head; `proj_hidden_dim=None` uses the backbone's feature width, as in SimCLR."""
    encoder, num_features = build_encoder(arch, cifar_stem, widths=widths, blocks=blocks)
    hidden = num_features if proj_hidden_dim is None else proj_hidden_dim
    head = ProjectionHead(num_features, hidden, out_dim=proj_dim, num_layers=proj_layers)
    return SimCLRModel(encoder, head)
