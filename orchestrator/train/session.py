"""The Ray a command runs on: an address, or a local Ray this process starts and stops; and the CPUs
each train worker may take from it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray

from orchestrator import storage
from orchestrator.errors import UserError
from orchestrator.interrupt import sigterm_as_interrupt
from workloads.config import TrainConfig

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@dataclass
class RayOptions:
    """How to reach Ray: an address, or a local Ray this process starts (and stops)."""

    address: str = ""  # "" -> $RAY_ADDRESS, else a new local Ray
    num_cpus: int = 0  # local Ray: 0 -> every core
    object_store_mb: int = 0  # local Ray: 0 -> min(30% of RAM, 4 GiB)


@contextmanager
def ray_session(opts: RayOptions, dashboard: bool = True) -> Iterator[None]:
    """Use the Ray this process is connected to, else connect to the address, else start a local one
    (with its dashboard: Train V2's placement-group cleaner needs its State API, see start_local_ray);
    shut down only what this call started. SIGTERM stays a clean stop (ray.init sets its own handler)."""
    if ray.is_initialized():
        yield
        return
    address = opts.address or os.environ.get("RAY_ADDRESS", "")
    try:
        if address:
            # host:port: tell this job's workers too, for the State API lookup of start_local_ray
            direct = address not in ("auto", "local") and not storage.is_uri(address)
            ray.init(address=address, log_to_driver=True,
                     runtime_env={"env_vars": {"RAY_ADDRESS": address}} if direct else None)
        else:
            start_local_ray(opts.num_cpus, opts.object_store_mb, dashboard)
    except ConnectionError as err:
        raise UserError(f"--address: no Ray cluster answers at {address}: {err}") from err
    sigterm_as_interrupt()
    try:
        yield
    finally:
        ray.shutdown()


def start_local_ray(num_cpus: int = 0, object_store_mb: int = 0, dashboard: bool = False) -> None:
    """A local Ray of ``num_cpus`` (0: every core); the object store 30% of RAM, at most 4 GiB, unless set.

    With ``dashboard``, its workers also learn where its State API is: Train V2's PlacementGroupCleaner
    asks it whether a trial's TorchTrainer controller died and then frees the placement group; without
    it every trial ASHA stops keeps its CPUs and the next trial waits forever, and
    every training prints "Failed to query Ray Train Controller actor state" every few seconds. The
    cleaner looks the API up from inside a worker, and with several Ray instances on one machine that
    lookup fails ("Found multiple active Ray instances"), so the runtime_env names the dashboard's
    address (RAY_API_SERVER_ADDRESS).
    """
    mem = object_store_mb * 2**20 or min(int(0.3 * _total_memory()), 4 * 2**30)
    # Train V2's preemption watcher (an actor per training, polling the nodes' drain state) reacts to a
    # cloud reclaiming a node; this Ray is one machine that this process stops, so it stays off unless
    # the environment turns it on
    env_vars = {PREEMPTION_WATCHER: os.environ.get(PREEMPTION_WATCHER, "0")}
    extra: dict[str, Any] = {"include_dashboard": False}
    if dashboard:
        port = _free_port()
        extra = {"include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}
        env_vars["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), object_store_memory=mem, log_to_driver=True,
             runtime_env={"env_vars": env_vars}, **extra)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _total_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cpus_per_worker(train: TrainConfig, cpus: float, gpus: float) -> float:
    """CPUs each train worker reserves, leaving the rest to Ray Data's decode and augmentation tasks.

    A worker per CPU would starve Ray Data and hang ("Cluster resources are not enough to run any task
    from TaskPoolMapOperator"); so a quarter of the CPUs (at least one, at most half) stay free for data.
    """
    w = train.workers
    if train.use_gpu and gpus < w:
        raise UserError(f"train.workers={w} with --use-gpu needs {w} GPUs; the cluster has {gpus:g}. "
                        f"Lower train.workers or add GPU nodes")
    if not train.use_gpu and w > cpus:
        raise UserError(f"train.workers={w} is more than the cluster's {cpus:g} CPUs; lower train.workers")
    reserve = min(max(1.0, 0.25 * cpus), cpus / 2)
    if train.cpus_per_worker:
        if train.cpus_per_worker * w > cpus - reserve + 1e-9:
            raise UserError(
                f"train.cpus_per_worker={train.cpus_per_worker:g} x {w} workers leaves less than {reserve:g} of the "
                f"cluster's {cpus:g} CPUs for Ray Data; lower it (0 derives it)")
        return train.cpus_per_worker
    share = (cpus - reserve) / w
    return min(share, 8.0) if train.use_gpu else share


def quiet_ray_data() -> None:
    """No Ray Data progress bars: the driver's DataContext is copied into every dataset made after this,
    and from there into the Train workers' iterators and the split coordinator."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
