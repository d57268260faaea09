"""The ``mae`` config section: masked image modelling, read by MAE and by inpainting (``mask_ratio``,
``norm_pix_loss``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from workloads.config import ConfigError, check

if TYPE_CHECKING:
    from workloads.config import Config


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


def patch_grid(cfg: Config) -> int:
    """Patches per image side; the patch size must divide the image side (the mask's grid, and MAE's ViT)."""
    size, p = cfg.data.image_size, cfg.model.patch_size
    if size % p:
        raise ConfigError(f"model.patch_size must be a divisor of data.image_size ({size}); got {p}")
    return size // p
