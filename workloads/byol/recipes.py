"""BYOL's named recipes: the digits setup (workloads/recipes.py) with BYOL's networks, and solo-learn's
CIFAR-10 BYOL."""

from __future__ import annotations

from workloads import recipes
from workloads.config import Config


def digits() -> Config:
    """The digits setup (small ResNet 32/64/128, LARS, batch 128, 25 epochs, the same augmentation)
    with BYOL's networks scaled down: projector 256 → 64 and predictor 256 → 64 (BYOL: 4096 → 256), τ_base
    0.99 with the cosine schedule (solo-learn's CIFAR value; BYOL's 0.996 averages over ~250 steps, the
    length of this whole run), LARS lr 3.0·B/256. Ours: sized to learn in minutes on 2 CPU cores; on one
    process for 10 epochs, lr 0.3 / 1.0 / 3.0 ended at kNN 0.894 / 0.903 / 0.925 from 0.908; 2 workers, 25
    epochs: 0.947 at lr 1.0, 0.958 at 3.0 (from 0.925).
    """
    return recipes.digits("byol", {
        "model.proj_hidden_dim": 256, "model.proj_dim": 64, "model.proj_layers": 2,
        "byol.momentum": 0.99, "byol.momentum_schedule": "cosine", "byol.pred_hidden_dim": 256,
        "optim.lr": 3.0,
    })


def cifar10() -> Config:
    """solo-learn's ``scripts/pretrain/cifar/byol.yaml``: ResNet-18 (CIFAR stem), projector 4096 → 256 and
    predictor 4096 → 256 (BYOL §3.3), τ_base 0.99 → 1 cosine, LARS lr 1.0·B/256 with η 0.02, weight decay
    1e-5, biases and norms excluded, warmup 10 epochs then cosine, batch 256, 1000 epochs (92.58% linear
    top-1 in solo-learn's README). Augmentation: crop 0.08–1, flip, jitter 0.8 (0.4, 0.4, 0.4, 0.1; solo-learn
    has saturation 0.2), grayscale 0.2, no blur; solo-learn's solarisation (p 0.2 on the second view) is
    not implemented here, and its LARS clips the adapted lr at the base lr (``clip_lr``), ours does not.
    """
    return recipes.cifar10("byol", {
        "aug.strength": 0.5, "aug.min_scale": 0.08, "aug.flip_p": 0.5, "aug.jitter_p": 0.8, "aug.gray_p": 0.2,
        "aug.blur_p": 0.0,
        "model.proj_hidden_dim": 4096, "model.proj_dim": 256, "model.proj_layers": 2,
        "byol.momentum": 0.99, "byol.momentum_schedule": "cosine", "byol.pred_hidden_dim": 4096,
        "optim.name": "lars", "optim.lr": 1.0, "optim.lr_scaling": "linear", "optim.eta": 0.02,
        "optim.weight_decay": 1e-5, "optim.warmup_epochs": 10,
        "train.epochs": 1000, "train.batch_size": 256,
    })


RECIPES = {"digits": digits, "cifar10": cifar10}
