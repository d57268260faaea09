"""PNG figures people would rather see than read: view pairs, curves, embeddings (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from workloads.pictures import pyplot


def views_grid(v0: torch.Tensor, v1: torch.Tensor | None, path: str, max_pairs: int = 16) -> None:
    """Two rows per pair column: view 0 above view 1 of the same image. Inputs uint8 (N, 3, H, W).
    Methods with one view (MAE) pass ``v1=None`` and get one row."""
    rows = [v0] if v1 is None else [v0, v1]
    n = min(max_pairs, len(v0))
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.3 * len(rows)), squeeze=False)
    for i in range(n):
        for row, views in enumerate(rows):
            ax = axes[row][i]
            ax.imshow(views[i].permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
            ax.axis("off")
    title = "augmented view pairs (columns: one image; rows: view 0, view 1)" if v1 is not None else "augmented views"
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves(history: Sequence[Mapping[str, float]], path: str, keys: Sequence[str] = ("loss", "knn_top1")) -> None:
    """One panel per metric against the epoch (epoch 0 = the encoder at initialisation)."""
    present = [k for k in keys if any(k in r for r in history)]
    if not present:
        return
    plt = pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(4.5 * len(present), 3.2), squeeze=False)
    for ax, key in zip(axes[0], present, strict=True):
        pts = sorted((r["epoch"], r[key]) for r in history if key in r)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def embedding(points: torch.Tensor, labels: torch.Tensor, path: str, title: str) -> None:
    """A 2-D scatter of held-out features coloured by label."""
    pts = points.cpu().numpy()
    lab = labels.cpu().numpy()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    scatter = ax.scatter(pts[:, 0], pts[:, 1], c=lab, cmap="tab10" if lab.max() < 10 else "viridis", s=6)
    if lab.max() < 20:
        ax.legend(*scatter.legend_elements(), loc="best", fontsize=6, title="label")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def metric_vs_param(xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str, path: str,
                    log_x: bool = False) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.scatter(np.asarray(xs), np.asarray(ys))
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
