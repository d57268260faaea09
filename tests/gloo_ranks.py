"""Run a function in a few gloo processes, as DDP workers are, and bring back what each rank returned."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp


def run_ranks(fn: Callable[[int], Any], out_dir: Path, world: int = 2) -> list[Any]:
    """``fn(rank)`` on ``world`` spawned processes in one gloo group; its results in rank order.

    ``fn`` must be a module-level function (the children unpickle it by name)."""
    mp.spawn(_rank, args=(fn, world, str(out_dir)), nprocs=world, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(world)]


def _rank(rank: int, fn: Callable[[int], Any], world: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{out_dir}/store", rank=rank, world_size=world,
                             timeout=timedelta(seconds=60))
    try:
        torch.save(fn(rank), Path(out_dir) / f"rank{rank}.pt")
        # Every rank has finished its collectives and its own work before any rank closes its sockets:
        # gloo's I/O thread aborts a process whose peer hangs up while it still reads or works.
        tdist.barrier()
    finally:
        tdist.destroy_process_group()
