"""VICReg (Bardes et al. 2022, arXiv:2105.04906; facebookresearch/vicreg) as a workload.

Two augmented views; one backbone and expander on both (``TwinModel``); the loss keeps the two views'
embeddings close (invariance) while each dimension keeps its variance over the global batch (variance) and
the dimensions stay decorrelated (covariance). Everything is trained by the optimiser: no momentum network,
no queue, nothing to do between steps.
"""

from __future__ import annotations

from torch import Tensor, nn

from workloads.augment.views import finish_views, two_views
from workloads.config import Config
from workloads.joint_embedding import build_twin_model
from workloads.method import Images, Method, Net
from workloads.rng import RandomSource
from workloads.sections import AugConfig
from workloads.vicreg.config import VICRegConfig
from workloads.vicreg.loss import vicreg_loss
from workloads.vicreg.recipes import RECIPES


class VICReg(Method):
    name = "vicreg"
    recipes = RECIPES
    sections = {"aug": AugConfig, "vicreg": VICRegConfig}  # noqa: RUF012
    # λ and μ around their 25, ν around its 1: only their ratios matter to the loss's minimum
    search = ("vicreg.sim_coeff=uniform(5.0,50.0)", "vicreg.std_coeff=uniform(5.0,50.0)",
              "vicreg.cov_coeff=loguniform(0.25,4.0)")

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        return two_views(images, cfg, generator)

    def finish_batch(self, batch: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
        return finish_views(batch, cfg)  # aug.device=train: the views' colour stage, here on the device

    def build_model(self, cfg: Config) -> nn.Module:
        """The reference's expander: Linear → BN → ReLU, twice, then Linear without bias."""
        return build_twin_model(cfg, hidden_bias=True)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        x0, x1 = net.image(batch["view0"]), net.image(batch["view1"])  # N x 3 x S x S each
        z0, z1 = net.forward(x0, x1)  # N x D each, through DDP
        v = cfg.get(VICRegConfig)
        return vicreg_loss(z0, z1, v.sim_coeff, v.std_coeff, v.cov_coeff)
