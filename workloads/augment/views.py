"""Views for every method: the ``aug`` config section and SimCLR's augmentation (random resized crop,
flip, colour jitter, grayscale, blur) as two views (SimCLR, MoCo, BYOL) or one (MAE, inpainting, VAE).

``aug.device`` splits a two-view method's views between the data workers and the training device:
with ``train``, the data workers decode and crop only, and send each view's uint8 crops with its
colour parameters (``ColourParams.columns``, about 30 bytes a row, under ``<view>__<field>``); the
method's ``finish_batch`` hook calls ``finish_views`` on the batch once it is on the device, which runs
flip, jitter, grayscale and blur there, vectorised over the whole batch. Parameters are drawn on the
data workers from the row's random stream either way, so a view is the same wherever its colour stage
runs. ``two_views`` writes those columns and ``finish_views`` reads them: the convention lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Literal

import torch
from torch import Tensor

from workloads.augment.transform import ColourParams, SimCLRAugment
from workloads.config import Config
from workloads.fields import check, check_choices
from workloads.method import Images
from workloads.rng import RandomSource


@dataclass
class AugConfig:
    """SimCLR's augmentation (Chen et al. 2020, appendix A); strength s scales colour jitter."""

    section: ClassVar[str] = "aug"
    strength: float = 0.5
    min_scale: float = 0.08
    max_scale: float = 1.0
    flip_p: float = 0.5
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0  # 0.5 at ImageNet size; off at <= 64 px
    blur_kernel_frac: float = 0.1
    # where flip, colour jitter, grayscale and blur run: data (the Ray Data CPU workers), train (the
    # training device, after the batch arrives), auto (train with train.use_gpu, else data)
    device: Literal["auto", "data", "train"] = "auto"

    def __post_init__(self) -> None:
        check_choices(self)
        s = self.section
        check(0.0 <= self.strength <= 4.0, s, "strength", "in [0, 4]", self.strength)
        check(0.0 < self.min_scale <= 1.0, s, "min_scale", "in (0, 1]", self.min_scale)
        check(self.min_scale <= self.max_scale <= 1.0, s, "max_scale", "in [min_scale, 1]", self.max_scale)
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, s, name, "a probability in [0, 1]", value)
        check(0.0 < self.blur_kernel_frac <= 0.5, s, "blur_kernel_frac", "in (0, 0.5]", self.blur_kernel_frac)


SEP = "__"  # <view>__<colour field>: a column of a view whose colour stage runs on the training device
COLOUR_FIELDS = tuple(f.name for f in fields(ColourParams))


def colour_on_device(cfg: Config) -> bool:
    """Whether the colour stage of two-view methods runs on the training device (``aug.device``)."""
    device = cfg.get(AugConfig).device
    return device == "train" or (device == "auto" and cfg.train.use_gpu)


def make_augment(aug: AugConfig, image_size: int) -> SimCLRAugment:
    return SimCLRAugment(
        output_size=image_size, strength=aug.strength, min_scale=aug.min_scale, max_scale=aug.max_scale,
        flip_p=aug.flip_p, jitter_p=aug.jitter_p, gray_p=aug.gray_p, blur_p=aug.blur_p,
        blur_kernel_frac=aug.blur_kernel_frac,
    )


def two_views(images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
    """Two independently augmented views of each image, with per-image random parameters; with the
    colour stage on the training device, each view's crops and its colour parameters."""
    aug = make_augment(cfg.get(AugConfig), cfg.data.image_size)
    if not colour_on_device(cfg):
        v0, v1 = aug.two_views(images, generator)
        return {"view0": v0, "view1": v1}  # B x 3 x s x s uint8 each
    out: dict[str, Tensor] = {}
    for name, (crops, params) in zip(("view0", "view1"), aug.two_crop_stages(images, generator), strict=True):
        out[name] = crops  # B x 3 x s x s uint8
        out.update({key: torch.from_numpy(col) for key, col in params.columns(name + SEP).items()})
    return out


def finish_views(batch: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
    """The colour stage of every view in ``batch`` that left it for the training device, on the
    views' device; other columns pass through. A no-op for batches without such views."""
    deferred = [key for key in batch if key + SEP + COLOUR_FIELDS[0] in batch]
    if not deferred:
        return batch
    aug = make_augment(cfg.get(AugConfig), cfg.data.image_size)
    out = {key: value for key, value in batch.items() if SEP not in key}
    for key in deferred:
        params = ColourParams.from_columns(batch, prefix=key + SEP, device=batch[key].device)
        out[key] = aug.colour(batch[key], params)
    return out


def one_view(images: Images, cfg: Config, generator: RandomSource) -> Tensor:
    """One augmented view of each image (MAE, inpainting: their recipes set jitter, grayscale, blur to 0)."""
    return make_augment(cfg.get(AugConfig), cfg.data.image_size)(images, generator)  # B x 3 x S x S uint8
