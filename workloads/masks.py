"""Patch masks and the image <-> patch-sequence reshapes shared by MAE and inpainting.

Masks are bool (B, L) over the row-major patch grid, True = masked (hidden from the encoder, scored by
the loss). They are drawn on the CPU in Ray Data's tasks from the rows' random streams (``RowRandom``), so
a row's mask is reproducible from its key and travels with the view as 1 byte per patch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from workloads.rng import RandomSource, rand


def num_masked(num_patches: int, ratio: float) -> int:
    """round(ratio · L), kept in [1, L − 1]: the encoder needs a visible patch and the loss a masked one."""
    return min(max(round(ratio * num_patches), 1), num_patches - 1)


def random_patch_mask(batch: int, num_patches: int, ratio: float, generator: RandomSource = None) -> Tensor:
    """Per-image uniformly random masks with exactly `num_masked(L, ratio)` patches masked in every row.

    As MAE's `random_masking` (He et al. 2021, §3 "Masking"): argsort uniform noise per image and mask
    the patches with the largest noise. The constant count per image is what lets the encoder take
    the visible patches as a dense (B, K, D) tensor instead of a ragged batch.
    """
    if num_patches < 2:
        raise ValueError(f"num_patches must be >= 2 (one visible and one masked patch); got {num_patches}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), the fraction of patches masked; got {ratio}")
    noise = rand(generator, batch, num_patches)  # B x L
    ids = noise.argsort(dim=1)  # B x L: ascending, so the last ones are masked
    mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    mask.scatter_(1, ids[:, num_patches - num_masked(num_patches, ratio):], True)
    return mask  # B x L


def block_mask(batch: int, grid: int, ratio: float, generator: RandomSource = None,
               aspect: tuple[float, float] = (0.5, 2.0)) -> Tensor:
    """One random axis-aligned rectangle of patches per image covering about `ratio` of the grid.

    The context encoder's "random block" region (Pathak et al. 2016, §3.3), one block per image:
    the aspect ratio is log-uniform in `aspect`, the height h = round(√(A/aspect)) for the target
    area A = ratio · grid², the width round(A/h) (so the area is A to within h/2 patches), and
    the top-left corner uniform over the positions where the block fits.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1 patches per side; got {grid}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), the fraction of the image masked; got {ratio}")
    area = ratio * grid * grid
    log_aspect = rand(generator, batch) * math.log(aspect[1] / aspect[0]) + math.log(aspect[0])
    h = (area / log_aspect.exp()).sqrt().round().clamp(1, grid)  # B
    w = (area / h).round().clamp(1, grid)  # B
    top = (rand(generator, batch) * (grid - h + 1)).floor()  # B
    left = (rand(generator, batch) * (grid - w + 1)).floor()  # B
    idx = torch.arange(grid, dtype=h.dtype)  # grid
    rows = (idx >= top[:, None]) & (idx < (top + h)[:, None])  # B x grid
    cols = (idx >= left[:, None]) & (idx < (left + w)[:, None])  # B x grid
    return (rows[:, :, None] & cols[:, None, :]).view(batch, grid * grid)  # B x L


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, L, p·p·C), patches row-major, each patch flattened as (row, col, channel).

    The same layout as MAE's `patchify`, so `pred` rows are comparable with its figures and code.
    """
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image sides ({h}, {w}) must be multiples of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)  # B x C x gh x p x gw x p
    x = x.permute(0, 2, 4, 3, 5, 1)  # B x gh x gw x p x p x C
    return x.reshape(b, (h // p) * (w // p), p * p * c)  # B x L x p²C


def unpatchify(patches: Tensor, patch_size: int, channels: int = 3) -> Tensor:
    """The inverse of `patchify` for square images: (B, L, p·p·C) -> (B, C, H, W)."""
    b, length, _ = patches.shape
    p = patch_size
    g = math.isqrt(length)
    if g * g != length:
        raise ValueError(f"unpatchify needs a square patch grid; got L={length} patches")
    x = patches.reshape(b, g, g, p, p, channels)  # B x gh x gw x p x p x C
    x = x.permute(0, 5, 1, 3, 2, 4)  # B x C x gh x p x gw x p
    return x.reshape(b, channels, g * p, g * p)  # B x C x H x W


def mask_pixels(mask: Tensor, patch_size: int) -> Tensor:
    """A square patch mask (B, L) -> the pixel mask (B, 1, H, W) it covers."""
    b, length = mask.shape
    g = math.isqrt(length)
    if g * g != length:
        raise ValueError(f"mask_pixels needs a square patch grid; got L={length} patches")
    grid = mask.view(b, 1, g, g)  # B x 1 x g x g
    return grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)  # B x 1 x H x W


def visible_index(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(ids_keep (B, K), ids_restore (B, L)) of a mask with the same K visible patches in every row.

    ids_keep lists each row's visible patches in grid order; ids_restore undoes the "visible first,
    then masked" order of a stable argsort, as MAE's `ids_restore` does for its decoder. One host
    sync checks the per-row count, which must be constant for a dense (B, K, D) batch of tokens.
    """
    counts = (~mask).sum(dim=1)  # B
    low, high = torch.stack(torch.aminmax(counts)).tolist()
    if low != high:
        raise ValueError(f"every image must keep the same number of visible patches (got {low} to {high}); "
                         f"draw masks with random_patch_mask")
    ids_shuffle = mask.to(torch.int8).argsort(dim=1, stable=True)  # B x L: visible first, in grid order
    return ids_shuffle[:, :low], ids_shuffle.argsort(dim=1)  # B x K, B x L
