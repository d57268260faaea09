"""BYOL (Grill et al. 2020, arXiv:2006.07733) as a workload.

Two augmented views; the online network (encoder, projector, predictor) runs on each view through DDP, the
target network (a momentum average of the online encoder and projector) on each view without gradient; the
loss is the symmetrised normalised MSE between predictions and the other view's target projection. No
negatives, no queue. The target moves after every optimiser step by τ, which rises to 1 on a cosine.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workloads.augment.views import finish_views, two_views
from workloads.byol.config import BYOLConfig
from workloads.byol.loss import byol_loss
from workloads.byol.model import BYOLModel
from workloads.byol.recipes import RECIPES
from workloads.config import Config
from workloads.encoders import build_encoder
from workloads.heads import byol_mlp
from workloads.method import Images, Method, Net
from workloads.momentum import momentum_at
from workloads.rng import RandomSource
from workloads.sections import AugConfig


def _byol(model: nn.Module) -> BYOLModel:
    if not isinstance(model, BYOLModel):
        raise TypeError(f"the BYOL workload needs the BYOLModel from BYOL.build_model; got {type(model).__name__}")
    return model


def target_momentum(step: int, total_steps: int, cfg: Config) -> float:
    """τ for the update after optimiser step ``step`` (counting from 1): BYOL §3.2's
    τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 with k = step − 1 the steps taken before this one, so the first
    update uses τ_base, as solo-learn (its ``MomentumUpdater`` moves τ after each update)."""
    byol = cfg.get(BYOLConfig)
    return momentum_at(step - 1, total_steps, byol.momentum, byol.momentum_schedule)


class BYOL(Method):
    name = "byol"
    recipes = RECIPES
    sections = {"aug": AugConfig, "byol": BYOLConfig}  # noqa: RUF012
    search = ("byol.momentum=uniform(0.9,0.999)", "optim.lr=loguniform(0.5,5.0)")

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        return two_views(images, cfg, generator)

    def finish_batch(self, batch: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
        return finish_views(batch, cfg)  # aug.device=train: the views' colour stage, here on the device

    def build_model(self, cfg: Config) -> nn.Module:
        m = cfg.model
        encoder, num_features = build_encoder(m.arch, m.cifar_stem, widths=m.widths, blocks=m.blocks)
        hidden = m.proj_hidden_dim or num_features
        projector = byol_mlp(num_features, hidden, m.proj_dim, num_layers=m.proj_layers)
        predictor = byol_mlp(m.proj_dim, cfg.get(BYOLConfig).pred_hidden_dim or hidden, m.proj_dim)
        return BYOLModel(encoder, projector, predictor)

    def trainable(self, model: nn.Module) -> nn.Module:
        """The online network only: the target moves by momentum, never by the optimiser."""
        core = _byol(model)
        return nn.ModuleDict({"encoder": core.encoder, "projector": core.projector, "predictor": core.predictor})

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        core = _byol(net.core)
        x0, x1 = net.image(batch["view0"]), net.image(batch["view1"])  # N x 3 x S x S each
        # one forward per view, so BatchNorm normalises each view's batch on its own (BYOL, solo-learn)
        p0, p1 = net.forward(x0), net.forward(x1)  # online predictions: N x D each, through DDP
        with torch.no_grad(), net.autocast():
            z0, z1 = core.target(x0), core.target(x1)  # target projections: N x D each, no gradient
        return byol_loss(p0, p1, z0, z1)

    def after_step(self, model: nn.Module, step: int, total_steps: int, cfg: Config) -> None:
        """ξ ← τ·ξ + (1 − τ)·θ from the online weights just stepped (identical on every worker under DDP)."""
        _byol(model).momentum_update(target_momentum(step, total_steps, cfg))
