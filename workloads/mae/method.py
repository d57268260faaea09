"""Masked image modelling as two workloads: MAE (He et al. 2021, arXiv:2111.06377) on a ViT and
context-encoder inpainting (Pathak et al. 2016, arXiv:1604.07379) on a ResNet.

Both stream one lightly augmented view and a patch mask (uint8 and bool), and both score the pixels of
the masked patches only: MAE hides random patches from the encoder, inpainting zeroes one block.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workloads.config import Config, ConfigError
from workloads.mae.config import MAEConfig
from workloads.mae.loss import masked_mse
from workloads.mae.masks import block_mask, mask_pixels, patchify, random_patch_mask, unpatchify
from workloads.mae.model import build_inpaint_model, build_mae_model
from workloads.mae.pictures import reconstruction_grid
from workloads.method import Images, Method, Net, denormalize, normalize
from workloads.rng import RandomSource
from workloads.simclr.recipes import cifar10, digits
from workloads.views import AugConfig, one_view

MAX_PICTURES = 8
MASKED_GREY = 128  # how hidden pixels are drawn in the "masked" row


def patch_grid(cfg: Config) -> int:
    """Patches per image side; the patch size must divide the image side (the mask's grid, and MAE's ViT)."""
    size, p = cfg.data.image_size, cfg.model.patch_size
    if size % p:
        raise ConfigError(f"model.patch_size must be a divisor of data.image_size ({size}); got {p}")
    return size // p


# ----------------------------------------------------------------------------- pictures


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm's running statistics) and no autograd for the duration, then as before."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _pictured(images: Tensor, size: int) -> Tensor:
    """Up to MAX_PICTURES uint8 images at the training size (held-out images may be stored larger)."""
    images = images[:MAX_PICTURES].cpu()
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _greyed(images: Tensor, hole: Tensor) -> Tensor:
    """uint8 images with the pixels of `hole` (N, 1, H, W) bool drawn grey."""
    return images.masked_fill(hole, MASKED_GREY)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- MAE


def mae_digits() -> Config:
    """SimCLR's digits recipe with a small ViT: 16 px, 2 px patches (64 per image), 75% masked.

    Encoder and decoder sized to learn in minutes on 2 CPU cores (ours); the optimiser is MAE's
    (AdamW, weight decay 0.05, lr = base · B/256; He et al. 2021, Table 8) with a 20x larger base lr,
    3e-3, for a run of 275 steps instead of MAE's 800 epochs (base 1.5e-3 and 5e-3 ended at a training
    loss of 0.67 / 0.54 and kNN 0.76 / 0.81, against 0.53 and 0.84; measured with betas (0.9, 0.999)),
    AdamW betas (0.9, 0.95) as MAE. Crop scale 0.2-1 as MAE; no flip (digits
    are not mirror-symmetric), no colour, grayscale or blur (MAE uses none).
    """
    return digits().replace({
        "method": "mae",
        "aug.min_scale": 0.2, "aug.flip_p": 0.0, "aug.jitter_p": 0.0, "aug.gray_p": 0.0, "aug.blur_p": 0.0,
        "model.arch": "vit", "model.patch_size": 2, "model.vit_dim": 128, "model.vit_depth": 4,
        "model.vit_heads": 4,
        "mae.mask_ratio": 0.75, "mae.norm_pix_loss": False, "mae.decoder_dim": 64, "mae.decoder_depth": 2,
        "mae.decoder_heads": 4,
        "optim.name": "adamw", "optim.lr": 3e-3, "optim.lr_scaling": "linear", "optim.weight_decay": 0.05,
        "optim.betas": [0.9, 0.95],
        "optim.warmup_epochs": 3,
        "train.epochs": 25,
        "eval.every_epochs": 5,  # features of all 1,800 images at 64 tokens cost ~3x a SimCLR kNN pass
    })


def mae_cifar10() -> Config:
    """MAE on CIFAR-10 with a ViT-Tiny encoder (192 wide, 12 blocks, 3 heads; DeiT, Touvron et al. 2021).

    4 px patches give 64 patches, as MAE's 224/16 px gives 196: 16 visible tokens at 75% masking.
    Decoder 4 blocks (IcarusWizard/MAE's CIFAR-10 ViT-T) of width 128; MAE's ImageNet recipe otherwise
    (He et al. 2021, Table 8; facebookresearch/mae PRETRAIN.md): AdamW, base lr 1.5e-4 · B/256,
    weight decay 0.05, 40 warmup epochs, 800 epochs, normalised-pixel targets, crop 0.2-1 + flip.
    """
    return cifar10().replace({
        "method": "mae",
        "aug.min_scale": 0.2, "aug.flip_p": 0.5, "aug.jitter_p": 0.0, "aug.gray_p": 0.0, "aug.blur_p": 0.0,
        "model.arch": "vit", "model.patch_size": 4, "model.vit_dim": 192, "model.vit_depth": 12,
        "model.vit_heads": 3,
        "mae.mask_ratio": 0.75, "mae.norm_pix_loss": True, "mae.decoder_dim": 128, "mae.decoder_depth": 4,
        "mae.decoder_heads": 4,
        "optim.name": "adamw", "optim.lr": 1.5e-4, "optim.lr_scaling": "linear", "optim.weight_decay": 0.05,
        "optim.betas": [0.9, 0.95],
        "optim.warmup_epochs": 40,
        "train.epochs": 800, "train.batch_size": 512,
    })


class MAE(Method):
    """Masked autoencoder: a ViT encodes the visible 25% of patches, a small decoder predicts the rest."""

    name = "mae"
    view_columns = ("view0",)
    recipes: dict[str, Callable[[], Config]] = {"digits": mae_digits, "cifar10": mae_cifar10}  # noqa: RUF012
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
        mask = random_patch_mask(len(view), g * g, cfg.mae.mask_ratio, generator)  # B x L bool
        return {"view0": view, "mask": mask}

    def build_model(self, cfg: Config) -> nn.Module:
        m, a = cfg.model, cfg.mae
        return build_mae_model(cfg.data.image_size, m.patch_size, m.vit_dim, m.vit_depth, m.vit_heads,
                               a.decoder_dim, a.decoder_depth, a.decoder_heads)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        x = net.image(batch["view0"])  # B x 3 x S x S
        mask = batch["mask"]  # B x L bool
        pred = net.forward(x, mask)  # B x L x p²3
        return masked_mse(pred, patchify(x, cfg.model.patch_size), mask, cfg.mae.norm_pix_loss)

    def pictures(self, model: nn.Module, images: Tensor, cfg: Config, folder: str) -> list[str]:
        """Input, masked input, and output with the visible patches pasted from the input (MAE, Figure 2)."""
        p, ratio = cfg.model.patch_size, cfg.mae.mask_ratio
        images = _pictured(images, cfg.data.image_size)  # n x 3 x S x S uint8
        g = patch_grid(cfg)
        mask = random_patch_mask(len(images), g * g, ratio, torch.Generator().manual_seed(cfg.train.seed))  # n x L
        device = _device(model)
        with _evaluating(model):
            x = normalize(images.to(device))  # n x 3 x S x S
            pred = model(x, mask.to(device)).float()  # n x L x p²3
        target = patchify(x, p)  # n x L x p²3
        note = ""
        if cfg.mae.norm_pix_loss:  # predictions are per-patch normalised: show them at the true patch statistics
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
            note = "; norm_pix_loss: masked patches drawn with their true mean and variance"
        pasted = torch.where(mask.to(device).unsqueeze(-1), pred, target)  # n x L x p²3
        output = denormalize(unpatchify(pasted, p)).cpu()  # n x 3 x S x S uint8
        path = os.path.join(folder, "mae_reconstructions.png")
        reconstruction_grid([images, _greyed(images, mask_pixels(mask, p)), output],
                            ["input", "masked", "output"], path,
                            f"MAE: {ratio:.0%} of patches masked; output = prediction on masked patches, "
                            f"input on visible ones{note}")
        return [path]


# ----------------------------------------------------------------------------- inpainting


def inpaint_digits() -> Config:
    """SimCLR's digits recipe (small ResNet) as a context encoder: a block of ~1/4 of the image hidden.

    A quarter of the area as Pathak et al.'s central 64x64 region of a 128 px image (§3.3); the block
    is placed at random on the 8x8 grid of 2 px patches. Adam(W) without weight decay as their code
    (pathak22/context-encoder, lr 2e-4); base lr 2e-3 · B/256 here for a run of 275 steps (ours):
    the loss falls from 1.76 (the mean image) to 0.21 in 25 epochs.
    """
    return digits().replace({
        "method": "inpaint",
        "aug.min_scale": 0.2, "aug.flip_p": 0.0, "aug.jitter_p": 0.0, "aug.gray_p": 0.0, "aug.blur_p": 0.0,
        "model.patch_size": 2,
        "mae.mask_ratio": 0.25, "mae.norm_pix_loss": False,
        "optim.name": "adamw", "optim.lr": 2e-3, "optim.lr_scaling": "linear", "optim.weight_decay": 0.0,
        "optim.warmup_epochs": 2,
        "train.epochs": 25,
    })


def inpaint_cifar10() -> Config:
    """ResNet-18 (CIFAR stem) context encoder on CIFAR-10: a random block of 1/4 of the image on a grid of
    4 px patches; Adam(W) base lr 2e-4 · B/256 (Pathak et al.'s code: 2e-4), no decay, 200 epochs (ours)."""
    return cifar10().replace({
        "method": "inpaint",
        "aug.min_scale": 0.2, "aug.flip_p": 0.5, "aug.jitter_p": 0.0, "aug.gray_p": 0.0, "aug.blur_p": 0.0,
        "model.arch": "resnet18", "model.cifar_stem": True, "model.patch_size": 4,
        "mae.mask_ratio": 0.25, "mae.norm_pix_loss": False,
        "optim.name": "adamw", "optim.lr": 2e-4, "optim.lr_scaling": "linear", "optim.weight_decay": 0.0,
        "optim.warmup_epochs": 5,
        "train.epochs": 200, "train.batch_size": 512,
    })


class Inpaint(Method):
    """Context encoder: a ResNet sees the image with one block zeroed and a conv decoder fills the block in."""

    name = "inpaint"
    view_columns = ("view0",)
    recipes: dict[str, Callable[[], Config]] = {"digits": inpaint_digits, "cifar10": inpaint_cifar10}  # noqa: RUF012
    search = ("mae.mask_ratio=uniform(0.1,0.5)",)
    sections = {"aug": AugConfig, "mae": MAEConfig}  # noqa: RUF012

    def check_config(self, cfg: Config) -> None:
        """A ResNet, and a patch grid (of the block mask) that tiles the image."""
        super().check_config(cfg)
        patch_grid(cfg)

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        view = one_view(images, cfg, generator)  # B x 3 x S x S uint8
        mask = block_mask(view.shape[0], patch_grid(cfg), cfg.mae.mask_ratio, generator)  # B x L bool
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
        return masked_mse(patchify(recon, p), patchify(x, p), mask, cfg.mae.norm_pix_loss)

    def pictures(self, model: nn.Module, images: Tensor, cfg: Config, folder: str) -> list[str]:
        """Input, input with the block hidden, and the input with the block filled in by the model."""
        p, ratio = cfg.model.patch_size, cfg.mae.mask_ratio
        images = _pictured(images, cfg.data.image_size)  # n x 3 x S x S uint8
        mask = block_mask(len(images), patch_grid(cfg), ratio, torch.Generator().manual_seed(cfg.train.seed))
        hole = mask_pixels(mask, p)  # n x 1 x S x S
        device = _device(model)
        with _evaluating(model):
            x = normalize(images.to(device))  # n x 3 x S x S
            recon = model(x.masked_fill(hole.to(device), 0.0)).float()  # n x 3 x S x S
        if cfg.mae.norm_pix_loss:  # as MAE's pictures: the predicted patches at their true statistics
            pred, target = patchify(recon, p), patchify(x, p)
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
            recon = unpatchify(pred, p)
        output = denormalize(torch.where(hole.to(device), recon, x)).cpu()  # n x 3 x S x S uint8
        path = os.path.join(folder, "inpaint_reconstructions.png")
        reconstruction_grid([images, _greyed(images, hole), output], ["input", "masked", "output"], path,
                            f"context encoder: a block of ~{ratio:.0%} hidden; output = prediction in the "
                            f"block, input elsewhere")
        return [path]
