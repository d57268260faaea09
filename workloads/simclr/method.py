"""SimCLR (Chen et al. 2020) as a workload: two augmented views, backbone + projection head, NT-Xent."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workloads.config import Config
from workloads.contrastive import LossConfig
from workloads.method import Images, Method, Net
from workloads.rng import RandomSource
from workloads.simclr.loss import nt_xent
from workloads.simclr.model import build_simclr_model
from workloads.simclr.recipes import RECIPES
from workloads.views import AugConfig, two_views


def build_resnet_model(cfg: Config) -> nn.Module:
    m = cfg.model
    return build_simclr_model(m.arch, m.cifar_stem, widths=m.widths, blocks=m.blocks,
                              proj_hidden_dim=m.proj_hidden_dim or None, proj_dim=m.proj_dim,
                              proj_layers=m.proj_layers)


class SimCLR(Method):
    name = "simclr"
    recipes = RECIPES
    sections = {"aug": AugConfig, "loss": LossConfig}  # noqa: RUF012
    search = ("loss.temperature=loguniform(0.05,1.0)", "aug.strength=uniform(0.25,1.5)")

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        return two_views(images, cfg, generator)

    def build_model(self, cfg: Config) -> nn.Module:
        return build_resnet_model(cfg)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        x = net.image(torch.cat([batch["view0"], batch["view1"]]))  # 2B x 3 x S x S, both views
        z = net.forward(x)  # 2B x D
        z0, z1 = z.chunk(2)  # B x D each
        return nt_xent(z0, z1, cfg.loss.temperature, gather=cfg.loss.gather,
                       chunk_rows=cfg.loss.rows_per_chunk(2 * len(z0)))
