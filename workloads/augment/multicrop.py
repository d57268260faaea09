"""Multi-crop views (Caron et al. 2020, arXiv:2006.09882, §3.2): a few large crops at the training size
and several small crops at a lower resolution, each a random resized crop of the whole image with its
own per-image parameters and SimCLR's colour ops (the ``aug`` section).

A view feature, not a method: any method lists ``"multicrop": MultiCropConfig`` (and ``"aug": AugConfig``) in
its ``sections``, calls ``multi_crop`` in ``views`` and ``check_multicrop`` in ``check_config``. The crops
travel as separate uint8 columns (``view0``, ``view1``, ... at ``data.image_size``; ``small0``, ... at
``multicrop.small_size``), so Ray Data streams and Ray Train delivers views of different sizes in one row
with no change to either.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from torch import Tensor

from workloads.augment.transform import SimCLRAugment
from workloads.augment.views import AugConfig, make_augment
from workloads.config import Config
from workloads.fields import ConfigError, check
from workloads.method import Images
from workloads.rng import RandomSource


@dataclass
class MultiCropConfig:
    """How many crops of each size. The defaults are SwAV's ImageNet ones (main_swav.py ``--nmb_crops 2 6
    --size_crops 224 96 --min_scale_crops 0.14 0.05 --max_scale_crops 1. 0.14``); the large crops' size
    and scale range are ``data.image_size`` and ``aug.min_scale``/``aug.max_scale`` (SwAV: 224, 0.14-1)."""

    section: ClassVar[str] = "multicrop"
    large_crops: int = 2  # at data.image_size, crop scale (aug.min_scale, aug.max_scale)
    small_crops: int = 6  # at small_size, crop scale (small_min_scale, small_max_scale); 0: none
    small_size: int = 96
    small_min_scale: float = 0.05
    small_max_scale: float = 0.14

    def __post_init__(self) -> None:
        s = self.section
        check(self.large_crops >= 1, s, "large_crops", ">= 1", self.large_crops)
        check(self.small_crops >= 0, s, "small_crops", ">= 0 (0: no small crops)", self.small_crops)
        check(self.small_size >= 1, s, "small_size", ">= 1", self.small_size)
        check(0.0 < self.small_min_scale <= 1.0, s, "small_min_scale", "in (0, 1]", self.small_min_scale)
        check(self.small_min_scale <= self.small_max_scale <= 1.0, s, "small_max_scale", "in [small_min_scale, 1]",
              self.small_max_scale)

    def large_names(self) -> tuple[str, ...]:
        return tuple(f"view{i}" for i in range(self.large_crops))

    def small_names(self) -> tuple[str, ...]:
        return tuple(f"small{i}" for i in range(self.small_crops))


def small_augment(cfg: Config) -> SimCLRAugment:
    """The small crops' augmentation: the ``aug`` section at ``multicrop.small_size`` and its scale range."""
    mc = cfg.get(MultiCropConfig)
    aug = replace(cfg.get(AugConfig), min_scale=mc.small_min_scale, max_scale=mc.small_max_scale)
    return make_augment(aug, mc.small_size)


def multi_crop(images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
    """``multicrop.large_crops`` views at ``data.image_size`` then ``small_crops`` at ``small_size``, each
    drawn independently per image: {"view0": B x 3 x S x S, ..., "small0": B x 3 x s x s, ...} uint8."""
    mc = cfg.get(MultiCropConfig)
    large, small = make_augment(cfg.get(AugConfig), cfg.data.image_size), small_augment(cfg)
    views = {name: large(images, generator) for name in mc.large_names()}
    views.update({name: small(images, generator) for name in mc.small_names()})
    return views


def check_multicrop(cfg: Config) -> None:
    """Rules across sections: small crops no larger than the large ones, and big enough for the blur."""
    mc = cfg.get(MultiCropConfig)
    if mc.small_crops and mc.small_size > cfg.data.image_size:
        raise ConfigError(f"multicrop.small_size must be <= data.image_size ({cfg.data.image_size}): small crops "
                          f"are the lower resolution; got {mc.small_size}")
    if mc.small_crops:
        try:
            small_augment(cfg)
        except ValueError as err:
            raise ConfigError(f"multicrop.small_size ({mc.small_size}) does not fit the aug section: {err}") from err
