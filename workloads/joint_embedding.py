"""What the joint-embedding methods without negatives or a momentum network share (Barlow Twins, VICReg):
the network, one backbone and one projector (VICReg's "expander") applied to both views, and the sum of
squared off-diagonal entries of a square matrix, which both losses penalise (Barlow Twins on the
cross-correlation matrix, VICReg on each view's covariance matrix).
"""

from __future__ import annotations

from torch import Tensor, nn

from workloads.config import Config
from workloads.encoders import build_encoder
from workloads.heads import expander_mlp


class TwinModel(nn.Module):
    """Backbone f and projector g, the same weights for both views.

    ``forward(x0, x1)`` gives (z0, z1), each view through f and g on its own, so BatchNorm normalises each
    view's batch alone, as both references (``projector(backbone(y1))``, then ``y2``); one call, so DDP
    sees one forward per step. ``features`` is f(x), what kNN, the linear probe and the exported model use
    (both papers evaluate the backbone's representation, not the projector's).
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # N x F

    def forward(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        z0 = self.projector(self.encoder(x0))  # N x D
        z1 = self.projector(self.encoder(x1))  # N x D
        return z0, z1


def build_twin_model(cfg: Config, hidden_bias: bool) -> TwinModel:
    """The configured ResNet and an ``expander_mlp`` of ``model.proj_layers`` layers, ``model.proj_hidden_dim``
    wide (0: the backbone's feature width) to ``model.proj_dim``; ``hidden_bias`` as ``expander_mlp``."""
    m = cfg.model
    encoder, num_features = build_encoder(m.arch, m.cifar_stem, widths=m.widths, blocks=m.blocks)
    projector = expander_mlp(num_features, m.proj_hidden_dim or num_features, m.proj_dim,
                             num_layers=m.proj_layers, hidden_bias=hidden_bias)
    return TwinModel(encoder, projector)


def off_diagonal_square_sum(m: Tensor) -> Tensor:
    """Σ_{i≠j} m_ij² of a square (D, D) matrix.

    Read through a view, not as Σ m² − Σ diag(m)²: near convergence the diagonal of Barlow Twins' matrix is
    ~1 and the off-diagonal entries are small, and the difference of two sums of about D would lose them.
    """
    if m.dim() != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"off_diagonal_square_sum needs a square matrix, got shape {tuple(m.shape)}")
    d = m.shape[0]
    # Flattened, the diagonal sits at every (D+1)-th entry from 0; without entry 0, rows of D+1 entries each
    # end on the next diagonal entry, so dropping every row's last entry leaves the off-diagonal ones.
    off = m.flatten()[1:].view(d - 1, d + 1)[:, :-1]  # (D-1) x D
    return off.pow(2).sum()
