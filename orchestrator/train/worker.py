"""The only code that runs on Ray Train workers: one resumable training of the configured method.

The driver passes a ``TrainJob`` (orchestrator/train/job.py); the ``Trainer`` (trainer.py) runs it in
named steps. Every worker runs the same steps and keeps the same state; rank 0 alone does I/O:
progress lines, evaluation of the frozen backbone, checkpoint files and MLflow metrics. One worker
on each node also samples that node's system metrics into the run.
"""

from __future__ import annotations

from typing import Any

from orchestrator.train import stopflag
from orchestrator.train.env import ray_env
from orchestrator.train.job import TrainJob
from orchestrator.train.progress import node_metrics
from orchestrator.train.trainer import Trainer


def train_loop_per_worker(config: dict[str, Any]) -> None:
    job: TrainJob = config["job"]
    stopflag.connect(job.stop_flag if job.console else None)
    stopflag.raise_fatal(job.stop_flag)
    with node_metrics(job.run_id, job.tracking_uri):
        Trainer(job, ray_env()).fit()
