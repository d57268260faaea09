"""SimCLR (Chen et al. 2020) as a workload: two augmented views, backbone + projection head, NT-Xent."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workloads.config import AugConfig, Config
from workloads.method import Images, Method, Net
from workloads.rng import RandomSource
from workloads.simclr.augment import SimCLRAugment
from workloads.simclr.loss import nt_xent
from workloads.simclr.model import build_simclr_model
from workloads.simclr.recipes import RECIPES


def make_augment(aug: AugConfig, image_size: int) -> SimCLRAugment:
    return SimCLRAugment(
        output_size=image_size, strength=aug.strength, min_scale=aug.min_scale, max_scale=aug.max_scale,
        flip_p=aug.flip_p, jitter_p=aug.jitter_p, gray_p=aug.gray_p, blur_p=aug.blur_p,
        blur_kernel_frac=aug.blur_kernel_frac,
    )


def two_views(images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
    """Two independently augmented views of each image, with per-image random parameters."""
    v0, v1 = make_augment(cfg.aug, cfg.data.image_size).two_views(images, generator)
    return {"view0": v0, "view1": v1}  # B x 3 x s x s uint8 each


def build_resnet_model(cfg: Config) -> nn.Module:
    m = cfg.model
    return build_simclr_model(m.arch, m.cifar_stem, widths=m.widths, blocks=m.blocks,
                              proj_hidden_dim=m.proj_hidden_dim or None, proj_dim=m.proj_dim,
                              proj_layers=m.proj_layers)


class SimCLR(Method):
    name = "simclr"
    recipes = RECIPES
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
