"""SimCLR (Chen et al. 2020) as a workload: two augmented views, backbone + projection head, NT-Xent."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workloads.augment.views import finish_views, two_views
from workloads.config import Config
from workloads.contrastive import LossConfig
from workloads.method import Images, Method, Net
from workloads.rng import RandomSource
from workloads.sections import AugConfig
from workloads.simclr.loss import nt_xent
from workloads.simclr.model import build_simclr_model
from workloads.simclr.recipes import RECIPES


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

    def finish_batch(self, batch: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
        return finish_views(batch, cfg)  # aug.device=train: the views' colour stage, here on the device

    def build_model(self, cfg: Config) -> nn.Module:
        return build_resnet_model(cfg)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        x = net.image(torch.cat([batch["view0"], batch["view1"]]))  # 2B x 3 x S x S, both views
        z = net.forward(x)  # 2B x D
        z0, z1 = z.chunk(2)  # B x D each
        loss = cfg.get(LossConfig)
        return nt_xent(z0, z1, loss.temperature, gather=loss.gather, chunk_rows=loss.rows_per_chunk(2 * len(z0)))
