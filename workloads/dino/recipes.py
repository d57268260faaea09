"""DINO's named recipes: the digits setup (workloads/recipes.py) with DINO's networks and schedules, and
solo-learn's CIFAR-10 DINO."""

from __future__ import annotations

from workloads import recipes
from workloads.config import Config


def digits() -> Config:
    """The digits setup (small ResNet 32/64/128, batch 128, 25 epochs, its augmentation; two 16 px global crops,
    no local ones) with DINO's head scaled down (256 wide, 3 layers, bottleneck 64, 1,024 outputs) and the
    reference's optimiser (AdamW, weight decay 0.04 → 0.4 on a cosine, per-parameter clipping at 3). Ours, sized
    for 2 CPU cores. Where it departs from the reference (docs/METHODS.md, DINO, says what the reference's
    settings did on digits): BatchNorm in the head (``use_bn_in_head``, a reference option) and a sharper teacher
    (0.02, no warm-up), which keep the head's outputs from collapsing to uniform at this size; AdamW at
    2e-3·B/256; teacher momentum 0.99 → 1, as 0.996 would average over about as many steps as the whole run
    has. Local crops are on with ``--set multicrop.small_crops=2`` (8 px of scale 0.05-0.4, the reference's
    local scale).
    """
    return recipes.digits("dino", {
        "model.proj_hidden_dim": 256, "model.proj_dim": 64, "model.proj_layers": 3,
        "multicrop.large_crops": 2, "multicrop.small_crops": 0, "multicrop.small_size": 8,
        "multicrop.small_min_scale": 0.05, "multicrop.small_max_scale": 0.4,
        "dino.out_dim": 1024, "dino.use_bn_in_head": True, "dino.momentum_teacher": 0.99,
        "dino.warmup_teacher_temp": 0.02, "dino.teacher_temp": 0.02, "dino.warmup_teacher_temp_epochs": 0,
        "dino.weight_decay_end": 0.4, "dino.clip_grad": 3.0, "dino.freeze_last_layer": 1,
        "optim.name": "adamw", "optim.lr": 2e-3, "optim.lr_scaling": "linear", "optim.weight_decay": 0.04,
    })


def cifar10() -> Config:
    """solo-learn's ``scripts/pretrain/cifar/dino.yaml`` with its DINO defaults (``solo/methods/dino.py``):
    ResNet-18 (CIFAR stem), head 2048 → 256 (3 layers, no BatchNorm), 4096 prototypes, last layer normalised
    and frozen in the first epoch, τ_s 0.1, τ_t 0.07 from the start (its warm-up epochs default to 0), teacher
    momentum 0.9995 → 1 cosine, no gradient clipping, LARS lr 0.3·B/256 with η 0.02, weight decay 1e-6
    (constant, biases and norms excluded), warmup 10 epochs then cosine, batch 256, 1000 epochs. Two 32 px crops
    of scale 0.08–1 (its asymmetric augmentation: no local crops), flip, jitter 0.8 at s 0.5 (solo-learn's
    saturation 0.2 is 0.4 here), grayscale 0.2, no blur; its solarisation (p 0.2 on the second crop) is not
    implemented here, and its LARS clips the adapted lr (``clip_lr``), ours not.
    """
    return recipes.cifar10("dino", {
        "aug.strength": 0.5, "aug.min_scale": 0.08, "aug.flip_p": 0.5, "aug.jitter_p": 0.8, "aug.gray_p": 0.2,
        "aug.blur_p": 0.0,
        "model.proj_hidden_dim": 2048, "model.proj_dim": 256, "model.proj_layers": 3,
        "multicrop.large_crops": 2, "multicrop.small_crops": 0,
        "dino.out_dim": 4096, "dino.norm_last_layer": True, "dino.use_bn_in_head": False,
        "dino.momentum_teacher": 0.9995, "dino.warmup_teacher_temp": 0.04, "dino.teacher_temp": 0.07,
        "dino.warmup_teacher_temp_epochs": 0, "dino.student_temp": 0.1, "dino.freeze_last_layer": 1,
        "dino.clip_grad": 0.0, "dino.weight_decay_end": 1e-6,
        "optim.name": "lars", "optim.lr": 0.3, "optim.lr_scaling": "linear", "optim.eta": 0.02,
        "optim.weight_decay": 1e-6, "optim.warmup_epochs": 10,
        "train.epochs": 1000, "train.batch_size": 256,
    })


RECIPES = {"digits": digits, "cifar10": cifar10}
