"""VICReg's named recipes: the digits setup (workloads/recipes.py) with VICReg's expander and loss, and
solo-learn's CIFAR-10 VICReg."""

from __future__ import annotations

from workloads import recipes
from workloads.config import Config


def digits() -> Config:
    """The digits setup (small ResNet 32/64/128, LARS lr 1.0·B/256, wd 1e-5, warmup 2, batch 128, 25 epochs, its
    augmentation) with the reference's expander scaled down to 512-512-512 (8192-8192-8192 in the paper, on
    2048 features; 4× the backbone's 128 here) and its coefficients 25 / 25 / 1. Ours, sized to learn in
    minutes on 2 CPU cores.
    """
    return recipes.digits("vicreg", {
        "model.proj_hidden_dim": 512, "model.proj_dim": 512, "model.proj_layers": 3,
    })


def cifar10() -> Config:
    """solo-learn's ``scripts/pretrain/cifar/vicreg.yaml``: ResNet-18 (CIFAR stem), expander 2048-2048-2048,
    coefficients 25 / 25 / 1, LARS lr 0.3·B/256 with η 0.02, weight decay 1e-4, biases and norms excluded,
    warmup 10 epochs then cosine, batch 256, 1000 epochs; crop 0.2–1, flip, jitter 0.8 (0.4, 0.4, 0.4, 0.1;
    solo-learn has saturation 0.2), grayscale 0.2, no blur. Not carried over: solarisation (p 0.1), LARS's
    ``clip_lr``, SyncBatchNorm (``train.sync_bn=true`` on GPUs). solo-learn's variance term sums the two
    views' hinges (the paper's Eq. 6), ours averages them (the reference code's): its μ 25 is μ 50 here.
    """
    return recipes.cifar10("vicreg", {
        "aug.strength": 0.5, "aug.min_scale": 0.2, "aug.flip_p": 0.5, "aug.jitter_p": 0.8, "aug.gray_p": 0.2,
        "aug.blur_p": 0.0,
        "model.proj_hidden_dim": 2048, "model.proj_dim": 2048, "model.proj_layers": 3,
        "vicreg.sim_coeff": 25.0, "vicreg.std_coeff": 25.0, "vicreg.cov_coeff": 1.0,
        "optim.name": "lars", "optim.lr": 0.3, "optim.lr_scaling": "linear", "optim.eta": 0.02,
        "optim.weight_decay": 1e-4, "optim.warmup_epochs": 10,
        "train.epochs": 1000, "train.batch_size": 256,
    })


RECIPES = {"digits": digits, "cifar10": cifar10}
