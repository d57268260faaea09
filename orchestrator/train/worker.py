"""The only code that runs on Ray Train workers: one resumable training of the configured method.

The driver passes a ``TrainJob`` (orchestrator/train/job.py); the ``Trainer`` (trainer.py) runs it in
named steps. Every worker runs the same steps and keeps the same state; rank 0 alone does I/O:
progress lines, evaluation of the frozen backbone, checkpoint files and MLflow metrics.
"""

from __future__ import annotations

from typing import Any

from orchestrator.train.env import ray_env
from orchestrator.train.job import TrainJob
from orchestrator.train.progress import check_fatal, set_console
from orchestrator.train.trainer import Trainer


def train_loop_per_worker(config: dict[str, Any]) -> None:
    job: TrainJob = config["job"]
    set_console(job.stop_flag if job.console else None)
    check_fatal(job.stop_flag)
    Trainer(job, ray_env()).fit()
