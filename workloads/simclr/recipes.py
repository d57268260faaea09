"""SimCLR's named recipes: plain functions returning a ``Config``, values from the reference recipes.

Sources (see ../shared/SIMCLR.md): google-research/simclr README (CIFAR-10: ResNet-18, batch 512,
LARS lr 1.0, tau 0.5, s 0.5, no blur; ImageNet: ResNet-50, batch 4096, LARS lr 0.075*sqrt(B),
wd 1e-6, tau 0.1, s 1.0, blur). ``digits`` is ours: sized so the main job learns in minutes on 2 CPUs.
"""

from __future__ import annotations

from collections.abc import Callable

from workloads.config import Config, DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from workloads.contrastive import LossConfig
from workloads.views import AugConfig


def digits() -> Config:
    """scikit-learn's 8x8 digits upscaled to 16 px; a 3-stage small ResNet; minutes on 2 CPU cores."""
    return Config(
        data=DataConfig(source="digits", image_size=16, holdout_fraction=0.2, augment_batch_size=128),
        aug=AugConfig(strength=0.5, min_scale=0.25, flip_p=0.0, blur_p=0.0),
        model=ModelConfig(arch="small_resnet", widths=(32, 64, 128), blocks=(1, 1, 1), proj_dim=64),
        loss=LossConfig(temperature=0.2),
        optim=OptimConfig(name="lars", lr=1.0, lr_scaling="linear", weight_decay=1e-5, warmup_epochs=2),
        train=TrainConfig(epochs=25, batch_size=128, workers=2, log_every_steps=5),
        eval=EvalConfig(knn_k=20, linear_probe_epochs=100),
    )


def cifar10() -> Config:
    """google-research/simclr's CIFAR-10 command: ResNet-18 (CIFAR stem), batch 512, 1000 epochs."""
    return Config(
        data=DataConfig(source="cifar10", root="./data", image_size=32, holdout_fraction=0.0),
        aug=AugConfig(strength=0.5, min_scale=0.08, blur_p=0.0),
        model=ModelConfig(arch="resnet18", cifar_stem=True, proj_dim=128, proj_layers=2),
        loss=LossConfig(temperature=0.5),
        optim=OptimConfig(name="lars", lr=1.0, lr_scaling="linear", weight_decay=1e-4, warmup_epochs=10),
        train=TrainConfig(epochs=1000, batch_size=512, workers=2),
        eval=EvalConfig(knn_k=200, every_epochs=10),
    )


def imagenet() -> Config:
    """google-research/simclr's ImageNet ResNet-50 (1x) recipe: batch 4096, 100 epochs, tau 0.1."""
    return Config(
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

