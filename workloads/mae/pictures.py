"""Reconstruction figures as in MAE's Figure 2: input, masked input, output (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torch import Tensor


def reconstruction_grid(rows: Sequence[Tensor], labels: Sequence[str], path: str, title: str) -> None:
    """One row per uint8 batch (N, 3, H, W), one column per image, each row labelled on its left."""
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
