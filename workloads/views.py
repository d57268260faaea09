"""Views for every method: the ``aug`` config section and SimCLR's augmentation (random resized crop,
flip, colour jitter, grayscale, blur) as two views (SimCLR, MoCo) or one (MAE, inpainting).

Neutral ground, so that no method imports another's view code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from workloads.config import Config, check
from workloads.method import Images
from workloads.rng import RandomSource
from workloads.simclr.augment import SimCLRAugment


@dataclass
class AugConfig:
    """SimCLR augmentation (SIMCLR.md table); strength s scales colour jitter."""

    section: ClassVar[str] = "aug"
    strength: float = 0.5
    min_scale: float = 0.08
    max_scale: float = 1.0
    flip_p: float = 0.5
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0  # 0.5 at ImageNet size; off at <= 64 px
    blur_kernel_frac: float = 0.1

    def __post_init__(self) -> None:
        s = self.section
        check(0.0 <= self.strength <= 4.0, s, "strength", "in [0, 4]", self.strength)
        check(0.0 < self.min_scale <= 1.0, s, "min_scale", "in (0, 1]", self.min_scale)
        check(self.min_scale <= self.max_scale <= 1.0, s, "max_scale", "in [min_scale, 1]", self.max_scale)
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, s, name, "a probability in [0, 1]", value)
        check(0.0 < self.blur_kernel_frac <= 0.5, s, "blur_kernel_frac", "in (0, 0.5]", self.blur_kernel_frac)


def make_augment(aug: AugConfig, image_size: int) -> SimCLRAugment:
    return SimCLRAugment(
        output_size=image_size, strength=aug.strength, min_scale=aug.min_scale, max_scale=aug.max_scale,
        flip_p=aug.flip_p, jitter_p=aug.jitter_p, gray_p=aug.gray_p, blur_p=aug.blur_p,
        blur_kernel_frac=aug.blur_kernel_frac,
    )


def two_views(images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
    """Two independently augmented views of each image, with per-image random parameters."""
    v0, v1 = make_augment(cfg.aug, cfg.data.image_size).two_views(images, generator)
    return {"view0": v0, "view1": v1}  # B x 3 x s x s uint8 each


def one_view(images: Images, cfg: Config, generator: RandomSource) -> Tensor:
    """One augmented view of each image (MAE, inpainting: their recipes set jitter, grayscale, blur to 0)."""
    return make_augment(cfg.aug, cfg.data.image_size)(images, generator)  # B x 3 x S x S uint8
