"""``simclr runs`` (table, sort, JSON, a sweep's children) and ``simclr ui`` (the MLflow server on our store)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from orchestrator import cli, tracking
from orchestrator.cli.runs import format_table, server_command, sort_records

# name, parent, temperature, knn_top1, loss, status, extra tags
RUNS: list[tuple[str, str, float, float, float, str, dict[str, str]]] = [
    ("sw-a_00000", "sw", 0.1, 0.71, 3.25, "FINISHED", {}),
    ("sw-a_00001", "sw", 0.5, 0.62, 3.95, "FINISHED", {"simclr.stopped_early": "true"}),
    ("sw-a_00002", "sw", 0.2, 0.80, 3.19, "FINISHED", {}),
    ("lone", "", 0.3, 0.50, 3.50, "FAILED", {"error": "non-finite loss"}),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An MLflow sqlite store with a sweep (parent + 3 trials) and one plain run, written as our code does.
    Module-scoped (creating the sqlite schema takes seconds); the tests only read it."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = tracking.resolve_uri(str(tmp_path / "mlflow.db"))
    client = tracking.client_for(uri)
    exp_id = tracking.experiment_id(client, "simclr", uri)
    parent = tracking.start_run(client, exp_id, "sw", {"search.loss.temperature": "grid(0.1, 0.2, 0.5)"},
                                {"simclr.kind": "sweep", "simclr.sweep": "sw"})
    artifact = tmp_path / "results.md"
    artifact.write_text("| trial |\n")
    client.log_artifact(parent, str(artifact))
    tracking.end_run(client, parent, "FINISHED")
    ids = {"sw": parent}
    for name, par, temp, knn, loss, status, tags in RUNS:
        all_tags = {**tags, **({"mlflow.parentRunId": parent} if par else {})}
        run_id = tracking.start_run(client, exp_id, name, {"loss.temperature": temp, "aug.strength": 0.5}, all_tags)
        tracking.log_history(client, run_id, [{"epoch": 1, "knn_top1": knn, "loss": loss}])
        tracking.end_run(client, run_id, status, tags.get("error", ""))
        ids[name] = run_id
    return {"uri": uri, "exp_id": exp_id, "ids": ids, "tmp": tmp_path}


def _runs(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["runs", *args])
    return code, capfd.readouterr().out


def test_runs_table_lists_every_run_with_key_params_and_metrics(store: dict[str, Any],
                                                                  capfd: pytest.CaptureFixture[str]) -> None:
    code, out = _runs(["--tracking-uri", store["uri"]], capfd)
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["run_name", "kind", "status"]
    assert {"loss.temperature", "knn_top1", "loss"} <= set(header.split())
    assert len(rows) == 5
    lone = next(r for r in rows if r.startswith("lone "))
    assert "train" in lone and "FAILED" in lone and "non-finite loss" in lone
    assert next(r for r in rows if r.startswith("sw ")).split()[1] == "sweep"


def test_runs_sort_puts_the_best_first_and_reverse_flips_it(store: dict[str, Any],
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    _, out = _runs(["--tracking-uri", store["uri"], "--sort", "knn_top1"], capfd)
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == ["sw-a_00002", "sw-a_00000", "sw-a_00001", "lone", "sw"]  # runs without the metric last
    _, out = _runs(["--tracking-uri", store["uri"], "--sort", "loss"], capfd)  # loss: lowest first
    assert [line.split()[0] for line in out.splitlines()[1:4]] == ["sw-a_00002", "sw-a_00000", "lone"]
    _, out = _runs(["--tracking-uri", store["uri"], "--sort", "knn_top1", "--reverse"], capfd)
    assert [line.split()[0] for line in out.splitlines()[1:3]] == ["lone", "sw-a_00001"]


def test_runs_of_a_sweep_are_its_children_and_json_is_one_object_per_run(
        store: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    code, out = _runs(["--tracking-uri", store["uri"], "--sweep", "sw", "--sort", "knn_top1", "--json"], capfd)
    assert code == 0
    records = json.loads(out)
    assert [r["run_name"] for r in records] == ["sw-a_00002", "sw-a_00000", "sw-a_00001"]
    assert all(r["kind"] == "trial" and r["parent_run_id"] == store["ids"]["sw"] for r in records)
    assert records[0]["params"]["loss.temperature"] == "0.2"
    assert records[0]["metrics"]["knn_top1"] == pytest.approx(0.80)
    assert records[2]["note"] == "stopped early"
    code, out = _runs(["--tracking-uri", store["uri"], "--parent", store["ids"]["sw"], "--json"], capfd)
    assert {r["run_name"] for r in json.loads(out)} == {r["run_name"] for r in records}


def test_runs_of_an_unknown_sweep_is_one_line_and_exit_2(store: dict[str, Any],
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["runs", "--tracking-uri", store["uri"], "--sweep", "nope"])
    err = capfd.readouterr().err
    assert code == cli.EXIT_USER_ERROR and err.count("\n") == 1 and "nope" in err


def test_where_adds_the_data_and_checkpoint_columns() -> None:
    record = {"run_name": "r", "kind": "train", "status": "FINISHED", "note": "", "params": {}, "metrics": {},
              "data": "s3://b/photos/train", "checkpoint": "s3://b/runs/r/checkpoint_epoch_00002"}
    header, row = format_table([record], [], [], where=True).splitlines()
    assert header.split()[-2:] == ["data", "checkpoint"]
    assert row.split()[-2:] == ["s3://b/photos/train", "s3://b/runs/r/checkpoint_epoch_00002"]
    assert "s3://" not in format_table([record], [], [])  # without --where, the table stays narrow


def test_sort_records_keeps_runs_without_the_key_last() -> None:
    records = [{"metrics": {}, "params": {}, "n": 0}, {"metrics": {"m": 1.0}, "params": {}, "n": 1},
               {"metrics": {"m": 2.0}, "params": {}, "n": 2}]
    assert [r["n"] for r in sort_records(records, "m")] == [2, 1, 0]
    assert [r["n"] for r in sort_records(records, "m", reverse=True)] == [1, 2, 0]


def test_ui_command_binds_localhost_on_our_store_and_artifact_folder(tmp_path: Path) -> None:
    uri = tracking.resolve_uri(str(tmp_path / "mlflow.db"))
    cmd = server_command(uri, 5055)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5055"
    assert cmd[cmd.index("--backend-store-uri") + 1] == uri
    assert cmd[cmd.index("--artifacts-destination") + 1] == tracking.artifact_location(uri)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


@pytest.mark.slow
def test_ui_serves_the_runs_and_their_artifacts(store: dict[str, Any]) -> None:
    port = _free_port()
    simclr = os.path.join(os.path.dirname(sys.executable), "simclr")
    proc = subprocess.Popen([simclr, "ui", "--tracking-uri", store["uri"], "--port", str(port)],
                            cwd=store["tmp"], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # the server's start takes seconds on an idle machine, far more under load
        found: dict[str, Any] = {}
        while time.monotonic() < deadline and not found:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            try:
                found = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [store["exp_id"]]})
            except OSError:
                time.sleep(1)
        assert found, "the MLflow UI did not answer within 120 s"
        names = {r["info"]["run_name"] for r in found["runs"]}
        assert names == {"sw", *(r[0] for r in RUNS)}
        parent = store["ids"]["sw"]
        url = f"{base}/api/2.0/mlflow/artifacts/list?run_id={parent}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            files = {f["path"] for f in json.loads(resp.read()).get("files", [])}
        assert "results.md" in files
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert MlflowClient(store["uri"]).get_run(parent).info.status == "FINISHED"


def test_ui_without_a_store_is_one_line_and_exit_2(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["ui", "--tracking-uri", str(tmp_path / "missing.db")])
    err = capfd.readouterr().err
    assert code == cli.EXIT_USER_ERROR and err.count("\n") == 1 and "no MLflow store" in err


def test_a_resumed_run_loses_the_error_of_how_it_last_ended(tmp_path: Path) -> None:
    uri = tracking.resolve_uri(str(tmp_path / "mlflow.db"))
    client = tracking.client_for(uri)
    run_id = tracking.start_run(client, tracking.experiment_id(client, "simclr", uri), "r", {}, {})
    tracking.end_run(client, run_id, "KILLED", "stopped with a checkpoint at s3://b/runs/r/checkpoint_x")
    tracking.reopen_run(client, run_id)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and "error" not in run.data.tags
    tracking.end_run(client, run_id, "FINISHED")
    tracking.reopen_run(client, run_id)  # a run without the tag reopens as before
    assert client.get_run(run_id).info.status == "RUNNING"


def test_two_writers_ending_the_same_runs_at_once_both_succeed(tmp_path: Path) -> None:
    """A stopped trial's process and the sweep's driver may end one run at the same moment, each with
    its own client: the store writes the ``error`` tag as a read then an insert, so one insert can
    collide with the other's row. Both writers end 20 runs in lockstep; none may raise."""
    import threading

    uri = tracking.resolve_uri(str(tmp_path / "mlflow.db"))
    client = tracking.client_for(uri)
    exp_id = tracking.experiment_id(client, "simclr", uri)
    run_ids = [tracking.start_run(client, exp_id, f"r{i}", {}, {}) for i in range(20)]
    lockstep = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(reason: str) -> None:
        own = tracking.client_for(uri)
        for run_id in run_ids:
            lockstep.wait()
            try:
                tracking.end_run(own, run_id, "KILLED", reason)
            except Exception as err:  # collected, asserted below
                errors.append(err)

    threads = [threading.Thread(target=writer, args=(r,)) for r in ("trial stopped", "sweep interrupted")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags["error"] in ("trial stopped", "sweep interrupted")


def test_a_new_sqlite_store_is_made_without_mlflows_lines_on_the_console(tmp_path: Path,
                                                                         capfd: pytest.CaptureFixture[str]) -> None:
    import logging

    assert cli.main(["runs", "--tracking-uri", f"sqlite:///{tmp_path / 'new.db'}"]) == 2  # no experiment yet
    assert (tmp_path / "new.db").exists()
    assert not logging.getLogger("mlflow.store.db.utils").isEnabledFor(logging.INFO)
    assert "Creating initial MLflow database tables" not in capfd.readouterr().err
