"""Reconstruction figures as in MAE's Figure 2: input, masked input, output (matplotlib, Agg backend), and the
helpers MAE and inpainting share to draw them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

import torch
from torch import Tensor, nn
from torch.nn import functional as F

MAX_PICTURES = 8
MASKED_GREY = 128  # how hidden pixels are drawn in the "masked" row


def pyplot() -> ModuleType:
    """matplotlib's pyplot on the Agg backend (no display), imported where a figure is drawn: the processes
    that import every method to make views (Ray Data's tasks) or to train never draw one, and would
    otherwise pay for importing matplotlib as they start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reconstruction_grid(rows: Sequence[Tensor], labels: Sequence[str], path: str, title: str) -> None:
    """One row per uint8 batch (N, 3, H, W), one column per image, each row labelled on its left."""
    plt = pyplot()
    n = len(rows[0])
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n + 0.6, 1.25 * len(rows) + 0.4), squeeze=False)
    for r, (images, label) in enumerate(zip(rows, labels, strict=True)):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(images[i].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm's running statistics) and no autograd for the duration, then as before."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def pictured(images: Tensor, size: int) -> Tensor:
    """Up to MAX_PICTURES uint8 images at the training size (held-out images may be stored larger)."""
    images = images[:MAX_PICTURES].cpu()
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def greyed(images: Tensor, hole: Tensor) -> Tensor:
    """uint8 images with the pixels of `hole` (N, 1, H, W) bool drawn grey."""
    return images.masked_fill(hole, MASKED_GREY)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
