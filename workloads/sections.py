"""Config sections and field types that several methods share, apart from the code that reads them:
``aug`` (SimCLR's augmentation; workloads/augment/views.py), ``multicrop`` (workloads/augment/multicrop.py),
``mae`` (masked image modelling; workloads/masked.py) and the momentum ``Schedule`` (workloads/momentum.py).

Like workloads/config.py, this module imports no torch: a run's Config is unpickled in Ray's own processes
that never train (Ray Train's controller and dataset manager, Ray Data's split coordinator), and each section
class is imported there by its module; torch and torchvision would add seconds to each one's start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from workloads.fields import check, check_choices

Schedule = Literal["constant", "cosine"]  # a momentum's schedule over training (MoCo, BYOL)


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


@dataclass
class MAEConfig:
    """Masked image modelling: MAE (He et al. 2021) on a ViT, and CNN inpainting (Pathak et al. 2016)."""

    section: ClassVar[str] = "mae"
    mask_ratio: float = 0.75  # mae: fraction of patches masked per image; inpaint: area of the masked block
    norm_pix_loss: bool = False  # targets are per-patch normalised pixels (MAE §A.1)
    decoder_dim: int = 64  # mae: decoder token width
    decoder_depth: int = 2  # mae: decoder transformer blocks
    decoder_heads: int = 4  # mae: decoder attention heads

    def __post_init__(self) -> None:
        s = self.section
        check(0.0 < self.mask_ratio < 1.0, s, "mask_ratio", "in (0, 1)", self.mask_ratio)
        check(self.decoder_depth >= 1, s, "decoder_depth", ">= 1", self.decoder_depth)
        check(self.decoder_heads >= 1, s, "decoder_heads", ">= 1", self.decoder_heads)
        check(self.decoder_dim >= 4 and self.decoder_dim % math.lcm(4, self.decoder_heads) == 0, s, "decoder_dim",
              f"a positive multiple of 4 and of mae.decoder_heads ({self.decoder_heads})", self.decoder_dim)
