"""MAE (He et al. 2021, arXiv:2111.06377) as a workload: one lightly augmented view and a random patch mask
(uint8 and bool) stream to the workers; a ViT encodes the visible patches and the loss scores the pixels
of the masked ones only. Context-encoder inpainting, its CNN sibling, is workloads/inpaint/.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

from workloads.augment.views import one_view
from workloads.config import Config, ConfigError
from workloads.mae.model import build_mae_model
from workloads.mae.recipes import RECIPES
from workloads.masked import at_target_statistics, masked_mse, patch_grid
from workloads.masks import mask_pixels, patchify, random_patch_mask, unpatchify
from workloads.method import Images, Method, Net, denormalize, normalize
from workloads.pictures import evaluating, greyed, model_device, pictured, reconstruction_grid
from workloads.rng import RandomSource
from workloads.sections import AugConfig, MAEConfig


class MAE(Method):
    """Masked autoencoder: a ViT encodes the visible 25% of patches, a small decoder predicts the rest."""

    name = "mae"
    view_columns = ("view0",)
    recipes: dict[str, Callable[[], Config]] = RECIPES
    search = ("mae.mask_ratio=uniform(0.5,0.9)",)
    sections = {"aug": AugConfig, "mae": MAEConfig}  # noqa: RUF012

    def check_config(self, cfg: Config) -> None:
        """The ViT's patch grid must tile the image; MAE needs the ViT (a CNN is method 'inpaint')."""
        patch_grid(cfg)
        if cfg.model.arch != "vit":
            raise ConfigError(f"model.arch must be 'vit' for method 'mae' (CNN inpainting is method 'inpaint'); "
                              f"got {cfg.model.arch!r}")

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        view = one_view(images, cfg, generator)  # B x 3 x S x S uint8
        g = patch_grid(cfg)
        mask = random_patch_mask(len(view), g * g, cfg.get(MAEConfig).mask_ratio, generator)  # B x L bool
        return {"view0": view, "mask": mask}

    def build_model(self, cfg: Config) -> nn.Module:
        m, a = cfg.model, cfg.get(MAEConfig)
        return build_mae_model(cfg.data.image_size, m.patch_size, m.vit_dim, m.vit_depth, m.vit_heads,
                               a.decoder_dim, a.decoder_depth, a.decoder_heads)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        x = net.image(batch["view0"])  # B x 3 x S x S
        mask = batch["mask"]  # B x L bool
        pred = net.forward(x, mask)  # B x L x p²3
        return masked_mse(pred, patchify(x, cfg.model.patch_size), mask, cfg.get(MAEConfig).norm_pix_loss)

    def pictures(self, model: nn.Module, images: Tensor, cfg: Config, folder: str) -> list[str]:
        """Input, masked input, and output with the visible patches pasted from the input (MAE, Figure 2)."""
        mae = cfg.get(MAEConfig)
        p, ratio = cfg.model.patch_size, mae.mask_ratio
        images = pictured(images, cfg.data.image_size)  # n x 3 x S x S uint8
        g = patch_grid(cfg)
        mask = random_patch_mask(len(images), g * g, ratio, torch.Generator().manual_seed(cfg.train.seed))  # n x L
        device = model_device(model)
        with evaluating(model):
            x = normalize(images.to(device))  # n x 3 x S x S
            pred = model(x, mask.to(device)).float()  # n x L x p²3
        target = patchify(x, p)  # n x L x p²3
        note = ""
        if mae.norm_pix_loss:  # predictions are per-patch normalised: show them at the true patch statistics
            pred = at_target_statistics(pred, target)
            note = "; norm_pix_loss: masked patches drawn with their true mean and variance"
        pasted = torch.where(mask.to(device).unsqueeze(-1), pred, target)  # n x L x p²3
        output = denormalize(unpatchify(pasted, p)).cpu()  # n x 3 x S x S uint8
        path = os.path.join(folder, "mae_reconstructions.png")
        reconstruction_grid([images, greyed(images, mask_pixels(mask, p)), output],
                            ["input", "masked", "output"], path,
                            f"MAE: {ratio:.0%} of patches masked; output = prediction on masked patches, "
                            f"input on visible ones{note}")
        return [path]
