"""MoCo v2 (He et al. 2020, arXiv:1911.05722; Chen et al. 2020, arXiv:2003.04297) as a workload.

Two augmented views: view0 is the query, encoded by f_q through DDP; view1 the key, encoded by the
momentum encoder f_k without gradient. InfoNCE against the positive key and a queue of earlier keys;
the keys then join the queue. Asymmetric, as in the paper: only view0 is back-propagated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workloads.augment.views import finish_views, two_views
from workloads.config import Config
from workloads.contrastive import LossConfig
from workloads.encoders import build_encoder
from workloads.heads import mlp_head
from workloads.method import Images, Method, Net
from workloads.moco.config import MoCoConfig
from workloads.moco.loss import info_nce
from workloads.moco.model import MoCoModel
from workloads.moco.recipes import RECIPES
from workloads.momentum import momentum_at
from workloads.rng import RandomSource
from workloads.sections import AugConfig


def _moco(model: nn.Module) -> MoCoModel:
    if not isinstance(model, MoCoModel):
        raise TypeError(f"the MoCo workload needs the MoCoModel from MoCo.build_model; got {type(model).__name__}")
    return model


class MoCo(Method):
    name = "moco"
    # The queue is identical on every rank by construction (every rank enqueues the same gathered
    # keys); broadcasting it from rank 0 before every forward would move K·D floats (32 MB at
    # 65536 x 128) per step for nothing. forward_sync_buffers (torch >= 2.13) still broadcasts every
    # buffer once at DDP construction, so all ranks start from rank 0's queue; the deprecated
    # broadcast_buffers=False would skip that too.
    ddp_kwargs = {"forward_sync_buffers": False}  # noqa: RUF012 - read-only class default
    recipes = RECIPES
    sections = {"aug": AugConfig, "loss": LossConfig, "moco": MoCoConfig}  # noqa: RUF012
    search = ("loss.temperature=loguniform(0.05,0.5)", "moco.momentum=uniform(0.9,0.999)",
              "moco.queue_size=choice(1024,4096,16384)")

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        return two_views(images, cfg, generator)  # MoCo v2's aug+ is SimCLR's augmentation

    def finish_batch(self, batch: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
        return finish_views(batch, cfg)  # aug.device=train: the views' colour stage, here on the device

    def build_model(self, cfg: Config) -> nn.Module:
        m, moco = cfg.model, cfg.get(MoCoConfig)
        encoder, num_features = build_encoder(m.arch, m.cifar_stem, widths=m.widths, blocks=m.blocks)
        head = mlp_head(num_features, m.proj_hidden_dim or num_features, m.proj_dim, num_layers=m.proj_layers)
        return MoCoModel(encoder, head, dim=m.proj_dim, queue_size=moco.queue_size, shuffle_bn=moco.shuffle_bn)

    def trainable(self, model: nn.Module) -> nn.Module:
        """f_q only: the key encoder moves by momentum, never by the optimiser."""
        core = _moco(model)
        return nn.ModuleDict({"encoder": core.encoder, "head": core.head})

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        core = _moco(net.core)
        q = net.forward(net.image(batch["view0"]))  # queries: N x D, through DDP
        with torch.no_grad(), net.autocast():
            k = core.keys(batch["view1"], to_input=net.image)  # keys: N x D, no gradient
        # clone: enqueue below rewrites the queue in place, and q's gradient needs the old one
        loss = info_nce(q, k, core.queue.clone().detach(), cfg.get(LossConfig).temperature)
        core.enqueue(k)
        return loss

    def after_step(self, model: nn.Module, step: int, total_steps: int, cfg: Config) -> None:
        """f_k ← m·f_k + (1 − m)·f_q. The reference does this at the start of the next forward; doing it
        after the optimiser step is the same sequence of key encoders."""
        moco = cfg.get(MoCoConfig)
        m = momentum_at(step, total_steps, moco.momentum, moco.momentum_schedule)
        _moco(model).momentum_update(m)
