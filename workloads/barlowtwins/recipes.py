"""Barlow Twins' named recipes: the digits setup (workloads/recipes.py) with Barlow Twins' projector and loss,
and solo-learn's CIFAR-10 Barlow Twins."""

from __future__ import annotations

from workloads import recipes
from workloads.config import Config


def digits() -> Config:
    """The digits setup (small ResNet 32/64/128, LARS lr 1.0·B/256, wd 1e-5, warmup 2, batch 128, 25 epochs, its
    augmentation) with the reference's projector scaled down to 512-512-512 (8192-8192-8192 in the paper, on
    2048 features; 4× the backbone's 128 here) and its λ 0.0051. Ours, sized to learn in minutes on 2 CPU
    cores (docs/METHODS.md has how it was chosen).
    """
    return recipes.digits("barlowtwins", {
        "model.proj_hidden_dim": 512, "model.proj_dim": 512, "model.proj_layers": 3,
        "barlowtwins.lambd": 0.0051,
    })


def cifar10() -> Config:
    """solo-learn's ``scripts/pretrain/cifar/barlow.yaml``: ResNet-18 (CIFAR stem), projector 2048-2048-2048,
    λ 0.0051, loss scaled by 0.1, LARS lr 0.3·B/256 with η 0.02, weight decay 1e-4, biases and norms
    excluded, warmup 10 epochs then cosine, batch 256, 1000 epochs. Augmentation (its ``asymmetric.yaml``):
    crop 0.08–1, flip, jitter 0.8 (0.4, 0.4, 0.4, 0.1; solo-learn has saturation 0.2), grayscale 0.2, no
    blur. Not carried over: solarisation (p 0.2 on the second view; not implemented here), LARS's ``clip_lr``,
    the biases solo-learn's projector keeps, SyncBatchNorm (``train.sync_bn=true`` on GPUs).
    """
    return recipes.cifar10("barlowtwins", {
        "aug.strength": 0.5, "aug.min_scale": 0.08, "aug.flip_p": 0.5, "aug.jitter_p": 0.8, "aug.gray_p": 0.2,
        "aug.blur_p": 0.0,
        "model.proj_hidden_dim": 2048, "model.proj_dim": 2048, "model.proj_layers": 3,
        "barlowtwins.lambd": 0.0051, "barlowtwins.scale_loss": 0.1,
        "optim.name": "lars", "optim.lr": 0.3, "optim.lr_scaling": "linear", "optim.eta": 0.02,
        "optim.weight_decay": 1e-4, "optim.warmup_epochs": 10,
        "train.epochs": 1000, "train.batch_size": 256,
    })


RECIPES = {"digits": digits, "cifar10": cifar10}
