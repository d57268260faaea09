"""What a trial reserves and how many run at once, planned from the cluster before anything starts.

Tune sees only each trainable's 0.1 CPU; the trial's real resources are its TorchTrainer's workers, so
the number of concurrent trials is set here, keeping CPUs for Ray Data as ``train.cpus_per_worker`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray

from orchestrator.errors import UserError
from workloads.config import TrainConfig

TRIAL_CPU = 0.1  # the function trainable's own reservation (Tune refuses 0)

MIN_CPUS_PER_WORKER = 0.1


@dataclass(frozen=True)
class TrialResources:
    """What every trial reserves and how many trials run at once."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_concurrent: int

    @property
    def cpus_per_trial(self) -> float:
        return TRIAL_CPU + self.workers * self.cpus_per_worker


def data_reserve(cpus: float) -> float:
    """CPUs kept free for Ray Data's tasks: the rule of ``orchestrator.train.cpus_per_worker``."""
    return min(max(1.0, 0.25 * cpus), cpus / 2)


def plan_resources(train_cfg: TrainConfig, cpus: float, gpus: float, max_concurrent: int = 0,
                   largest_node_cpus: float = 0.0) -> TrialResources:
    """Resources per trial and the number of concurrent trials, or a UserError if trials cannot fit.

    Tune only sees each trainable's 0.1 CPU, so without this limit it would start trials whose
    TorchTrainers then wait for CPUs forever (ray 38505). By default a worker gets at least one CPU and
    trials run side by side only when that still holds; ``max_concurrent`` trades CPUs per worker for
    more trials at once.
    """
    w = train_cfg.workers
    reserve = data_reserve(cpus)
    budget = cpus - reserve  # for trainables and train workers, all trials together
    gpu_fit = 0
    if train_cfg.use_gpu:
        gpu_fit = int(gpus // w)
        if gpu_fit < 1:
            raise UserError(f"train.workers={w} with --use-gpu needs {w} GPUs per trial; the cluster has {gpus:g}")
    if max_concurrent < 0:
        raise UserError(f"--max-concurrent must be >= 1 (0 derives it); got {max_concurrent}")
    if train_cfg.cpus_per_worker:
        cpw = train_cfg.cpus_per_worker
        fit = int(budget / (TRIAL_CPU + w * cpw) + 1e-9)
        if gpu_fit:
            fit = min(fit, gpu_fit)
        k = max_concurrent or fit
        if fit < 1 or k > fit:
            raise UserError(
                f"{max(k, 1)} trial(s) at once x ({w} worker(s) x {cpw:g} CPU + {TRIAL_CPU:g}) need "
                f"{max(k, 1) * (TRIAL_CPU + w * cpw):g} CPUs, but {budget:g} of the cluster's {cpus:g} are left after "
                f"keeping {reserve:g} for Ray Data; lower --max-concurrent, train.workers or train.cpus_per_worker")
    else:
        k = max_concurrent or max(1, int(budget / (TRIAL_CPU + w * 1.0) + 1e-9))
        if gpu_fit:
            if max_concurrent and k > gpu_fit:
                raise UserError(f"--max-concurrent {k}: each trial needs {w} GPUs and the cluster has {gpus:g}; "
                                f"at most {gpu_fit} trial(s) fit")
            k = min(k, gpu_fit)
        cpw = (budget / k - TRIAL_CPU) / w
        if train_cfg.use_gpu:
            cpw = min(cpw, 8.0)
        node_cap = largest_node_cpus - 1.0 - TRIAL_CPU
        if largest_node_cpus and node_cap >= MIN_CPUS_PER_WORKER:
            # the data reserve is the cluster's, not each node's: a derived share may not take a node's last
            # CPU, or on nodes of few CPUs no node keeps a whole CPU for Ray Data's tasks and every trial
            # waits for its data forever (a node of under 2 CPUs cannot keep one: the share stays as planned)
            cpw = min(cpw, node_cap)
        if cpw < MIN_CPUS_PER_WORKER:
            raise UserError(
                f"--max-concurrent {k}: {k} trial(s) x {w} worker(s) leave {max(cpw, 0):.2g} CPU per worker of the "
                f"{budget:g} CPUs not kept for Ray Data (cluster: {cpus:g}); lower --max-concurrent or train.workers")
        cpw = math.floor(cpw * 100) / 100  # whole hundredths: no float dust in Ray's resource requests
    if largest_node_cpus and cpw > largest_node_cpus + 1e-9:
        raise UserError(f"train.cpus_per_worker={cpw:g} is more than the largest node's {largest_node_cpus:g} CPUs; "
                        f"lower it (0 derives it)")
    return TrialResources(w, cpw, 1.0 if train_cfg.use_gpu else 0.0, k)


def cluster_plan(train_cfg: TrainConfig, max_concurrent: int) -> TrialResources:
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes), default=0.0)
    return plan_resources(train_cfg, float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0)), max_concurrent, largest)

