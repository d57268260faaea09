"""Evaluation of a backbone on labelled images: kNN top-1, linear probe, a 2-D embedding plot.

Shared by the training loop (rank 0, each epoch and at the end) and ``simclr eval``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import cast

import numpy as np
import ray.data
import torch

from orchestrator.data.prepare import to_tensor_images
from orchestrator.tracking import plots
from workloads.config import EvalConfig
from workloads.method import normalize
from workloads.probes import embed_2d, knn_accuracy, linear_probe


@dataclass
class LabelledImages:
    images: torch.Tensor  # N x 3 x S x S uint8 (CPU)
    labels: torch.Tensor  # N int64

    @classmethod
    def from_dataset(cls, ds: ray.data.Dataset | ray.data.DataIterator) -> LabelledImages:
        images, labels = [], []
        for batch in ds.iter_batches(batch_size=1024, batch_format="numpy"):
            images.append(np.asarray(batch["image"]))
            labels.append(np.asarray(batch["label"]))
        return cls(to_tensor_images(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)).long())


@torch.no_grad()
def extract_features(features_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     device: torch.device, bf16: bool = False, batch_size: int = 512) -> torch.Tensor:
    """Backbone features (before the projection head) of uint8 images, in float32 on the CPU."""
    out = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device, non_blocking=True))
        with autocast:
            out.append(features_fn(x).float().cpu())
    return torch.cat(out)  # N x F


def evaluate(
    model: torch.nn.Module,
    bank: LabelledImages,
    test: LabelledImages,
    num_classes: int,
    cfg: EvalConfig,
    device: torch.device,
    *,
    bf16: bool = False,
    linear: bool = False,
    embedding_png: str = "",
) -> dict[str, float]:
    """kNN top-1 (and the linear probe when ``linear``) of ``model.features``; restores train mode."""
    was_training = model.training
    model.eval()
    try:
        features_fn = cast(Callable[[torch.Tensor], torch.Tensor], model.features)
        f_bank = extract_features(features_fn, bank.images, device, bf16)
        f_test = extract_features(features_fn, test.images, device, bf16)
    finally:
        model.train(was_training)
    metrics = {"knn_top1": knn_accuracy(f_bank, bank.labels, f_test, test.labels, num_classes,
                                        k=cfg.knn_k, temperature=cfg.knn_temperature)}
    if linear and cfg.linear_probe_epochs > 0:
        metrics["linear_probe_top1"] = linear_probe(f_bank, bank.labels, f_test, test.labels, num_classes,
                                                    epochs=cfg.linear_probe_epochs)
    if embedding_png:
        plots.embedding(embed_2d(f_test), test.labels, embedding_png,
                        f"held-out features (PCA), kNN top-1 {metrics['knn_top1']:.3f}")
    return metrics
