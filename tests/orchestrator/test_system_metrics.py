"""System metrics of each node that trains: how a node is named, and the monitor's life on a
worker, without Ray (the Ray runs are in test_train_e2e.py and tests/cluster/test_submit_node_loss.py)."""

from __future__ import annotations

import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking.record import node_name
from orchestrator.train import progress

NODE_ID = "1a2b3c4d5e6f" + "0" * 44  # Ray's node ids are 56 hex digits


@pytest.mark.parametrize(("ip", "expected"), [
    ("10.0.0.5", "10.0.0.5-1a2b3c4d"),
    ("fe80::1", "fe80__1-1a2b3c4d"),  # MLflow refuses ':' in metric names on some stores
    ("", "1a2b3c4d"),
])
def test_node_name_is_the_address_and_the_start_of_the_ray_node_id(ip: str, expected: str) -> None:
    assert node_name(ip, NODE_ID) == expected


def test_two_nodes_at_one_address_get_two_names() -> None:
    """Several Ray nodes on one machine, or a spot node replaced at the same address."""
    assert node_name("127.0.0.1", NODE_ID) != node_name("127.0.0.1", "9f" + NODE_ID[2:])


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowClient, str, str]:
    """One MLflow store for the module (creating a sqlite store takes seconds)."""
    folder = tmp_path_factory.mktemp("sysmetrics")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    return client, uri, client.create_experiment("sysmetrics", artifact_location=str(folder / "artifacts"))


@pytest.fixture
def run(store: tuple[MlflowClient, str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[MlflowClient, str, str]:
    """A fresh run, a sample every 0.2 s, this process pretending to be node 10.0.0.5."""
    client, uri, exp = store
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_NODE_ID", "one-name-for-every-node")  # must not merge the nodes
    monkeypatch.setattr(progress, "this_node", lambda: node_name("10.0.0.5", NODE_ID))
    return client, uri, client.create_run(exp).info.run_id


def test_one_worker_of_a_node_logs_its_series_named_by_node_and_stops_them(
        run: tuple[MlflowClient, str, str]) -> None:
    client, uri, run_id = run
    with progress.node_metrics(run_id, uri):
        assert len(monitor_threads()) == 1
        with progress.node_metrics(run_id, uri):  # a second worker on the node: the node is taken
            assert len(monitor_threads()) == 1
        time.sleep(1.5)
        assert len(monitor_threads()) == 1
    assert monitor_threads() == []  # finished with the training, nothing left sampling
    keys = set(client.get_run(run_id).data.metrics)
    assert "system/10.0.0.5-1a2b3c4d/cpu_utilization_percentage" in keys, keys
    assert "system/10.0.0.5-1a2b3c4d/system_memory_usage_megabytes" in keys, keys
    assert all(k.startswith("system/10.0.0.5-1a2b3c4d/") for k in keys), keys
    assert client.get_run(run_id).info.status == "RUNNING"  # the driver, not a node, ends the run


def test_each_node_has_its_own_monitor(run: tuple[MlflowClient, str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two Ray nodes on one machine (the cluster tests' nodes) are two nodes."""
    _, uri, run_id = run
    with progress.node_metrics(run_id, uri):
        monkeypatch.setattr(progress, "this_node", lambda: node_name("10.0.0.5", "9f" + NODE_ID[2:]))
        with progress.node_metrics(run_id, uri):
            assert len(monitor_threads()) == 2
    assert monitor_threads() == []


def test_a_failing_worker_stops_its_monitor_and_frees_the_node(run: tuple[MlflowClient, str, str]) -> None:
    _, uri, run_id = run
    with pytest.raises(RuntimeError, match="lost"), progress.node_metrics(run_id, uri):
        assert len(monitor_threads()) == 1
        raise RuntimeError("lost")
    assert monitor_threads() == []
    with progress.node_metrics(run_id, uri):  # the restarted worker group's claim
        assert len(monitor_threads()) == 1


def test_without_a_tracking_store_no_monitor_starts() -> None:
    with progress.node_metrics("", ""):
        assert monitor_threads() == []
