"""MAE's named recipes: the digits and CIFAR-10 setups (workloads/recipes.py) with MAE's model, masking and
optimiser."""

from __future__ import annotations

from workloads import recipes
from workloads.config import Config


def mae_digits() -> Config:
    """The digits setup with a small ViT: 16 px, 2 px patches (64 per image), 75% masked.

    Encoder and decoder sized to learn in minutes on 2 CPU cores (ours); the optimiser is MAE's
    (AdamW, weight decay 0.05, lr = base · B/256; He et al. 2021, Table 8) with a 20x larger base lr,
    3e-3, for a run of 275 steps instead of MAE's 800 epochs (base 1.5e-3 and 5e-3 ended at a training
    loss of 0.67 / 0.54 and kNN 0.76 / 0.81, against 0.53 and 0.84; measured with betas (0.9, 0.999)),
    AdamW betas (0.9, 0.95) as MAE. Crop scale 0.2-1 as MAE; no flip (digits
    are not mirror-symmetric), no colour, grayscale or blur (MAE uses none).
    """
    return recipes.digits("mae", {
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
    return recipes.cifar10("mae", {
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


RECIPES = {"digits": mae_digits, "cifar10": mae_cifar10}
