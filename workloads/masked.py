"""Masked image modelling's shared parts, read by MAE and by inpainting: the patch grid of the masks and the
masked reconstruction loss (He et al. 2021, §3 "Reconstruction target"). The masks themselves are
workloads/masks.py; the ``mae`` section (``mask_ratio``, ``norm_pix_loss``) is workloads/sections.py's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from workloads.fields import ConfigError

if TYPE_CHECKING:
    from workloads.config import Config


def patch_grid(cfg: Config) -> int:
    """Patches per image side; the patch size must divide the image side (the mask's grid, and MAE's ViT)."""
    size, p = cfg.data.image_size, cfg.model.patch_size
    if size % p:
        raise ConfigError(f"model.patch_size must be a divisor of data.image_size ({size}); got {p}")
    return size // p


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = False, eps: float = 1e-6) -> Tensor:
    """Mean over masked patches of the per-patch mean squared error; visible patches do not count.

    pred, target: (B, L, P) patch pixels; mask: (B, L) bool, True = masked. As MAE's `forward_loss`:
    `(loss * mask).sum() / mask.sum()` with the per-patch MSE, computed in float32 whatever the
    autocast dtype. With `norm_pix` the target of each patch is normalised by its own mean and
    (unbiased) variance, eps 1e-6 — MAE's "normalized pixels" target, better representations (Table 1d).
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred and target must both be (B, L, P); got {tuple(pred.shape)} and {tuple(target.shape)}")
    if mask.shape != pred.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (B, L) = {tuple(pred.shape[:2])}; got {mask.dtype} {tuple(mask.shape)}")
    pred, target = pred.float(), target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)  # B x L x 1
        var = target.var(dim=-1, keepdim=True)  # B x L x 1
        target = (target - mean) / (var + eps).sqrt()
    per_patch = (pred - target).pow(2).mean(dim=-1)  # B x L
    # where, not a product: a non-finite prediction on a visible patch must not leak in as 0·inf
    return per_patch.where(mask, 0.0).sum() / mask.sum()


def at_target_statistics(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Patches predicted as normalised pixels (``norm_pix_loss``) back at each target patch's own mean and
    variance, to be drawn: the inverse of ``masked_mse``'s target normalisation. (B, L, P) both."""
    return pred * (target.var(dim=-1, keepdim=True) + eps).sqrt() + target.mean(dim=-1, keepdim=True)
