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

from dataclasses import replace

from torch import Tensor

from workloads.augment.transform import SimCLRAugment
from workloads.augment.views import make_augment
from workloads.config import Config
from workloads.fields import ConfigError
from workloads.method import Images
from workloads.rng import RandomSource
from workloads.sections import AugConfig, MultiCropConfig


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
