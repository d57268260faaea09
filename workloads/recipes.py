"""The setups every method's named recipes start from (plain functions returning a ``Config``, as
torchtitan's): the shared sections and SimCLR's augmentation of one setup, for a given method, with that
method's recipe's changes. A method's recipes (workloads/<method>/recipes.py) call these with their own.

Values of the CIFAR-10 setup from google-research/simclr's README (ResNet-18, batch 512, LARS lr 1.0,
s 0.5, no blur); ``digits`` is ours, sized so the main job learns in minutes on 2 CPUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workloads.config import Config, DataConfig, EvalConfig, ModelConfig, OptimConfig, TrainConfig
from workloads.fields import set_dotted, to_plain
from workloads.sections import AugConfig


def digits(method: str, changes: Mapping[str, Any]) -> Config:
    """scikit-learn's 8x8 digits upscaled to 16 px; a 3-stage small ResNet, LARS at batch 128 for 25 epochs;
    minutes on 2 CPU cores."""
    return setup(method, changes, {
        "data": DataConfig(source="digits", image_size=16, holdout_fraction=0.2, augment_batch_size=128),
        "aug": AugConfig(strength=0.5, min_scale=0.25, flip_p=0.0, blur_p=0.0),
        "model": ModelConfig(arch="small_resnet", widths=(32, 64, 128), blocks=(1, 1, 1), proj_dim=64),
        "optim": OptimConfig(name="lars", lr=1.0, lr_scaling="linear", weight_decay=1e-5, warmup_epochs=2),
        "train": TrainConfig(epochs=25, batch_size=128, workers=2, log_every_steps=5),
        "eval": EvalConfig(knn_k=20, linear_probe_epochs=100),
    })


def cifar10(method: str, changes: Mapping[str, Any]) -> Config:
    """google-research/simclr's CIFAR-10 command: ResNet-18 (CIFAR stem), batch 512, 1000 epochs."""
    return setup(method, changes, {
        "data": DataConfig(source="cifar10", root="./data", image_size=32, holdout_fraction=0.0),
        "aug": AugConfig(strength=0.5, min_scale=0.08, blur_p=0.0),
        "model": ModelConfig(arch="resnet18", cifar_stem=True, proj_dim=128, proj_layers=2),
        "optim": OptimConfig(name="lars", lr=1.0, lr_scaling="linear", weight_decay=1e-4, warmup_epochs=10),
        "train": TrainConfig(epochs=1000, batch_size=512, workers=2),
        "eval": EvalConfig(knn_k=200, every_epochs=10),
    })


def setup(method: str, changes: Mapping[str, Any], sections: Mapping[str, object]) -> Config:
    """A ``method`` config of ``sections`` (the rest at their defaults) with dotted ``changes``
    (``{"loss.temperature": 0.2}``) applied first: the rules across sections check the recipe, not the setup
    it changes (an MAE recipe's ViT replaces the setup's ResNet)."""
    data: dict[str, Any] = {"method": method, **{name: to_plain(value) for name, value in sections.items()}}
    for dotted, value in changes.items():
        set_dotted(data, dotted, value)
    return Config.from_dict(data)
