"""SwAV (Caron et al. 2020, arXiv:2006.09882) as a workload: swapped prediction of Sinkhorn-Knopp codes
over multi-crop views.

Every crop (2 large + several small, ``workloads/augment/multicrop.py``) is embedded and scored against the
prototypes; each large crop's codes come from Sinkhorn-Knopp over the batch of every worker (and the
queue, once it is on), without gradient; every other crop predicts them (facebookresearch/swav
main_swav.py ``train``). A clustering method, not a GAN: no generator, no discriminator.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workloads.augment.multicrop import check_multicrop, multi_crop
from workloads.config import Config, ConfigError
from workloads.encoders import build_encoder
from workloads.heads import ProjectionHead
from workloads.method import Images, Method, Net
from workloads.rng import RandomSource
from workloads.sections import AugConfig, MultiCropConfig
from workloads.swav.config import SwAVConfig
from workloads.swav.loss import sinkhorn_knopp, swapped_prediction
from workloads.swav.model import SwAVModel
from workloads.swav.recipes import RECIPES


def _swav(model: nn.Module) -> SwAVModel:
    if not isinstance(model, SwAVModel):
        raise TypeError(f"the SwAV workload needs the SwAVModel from SwAV.build_model; got {type(model).__name__}")
    return model


@torch.no_grad()
def codes(core: SwAVModel, z_large: Tensor, scores_large: list[Tensor], cfg: Config) -> list[Tensor]:
    """Each large crop's codes (B, K): Sinkhorn-Knopp over this worker's B rows, preceded by its part of
    the queue once the queue is on and full; then this batch's large-crop embeddings join the queue."""
    s = cfg.get(SwAVConfig)
    on = s.queue_length > 0 and core.epoch > s.epoch_queue_starts
    full = on and core.queue_full()  # decided once, before this batch is enqueued
    b = scores_large[0].shape[0]
    out = []
    for i, scores in enumerate(scores_large):
        scores = scores.detach().float()  # B x K
        if full:
            scores = torch.cat([core.own_queue(i) @ core.prototypes.weight.detach().float().T, scores])  # (L/W+B) x K
        out.append(sinkhorn_knopp(scores, s.epsilon, s.sinkhorn_iterations)[-b:])  # B x K, this batch's rows
    if on:
        core.enqueue(z_large.detach().view(len(scores_large), b, -1))  # C x B x D
    return out


class SwAV(Method):
    name = "swav"
    view_columns = ("view0", "view1")  # the large crops; the small ones are small0, small1, ...
    # The queue is the same on every rank by construction (each rank enqueues the gathered embeddings);
    # DDP broadcasts buffers once at construction, not before every forward (as MoCo).
    ddp_kwargs = {"forward_sync_buffers": False}  # noqa: RUF012 - read-only class default
    recipes = RECIPES
    sections = {"aug": AugConfig, "multicrop": MultiCropConfig, "swav": SwAVConfig}  # noqa: RUF012
    search = ("swav.temperature=loguniform(0.05,0.3)", "swav.epsilon=loguniform(0.02,0.1)",
              "aug.min_scale=uniform(0.14,0.5)")

    def check_config(self, cfg: Config) -> None:
        super().check_config(cfg)
        check_multicrop(cfg)
        large = cfg.get(MultiCropConfig).large_crops
        if large < 2:
            raise ConfigError(f"multicrop.large_crops must be >= 2 for method 'swav' (each large crop's codes are "
                              f"predicted from the other crops; SwAV uses 2); got {large}")
        length, batch = cfg.get(SwAVConfig).queue_length, cfg.train.batch_size
        if length % batch:
            raise ConfigError(f"swav.queue_length must be 0 or a multiple of train.batch_size ({batch}), so every "
                              f"worker's part holds whole batches; got {length} "
                              f"(try {max(1, length // batch) * batch})")

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        return multi_crop(images, cfg, generator)  # view0.. B x 3 x S x S, small0.. B x 3 x s x s, uint8

    def build_model(self, cfg: Config) -> nn.Module:
        m, s = cfg.model, cfg.get(SwAVConfig)
        encoder, num_features = build_encoder(m.arch, m.cifar_stem, widths=m.widths, blocks=m.blocks)
        head = ProjectionHead(num_features, m.proj_hidden_dim or num_features, m.proj_dim, m.proj_layers)
        return SwAVModel(encoder, head, m.proj_dim, s.num_prototypes, cfg.get(MultiCropConfig).large_crops,
                         s.queue_length)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        core, mc = _swav(net.core), cfg.get(MultiCropConfig)
        crops = [net.image(torch.cat([batch[n] for n in mc.large_names()]))]  # C*B x 3 x S x S
        if mc.small_crops:
            crops.append(net.image(torch.cat([batch[n] for n in mc.small_names()])))  # M*B x 3 x s x s
        z, scores = net.forward(*crops)  # (C+M)*B x D, (C+M)*B x K
        b = batch["view0"].shape[0]
        per_crop = list(scores.split(b))  # C+M crops x (B x K), large crops first
        q = codes(core, z[:mc.large_crops * b], per_crop[:mc.large_crops], cfg)
        return swapped_prediction(per_crop, q, cfg.get(SwAVConfig).temperature)

    def before_epoch(self, model: nn.Module, epoch: int, cfg: Config) -> None:
        _swav(model).epoch = epoch  # the queue and the prototype freeze go by epoch

    def before_optimizer_step(self, model: nn.Module, step: int, cfg: Config) -> None:
        """The prototypes stay fixed during the first ``swav.freeze_prototypes_epochs``: their gradient is
        dropped, so the optimiser skips them (no step, no decay, no momentum), as the reference does."""
        core = _swav(model)
        if core.epoch <= cfg.get(SwAVConfig).freeze_prototypes_epochs:
            core.prototypes.weight.grad = None

    def after_step(self, model: nn.Module, step: int, total_steps: int, cfg: Config) -> None:
        """Prototypes back to unit length. The reference normalises them before each forward; after each
        optimiser step (and at construction) is the same sequence of prototypes."""
        _swav(model).normalize_prototypes()
