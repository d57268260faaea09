"""Helpers of the cluster tests: the `simclr` CLI as a user runs it, the tiny training they submit, and
the MLflow run a job made. The cluster itself is ``cluster.ray_nodes.LocalCluster`` (also what
``python -m cluster.local up`` starts for users).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services import S3

from cluster.ray_nodes import LocalCluster
from cluster.services import VENV_BIN, free_port

__all__ = ["SIMCLR", "TINY", "LocalCluster", "find_run", "free_port", "registered_epoch", "simclr", "wait_until"]

SIMCLR = os.path.join(VENV_BIN, "simclr")

# The tiny synthetic run the cluster tests train (add --epochs).
TINY = ["--set", "data.source=synthetic", "--set", "data.num_samples=128", "--set", "data.image_size=16",
        "--set", "model.widths=[8,16]", "--set", "model.blocks=[1,1]", "--set", "train.batch_size=32",
        "--set", "eval.linear_probe_epochs=0"]


def find_run(uri: str, name: str) -> Any:
    """The one MLflow run of experiment "simclr" named ``name``."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import RUN_NAME_TAG

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("simclr")
    assert exp is not None, "the job created no MLflow experiment"
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")
    assert len(runs) == 1, f"expected one MLflow run named {name}, found {len(runs)}"
    return runs[0]


def simclr(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the `simclr` CLI as a user would, in its own process."""
    return subprocess.run([SIMCLR, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def registered_epoch(s3: S3, run_uri: str) -> int:
    """The epoch of the newest checkpoint Ray Train has registered for the run at ``run_uri`` (its
    snapshot file in the bucket), 0 if none."""
    try:
        snapshot = json.loads(s3.read(f"{run_uri}/checkpoint_manager_snapshot.json"))
        name = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return int(name.split("_")[2])
