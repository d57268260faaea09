"""Masked reconstruction loss of MAE (He et al. 2021, §3 "Reconstruction target"), shared by inpainting."""

from __future__ import annotations

import torch
from torch import Tensor


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
