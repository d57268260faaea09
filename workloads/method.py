"""The workload interface: what a self-supervised method gives the orchestrator, and nothing more.

The orchestrator (Ray Data -> Ray Train -> Ray Tune -> MLflow) calls a method at these points:

1. ``views(images, cfg, generator)`` in Ray Data's CPU tasks: decoded uint8 images (B, 3, H, W), or a
   list of whole images of different shapes, to the named tensors streamed to training (SimCLR, MoCo:
   two augmented views; MAE: one view and a patch mask). uint8 and bool only, so the bytes moved stay
   small; normalisation happens on the device. ``generator`` is a ``RowRandom`` keyed by (seed, epoch,
   row), so a row's views do not depend on the batch it travels in.
2. ``build_model(cfg)`` on every train worker: a module with ``encoder`` (images (N, 3, S, S) ->
   features (N, F), what kNN, the linear probe and the exported MLflow model use) and ``features``.
3. ``trainable(model)``: the module whose parameters the optimiser updates (MoCo: not the key encoder).
4. ``loss(net, batch, cfg)`` at every step: the scalar loss of one batch on the training device.
   ``net.forward`` is the gradient-carrying call through DDP and autocast; ``net.core`` the module
   itself (for MoCo's key encoder and queue); ``net.image`` turns a uint8 batch into model input.
5. ``param_groups(model, cfg)``: the optimiser's parameter groups (default: weights decayed and
   LARS-adapted, biases and norm parameters not; a method may set its own decay or lr per group);
   ``weight_decay(step, total_steps, cfg)`` before every step: the weight decay written into the groups that
   carry a ``wd_scale`` (DINO's cosine schedule; no default group has one).
6. ``before_epoch(model, epoch, cfg)`` at the start of every epoch (SwAV: its queue and prototype freeze go by
   epoch); ``before_optimizer_step(model, step, cfg)`` after backward, before the optimiser step (e.g. SwAV
   freezing its prototypes' gradients in its first epochs).
7. ``after_step(model, step, total_steps, cfg)`` after each optimiser step (MoCo's momentum update).
8. ``finish_batch(batch, cfg)`` on the training device before ``loss``: what ``views`` left for the device
   (two-view methods: the colour stage, ``aug.device``); the batch as it arrived by default.
9. ``recipes`` and ``search``: named configs and the default ``simclr tune`` search space.
10. ``sections`` and ``check_config(cfg)``: the config sections the method reads besides the shared ones (a
    ``Config`` of this method holds them: ``cfg.get(MoCoConfig)``, ``--set moco.queue_size=...``) and its
    rules across sections, checked when a ``Config`` is built.

Adding a method is a folder (its section dataclasses, recipes and this class), importing shared modules
only, and one line in the table of ``workloads/methods.py``; docs/METHODS.md shows the layout.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from workloads.config import Config, ConfigError
from workloads.optim import param_groups
from workloads.rng import RandomSource

# A batch of decoded images: uint8 (N, 3, H, W), or whole images of different shapes, uint8 (3, H_i, W_i).
Images = Tensor | list[Tensor]

# ImageNet channel statistics; views travel as uint8 and are normalised on the training device.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(views: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) on any device -> float normalised with the ImageNet channel statistics."""
    mean = torch.tensor(MEAN, device=views.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=views.device).view(1, 3, 1, 1)
    return (views.float().div_(255.0) - mean) / std


def denormalize(x: Tensor) -> Tensor:
    """The inverse of ``normalize``, to uint8 (for pictures of reconstructions)."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return ((x.float() * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)


@dataclass
class Net:
    """What ``Method.loss`` may call on a train worker."""

    forward: Callable[..., Any]  # the model through DDP (and autocast): gradients flow and are all-reduced
    core: nn.Module  # the model itself, unwrapped: for no-grad parts (MoCo's key encoder, queue)
    image: Callable[[Tensor], Tensor]  # uint8 (B, 3, S, S) on the device -> normalised float input
    autocast: Callable[[], AbstractContextManager[Any]]  # the run's autocast, for forwards outside `forward`


class Method:
    """Base of every workload. Subclasses override what their method does differently."""

    name: str = ""
    # streamed columns that are images (uint8 B x 3 x S x S); the first is shown in the views picture
    view_columns: tuple[str, ...] = ("view0", "view1")
    # DistributedDataParallel keyword arguments (MoCo: no buffer broadcast of its queue each step)
    ddp_kwargs: dict[str, Any] = {}  # noqa: RUF012 - read-only class default
    recipes: dict[str, Callable[[], Config]] = {}  # noqa: RUF012
    search: tuple[str, ...] = ()  # default `simclr tune` search space, as --search texts
    # the config sections this method reads besides the shared ones: name -> dataclass (every field defaulted)
    sections: dict[str, type] = {}  # noqa: RUF012

    def check_config(self, cfg: Config) -> None:
        """Rules across sections, run when a ``Config`` of this method is built (each section has checked
        its own fields); raise ``ConfigError`` naming the field and the fix. Default: a ResNet encoder."""
        if cfg.model.arch == "vit":
            raise ConfigError(f"model.arch must be a ResNet for method {self.name!r} (vit is for methods 'mae' and "
                              f"'dino'); got 'vit'")

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        raise NotImplementedError

    def build_model(self, cfg: Config) -> nn.Module:
        raise NotImplementedError

    def trainable(self, model: nn.Module) -> nn.Module:
        return model

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        raise NotImplementedError

    def param_groups(self, model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
        """The optimiser's parameter groups over ``trainable(model)``; keys beyond ``params`` override the
        optimiser's defaults per group (``weight_decay``, ``lr_scale``; ``lars_exclude`` for LARS)."""
        return param_groups(self.trainable(model), cfg.optim.weight_decay)

    def weight_decay(self, step: int, total_steps: int, cfg: Config) -> float:
        """The weight decay of optimiser step ``step`` (0-based, as the learning rate's schedule), written before
        the step into every parameter group with a ``wd_scale`` (times it). Default: ``optim.weight_decay``."""
        return cfg.optim.weight_decay

    def before_epoch(self, model: nn.Module, epoch: int, cfg: Config) -> None:
        """Called on every worker before the first step of each epoch (counting from 1), a resumed epoch too."""

    def before_optimizer_step(self, model: nn.Module, step: int, cfg: Config) -> None:
        """Called on every worker after backward (gradients all-reduced) and before gradient clipping and
        the optimiser step; ``step`` is the step about to be taken, counting from 1."""

    def after_step(self, model: nn.Module, step: int, total_steps: int, cfg: Config) -> None:
        """Called on every worker after each optimiser step; ``step`` counts from 1."""

    def finish_batch(self, batch: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
        """The batch as ``loss`` reads it, from the columns ``views`` streamed, once they are on the training
        device (and for the run's views picture). Default: unchanged."""
        return batch

    def pictures(self, model: nn.Module, images: Tensor, cfg: Config, folder: str) -> list[str]:
        """PNG files worth looking at after training (MAE: input / masked / reconstruction); rank 0."""
        return []
