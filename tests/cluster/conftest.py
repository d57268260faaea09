"""Fixtures for the cluster tests: one token-protected two-node Ray cluster on 127.0.0.1 per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_ray import LocalCluster


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[LocalCluster]:
    """Head (3 CPUs) + one worker node (3 CPUs), RAY_AUTH_MODE=token on both, a token made for the test.

    Three logical CPUs per node (on two real cores) let a run with 2-CPU train workers put exactly one
    worker on each node and still leave a CPU per node for Ray Data's tasks. The worker-group start
    timeout is raised for the loaded test machine: after a node loss, Ray Train waits for the
    replacement node before it counts the restart as failed. The nodes sample their system metrics every
    second, so that a short run has some from each node.
    """
    cluster = LocalCluster(auth_mode="token", extra_env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "240",
                                                         "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    try:
        cluster.start_head(num_cpus=3)
        cluster.add_node(num_cpus=3)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `simclr` client: a HOME without ~/.ray/auth_token, no Ray/MLflow settings."""
    home = tmp_path / "client_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env["HOME"] = str(home)
    return env

