"""Fixtures for the cluster tests: the session's token-protected two-node Ray cluster on 127.0.0.1, and a
client's environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from local_ray import LocalCluster

from cluster.local import Stack


@pytest.fixture(scope="session")
def ray_cluster(stack: Stack) -> LocalCluster:
    """The session's token-protected cluster: a head and one worker node of 3 logical CPUs each, whose
    processes reach the session's bucket (tests/services.py)."""
    return stack.ray


@pytest.fixture
def client_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `simclr` client: a HOME without ~/.ray/auth_token, no Ray/MLflow settings and no
    storage credentials (the nodes have their own, as from their role)."""
    home = tmp_path / "client_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))}
    env["HOME"] = str(home)
    return env

