"""SimCLR's named recipes: plain functions returning a ``Config``, values from the reference recipes.

Sources: google-research/simclr README (CIFAR-10: ResNet-18, batch 512, LARS lr 1.0, tau 0.5, s 0.5, no
blur; ImageNet: ResNet-50, batch 4096, LARS lr 0.075*sqrt(B), wd 1e-6, tau 0.1, s 1.0, blur). ``digits``
is ours: sized so the main job learns in minutes on 2 CPUs.
"""

from __future__ import annotations

from collections.abc import Callable

from workloads import recipes
from workloads.config import Config, DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from workloads.contrastive import LossConfig
from workloads.sections import AugConfig


def digits() -> Config:
    """The digits setup (workloads/recipes.py) with τ 0.2."""
    return recipes.digits("simclr", {"loss.temperature": 0.2})


def cifar10() -> Config:
    """google-research/simclr's CIFAR-10 command: ResNet-18 (CIFAR stem), batch 512, 1000 epochs, τ 0.5."""
    return recipes.cifar10("simclr", {"loss.temperature": 0.5})


def imagenet() -> Config:
    """google-research/simclr's ImageNet ResNet-50 (1x) recipe: batch 4096, 100 epochs, tau 0.1."""
    return Config(
        "simclr",
        data=DataConfig(source="imagefolder", root="./imagenet/train", eval_root="./imagenet/val", image_size=224,
                        decode_size=256, holdout_fraction=0.0, augment_batch_size=64),
        aug=AugConfig(strength=1.0, min_scale=0.08, blur_p=0.5),
        model=ModelConfig(arch="resnet50", cifar_stem=False, proj_hidden_dim=2048, proj_dim=128),
        loss=LossConfig(temperature=0.1),
        optim=OptimConfig(name="lars", lr=0.075, lr_scaling="sqrt", weight_decay=1e-6, warmup_epochs=10),
        train=TrainConfig(epochs=100, batch_size=4096, workers=32, use_gpu=True, sync_bn=True,
                          precision="bf16", channels_last="on"),
        eval=EvalConfig(knn_k=200, every_epochs=5),
    )


RECIPES: dict[str, Callable[[], Config]] = {"digits": digits, "cifar10": cifar10, "imagenet": imagenet}

