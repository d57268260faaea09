"""What the driver hands every train worker, typed: the one object that crosses the Ray boundary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workloads.config import Config


@dataclass(frozen=True)
class TrainJob:
    """One training as the workers see it: the resolved config and the run it belongs to."""

    config: Config
    run_id: str  # the MLflow run rank 0 logs to
    tracking_uri: str  # "" : no MLflow (tests of the Trainer without a tracking store)
    steps_per_epoch: int
    num_classes: int = 0  # labelled evaluation data given as the eval_bank / eval_test datasets (0: none)
    stop_flag: Any = None  # the run's StopFlag actor (orchestrator/train/stopflag.py); None: no stop protocol
    epoch_clock: Any = None  # the stream's EpochClock actor (orchestrator/data/stream.py); None: a fixed stream
    console: bool = False  # rank 0 also sends its progress lines to the driver (the quiet console)
