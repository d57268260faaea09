"""Where a Trainer runs: rank, world, device, its datasets and how it reports. Ray Train's worker
context in a run; a plain single-process one in tests, so each step of the Trainer runs without Ray."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# (metrics, a checkpoint folder or "", the checkpoint's folder name): a barrier across the workers
Report = Callable[[dict[str, float], str, str], None]


@dataclass
class WorkerEnv:
    rank: int
    world: int
    device: torch.device
    dataset: Callable[[str], Any]  # name -> this worker's shard (an object with ``iter_torch_batches``)
    report: Report
    registered: Any  # the checkpoint Ray registered for a restarted worker group (None: first attempt)
    wrap: Callable[[nn.Module, Mapping[str, Any]], nn.Module]  # to the device, DDP when world > 1

    @property
    def rank0(self) -> bool:
        return self.rank == 0


def ray_env() -> WorkerEnv:
    """The Ray Train worker this code runs on."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()

    def report(metrics: dict[str, float], folder: str, dir_name: str) -> None:
        if not folder:
            ray.train.report(metrics)
            return
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                         checkpoint_dir_name=dir_name)

    def wrap(model: nn.Module, ddp_kwargs: Mapping[str, Any]) -> nn.Module:
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=dict(ddp_kwargs) or None)

    return WorkerEnv(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(),
                     ray.train.get_dataset_shard, report, ray.train.get_checkpoint(), wrap)
