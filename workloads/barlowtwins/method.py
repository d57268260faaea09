"""Barlow Twins (Zbontar et al. 2021, arXiv:2103.03230; facebookresearch/barlowtwins) as a workload.

Two augmented views; one backbone and projector on both (``TwinModel``); the loss drives the cross-correlation
matrix of the two views' embeddings, batch-normalised over the global batch, toward the identity. Everything
is trained by the optimiser: no momentum network, no queue, nothing to do between steps.
"""

from __future__ import annotations

from torch import Tensor, nn

from workloads.augment.views import finish_views, two_views
from workloads.barlowtwins.config import BarlowTwinsConfig
from workloads.barlowtwins.loss import barlow_twins_loss
from workloads.barlowtwins.recipes import RECIPES
from workloads.config import Config
from workloads.joint_embedding import build_twin_model
from workloads.method import Images, Method, Net
from workloads.rng import RandomSource
from workloads.sections import AugConfig


class BarlowTwins(Method):
    name = "barlowtwins"
    recipes = RECIPES
    sections = {"aug": AugConfig, "barlowtwins": BarlowTwinsConfig}  # noqa: RUF012
    search = ("barlowtwins.lambd=loguniform(0.001,0.05)", "optim.lr=loguniform(0.1,3.0)")

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        return two_views(images, cfg, generator)

    def finish_batch(self, batch: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
        return finish_views(batch, cfg)  # aug.device=train: the views' colour stage, here on the device

    def build_model(self, cfg: Config) -> nn.Module:
        """The reference's projector: Linear without bias → BN → ReLU, twice, then Linear without bias."""
        return build_twin_model(cfg, hidden_bias=False)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        x0, x1 = net.image(batch["view0"]), net.image(batch["view1"])  # N x 3 x S x S each
        z0, z1 = net.forward(x0, x1)  # N x D each, through DDP
        bt = cfg.get(BarlowTwinsConfig)
        return bt.scale_loss * barlow_twins_loss(z0, z1, bt.lambd)
