"""Shared test settings: a training small enough for 2 loaded CPU cores, a small local Ray."""

from __future__ import annotations

from orchestrator.train.session import RayOptions

# ~256 synthetic 16 px images, a 2-stage ResNet of widths 8/16: an epoch takes a few seconds.
TINY: dict[str, object] = {
    "data.source": "synthetic",
    "data.num_samples": 256,
    "data.image_size": 16,
    "data.augment_batch_size": 64,
    "model.arch": "small_resnet",
    "model.widths": [8, 16],
    "model.blocks": [1, 1],
    "model.proj_dim": 16,
    "train.batch_size": 32,
    "train.workers": 2,
    "train.epochs": 2,
    "train.log_every_steps": 2,
    "eval.knn_k": 20,
    "eval.linear_probe_epochs": 10,
    "optim.warmup_epochs": 1,
}
RAY = RayOptions(num_cpus=2, object_store_mb=300)


def tiny_sets() -> list[str]:
    """TINY as ``--set`` arguments for the CLI."""
    import json

    return [arg for k, v in TINY.items() for arg in ("--set", f"{k}={json.dumps(v) if isinstance(v, list) else v}")]
