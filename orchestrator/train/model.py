"""The model a train worker builds, and the device settings it runs under."""

from __future__ import annotations

import torch
from torch import nn

from workloads.config import Config
from workloads.methods import method


def build_model(cfg: Config) -> nn.Module:
    """The configured method's model; ``model.encoder`` maps images to the evaluated features."""
    return method(cfg.method).build_model(cfg)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def use_bf16(cfg: Config, device: torch.device) -> bool:
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """NHWC helps convolutions on tensor-core GPUs; on CPU it mostly costs conversions."""
    return cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and device.type == "cuda")
