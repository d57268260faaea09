"""SimCLR network: backbone + projection head. Knows nothing of the loss, the loop or distribution."""

from torch import Tensor, nn

from workloads.encoders import build_encoder
from workloads.heads import ProjectionHead


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
