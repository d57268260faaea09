"""Views for every method: SimCLR's augmentation (random resized crop, flip, colour jitter, grayscale, blur)
as two views (SimCLR, MoCo, BYOL) or one (MAE, inpainting, VAE); its ``aug`` section is workloads/sections.py's.

``aug.device`` splits a two-view method's views between the data workers and the training device:
with ``train``, the data workers decode and crop only, and send each view's uint8 crops with its
colour parameters (``ColourParams.columns``, about 30 bytes a row, under ``<view>__<field>``); the
method's ``finish_batch`` hook calls ``finish_views`` on the batch once it is on the device, which runs
flip, jitter, grayscale and blur there, vectorised over the whole batch. Parameters are drawn on the
data workers from the row's random stream either way, so a view is the same wherever its colour stage
runs. ``two_views`` writes those columns and ``finish_views`` reads them: the convention lives here.
"""

from __future__ import annotations

from dataclasses import fields

import torch
from torch import Tensor

from workloads.augment.transform import ColourParams, SimCLRAugment
from workloads.config import Config
from workloads.method import Images
from workloads.rng import RandomSource
from workloads.sections import AugConfig

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
