"""DINO (Caron et al. 2021, arXiv:2104.14294) as a workload: self-distillation with no labels.

Multi-crop views (``workloads/augment/multicrop.py``: 2 global crops + N local ones); the student (backbone + DINO
head) sees every crop through DDP, the teacher (its momentum copy) only the global crops, without gradient. The
loss is the cross-entropy of the student's softmax against the teacher's centred, sharpened softmax over every
(teacher crop, other student crop) pair; the centre follows the teacher's global batch mean. Schedules as
facebookresearch/dino main_dino.py: the teacher's momentum (cosine to 1) and the weight decay (cosine) by step,
the teacher's temperature (linear warm-up) and the last layer's freeze by epoch. A ResNet or the ViT (class token).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from workloads.augment.multicrop import check_multicrop, multi_crop
from workloads.config import Config, ConfigError
from workloads.dino.config import DINOConfig
from workloads.dino.loss import dino_loss, updated_center
from workloads.dino.model import DINOHead, DINOModel
from workloads.dino.pictures import attention_grid, cls_attention
from workloads.dino.recipes import RECIPES
from workloads.encoders import build_encoder
from workloads.masked import patch_grid
from workloads.method import Images, Method, Net, normalize
from workloads.momentum import momentum_at
from workloads.optim import cosine, param_groups
from workloads.pictures import model_device, pictured
from workloads.rng import RandomSource
from workloads.sections import AugConfig, MultiCropConfig
from workloads.vit import ViT


def _dino(model: nn.Module) -> DINOModel:
    if not isinstance(model, DINOModel):
        raise TypeError(f"the DINO workload needs the DINOModel from DINO.build_model; got {type(model).__name__}")
    return model


def teacher_temperature(epoch: int, cfg: Config) -> float:
    """τ_t in epoch ``epoch`` (counting from 1): linear from ``warmup_teacher_temp`` in the first epoch to
    ``teacher_temp`` in epoch ``warmup_teacher_temp_epochs``, then constant (main_dino.py's
    ``np.linspace(warmup, teacher, warmup_epochs)`` followed by ``teacher_temp``)."""
    d = cfg.get(DINOConfig)
    e, warmup = epoch - 1, d.warmup_teacher_temp_epochs
    if e >= warmup:
        return d.teacher_temp
    if warmup == 1:
        return d.warmup_teacher_temp
    return d.warmup_teacher_temp + (d.teacher_temp - d.warmup_teacher_temp) * e / (warmup - 1)


def teacher_momentum(step: int, total_steps: int, cfg: Config) -> float:
    """m for the update after optimiser step ``step`` (counting from 1): main_dino.py's
    ``cosine_scheduler(momentum_teacher, 1)`` at iteration step − 1, 1 − (1 − m₀)·(cos(π(step − 1)/K) + 1)/2."""
    return momentum_at(step - 1, total_steps, cfg.get(DINOConfig).momentum_teacher, "cosine")


@torch.no_grad()
def clip_each_gradient(params: list[nn.Parameter], max_norm: float) -> None:
    """Every parameter's gradient scaled down to norm ``max_norm`` on its own when longer (factor
    max_norm / (‖g‖ + 1e-6)), as DINO's ``utils.clip_gradients``: per parameter, not the global norm."""
    for p in params:
        if p.grad is not None:
            coef = max_norm / (p.grad.norm(2) + 1e-6)
            p.grad.mul_(coef.clamp(max=1.0))


def build_backbone(cfg: Config) -> tuple[nn.Module, int]:
    """(backbone: images → features (N, F), F): a ResNet, or the ViT read at its class token (DINO's)."""
    m = cfg.model
    if m.arch == "vit":
        return ViT(cfg.data.image_size, m.patch_size, m.vit_dim, m.vit_depth, m.vit_heads, pool="cls"), m.vit_dim
    return build_encoder(m.arch, m.cifar_stem, widths=m.widths, blocks=m.blocks)


class DINO(Method):
    name = "dino"
    view_columns = ("view0", "view1")  # the global crops; the local ones are small0, small1, ...
    recipes = RECIPES
    sections = {"aug": AugConfig, "multicrop": MultiCropConfig, "dino": DINOConfig}  # noqa: RUF012
    search = ("dino.teacher_temp=loguniform(0.01,0.07)", "dino.student_temp=uniform(0.05,0.2)")

    def check_config(self, cfg: Config) -> None:
        """A ResNet or the ViT (whose patches must tile every crop); >= 2 global crops; small crops no larger."""
        check_multicrop(cfg)
        mc = cfg.get(MultiCropConfig)
        if mc.large_crops < 2:
            raise ConfigError(f"multicrop.large_crops must be >= 2 for method 'dino' (each global crop's teacher "
                              f"output is predicted from the other crops; DINO uses 2); got {mc.large_crops}")
        if cfg.model.arch == "vit":
            patch_grid(cfg)
            p = cfg.model.patch_size
            if mc.small_crops and mc.small_size % p:
                raise ConfigError(f"multicrop.small_size must be a multiple of model.patch_size ({p}) with the ViT, "
                                  f"so its patches tile the local crops; got {mc.small_size}")

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        return multi_crop(images, cfg, generator)  # view0.. B x 3 x S x S, small0.. B x 3 x s x s, uint8

    def build_model(self, cfg: Config) -> nn.Module:
        m, d = cfg.model, cfg.get(DINOConfig)
        backbone, num_features = build_backbone(cfg)
        head = DINOHead(num_features, d.out_dim, hidden_dim=m.proj_hidden_dim or num_features,
                        bottleneck_dim=m.proj_dim, layers=m.proj_layers, use_bn=d.use_bn_in_head,
                        norm_last_layer=d.norm_last_layer)
        return DINOModel(backbone, head, d.out_dim)

    def trainable(self, model: nn.Module) -> nn.Module:
        """The student only: the teacher moves by momentum, never by the optimiser."""
        core = _dino(model)
        return nn.ModuleDict({"backbone": core.student, "head": core.student_head})

    def param_groups(self, model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
        """The default groups (weights decayed; biases and norm parameters not, as DINO's ``get_params_groups``),
        the decayed one on the weight-decay schedule (``wd_scale``)."""
        groups = param_groups(self.trainable(model), cfg.optim.weight_decay)
        return [{**g, "wd_scale": 0.0 if g["lars_exclude"] else 1.0} for g in groups]

    def weight_decay(self, step: int, total_steps: int, cfg: Config) -> float:
        """main_dino.py's ``cosine_scheduler(weight_decay, weight_decay_end)`` at iteration ``step`` (0-based)."""
        return cosine(step, total_steps, cfg.optim.weight_decay, cfg.get(DINOConfig).weight_decay_end)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        core, mc, d = _dino(net.core), cfg.get(MultiCropConfig), cfg.get(DINOConfig)
        crops = [net.image(torch.cat([batch[n] for n in mc.large_names()]))]  # G*B x 3 x S x S
        if mc.small_crops:
            crops.append(net.image(torch.cat([batch[n] for n in mc.small_names()])))  # L*B x 3 x s x s
        student = net.forward(*crops)  # (G+L)*B x K, through DDP
        with torch.no_grad(), net.autocast():
            teacher = core.teacher(crops[0])  # G*B x K: the global crops only
        b = batch["view0"].shape[0]
        loss = dino_loss(student.split(b), teacher.split(b), core.center, d.student_temp,
                         teacher_temperature(core.epoch, cfg))
        # after the loss, as DINOLoss.update_center: the same on every worker (all-reduced)
        core.center.copy_(updated_center(core.center, teacher, d.center_momentum))
        return loss

    def before_epoch(self, model: nn.Module, epoch: int, cfg: Config) -> None:
        _dino(model).epoch = epoch  # the teacher's temperature and the last layer's freeze go by epoch

    def before_optimizer_step(self, model: nn.Module, step: int, cfg: Config) -> None:
        """Each student gradient clipped on its own (``dino.clip_grad``), then the last layer's dropped in the
        first ``dino.freeze_last_layer`` epochs, so the optimiser skips it (no step, no decay), as main_dino.py
        (``clip_gradients``, then ``cancel_gradients_last_layer``)."""
        core, d = _dino(model), cfg.get(DINOConfig)
        if d.clip_grad > 0:
            clip_each_gradient(core.student_parameters(), d.clip_grad)
        if core.epoch <= d.freeze_last_layer:
            for p in core.student_head.last_layer.parameters():
                p.grad = None

    def after_step(self, model: nn.Module, step: int, total_steps: int, cfg: Config) -> None:
        """teacher ← m·teacher + (1 − m)·student from the weights just stepped (identical on every worker)."""
        _dino(model).momentum_update(teacher_momentum(step, total_steps, cfg))

    def pictures(self, model: nn.Module, images: Tensor, cfg: Config, folder: str) -> list[str]:
        """With the ViT: the teacher's last-layer class-token attention per head on a few images
        (``plots/dino_attention.png``); a ResNet has no attention to draw."""
        encoder = _dino(model).encoder
        if not isinstance(encoder, ViT):
            return []
        images = pictured(images, cfg.data.image_size)[:6]  # n x 3 x S x S uint8
        maps = cls_attention(encoder, normalize(images.to(model_device(model))))  # n x h x S x S
        path = os.path.join(folder, "dino_attention.png")
        attention_grid(images, maps, path, "DINO: the teacher's last-block attention of the class token to each "
                                           "patch, per head (as visualize_attention.py)")
        return [path]
