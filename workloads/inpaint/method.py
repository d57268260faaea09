"""Context-encoder inpainting (Pathak et al. 2016, arXiv:1604.07379) as a workload: one lightly augmented view
and a block mask stream to the workers; a ResNet sees the image with the block zeroed, a conv decoder fills
it in, and the loss scores the block's pixels only. Masks, loss and the ``mae`` section are masked image
modelling's, shared with MAE (workloads/masks.py, workloads/masked.py); the pictures are workloads/pictures.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

from workloads.augment.views import one_view
from workloads.config import Config
from workloads.inpaint.model import build_inpaint_model
from workloads.inpaint.recipes import RECIPES
from workloads.masked import at_target_statistics, masked_mse, patch_grid
from workloads.masks import block_mask, mask_pixels, patchify, unpatchify
from workloads.method import Images, Method, Net, denormalize, normalize
from workloads.pictures import evaluating, greyed, model_device, pictured, reconstruction_grid
from workloads.rng import RandomSource
from workloads.sections import AugConfig, MAEConfig


class Inpaint(Method):
    """Context encoder: a ResNet sees the image with one block zeroed and a conv decoder fills the block in."""

    name = "inpaint"
    view_columns = ("view0",)
    recipes: dict[str, Callable[[], Config]] = RECIPES
    search = ("mae.mask_ratio=uniform(0.1,0.5)",)
    sections = {"aug": AugConfig, "mae": MAEConfig}  # noqa: RUF012

    def check_config(self, cfg: Config) -> None:
        """A ResNet, and a patch grid (of the block mask) that tiles the image."""
        super().check_config(cfg)
        patch_grid(cfg)

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        view = one_view(images, cfg, generator)  # B x 3 x S x S uint8
        mask = block_mask(view.shape[0], patch_grid(cfg), cfg.get(MAEConfig).mask_ratio, generator)  # B x L bool
        return {"view0": view, "mask": mask}

    def build_model(self, cfg: Config) -> nn.Module:
        m = cfg.model
        patch_grid(cfg)  # fail at build time, not at the first step, on a patch size that does not fit
        return build_inpaint_model(m.arch, m.cifar_stem, m.widths, m.blocks, cfg.data.image_size)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        p = cfg.model.patch_size
        x = net.image(batch["view0"])  # B x 3 x S x S
        mask = batch["mask"]  # B x L bool
        hole = mask_pixels(mask, p)  # B x 1 x S x S bool
        recon = net.forward(x.masked_fill(hole, 0.0))  # B x 3 x S x S; 0 is the normalised mean
        return masked_mse(patchify(recon, p), patchify(x, p), mask, cfg.get(MAEConfig).norm_pix_loss)

    def pictures(self, model: nn.Module, images: Tensor, cfg: Config, folder: str) -> list[str]:
        """Input, input with the block hidden, and the input with the block filled in by the model."""
        mae = cfg.get(MAEConfig)
        p, ratio = cfg.model.patch_size, mae.mask_ratio
        images = pictured(images, cfg.data.image_size)  # n x 3 x S x S uint8
        mask = block_mask(len(images), patch_grid(cfg), ratio, torch.Generator().manual_seed(cfg.train.seed))
        hole = mask_pixels(mask, p)  # n x 1 x S x S
        device = model_device(model)
        with evaluating(model):
            x = normalize(images.to(device))  # n x 3 x S x S
            recon = model(x.masked_fill(hole.to(device), 0.0)).float()  # n x 3 x S x S
        if mae.norm_pix_loss:  # as MAE's pictures: the predicted patches at their true statistics
            recon = unpatchify(at_target_statistics(patchify(recon, p), patchify(x, p)), p)
        output = denormalize(torch.where(hole.to(device), recon, x)).cpu()  # n x 3 x S x S uint8
        path = os.path.join(folder, "inpaint_reconstructions.png")
        reconstruction_grid([images, greyed(images, hole), output], ["input", "masked", "output"], path,
                            f"context encoder: a block of ~{ratio:.0%} hidden; output = prediction in the "
                            f"block, input elsewhere")
        return [path]
