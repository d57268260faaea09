"""`simclr submit train` against a real two-node Ray cluster with token auth, tracked in MLflow."""

from __future__ import annotations

import re
from pathlib import Path

from local_ray import TINY, LocalCluster, find_run, simclr
from mlflow.tracking import MlflowClient


def test_submit_train_succeeds_on_two_nodes_and_logs_each_epoch_to_mlflow(
        ray_cluster: LocalCluster, client_env: dict[str, str], tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    epochs = 2
    proc = simclr(["submit", "train", *TINY, "--epochs", str(epochs), "--workers", "2", "--name", "e2e",
                   "--set", f"train.storage_path={tmp_path / 'runs'}", "--set", "train.cpus_per_worker=2",
                   "--address", ray_cluster.dashboard_url, "--token-file", str(ray_cluster.token_file),
                   "--tracking-uri", uri], client_env, tmp_path)

    (tmp_path / "submit.stderr").write_text(proc.stderr)  # kept by pytest for a post-mortem
    assert proc.returncode == 0, proc.stderr[-4000:]
    job_id = proc.stdout.strip().splitlines()[0]
    assert job_id.startswith("raysubmit_"), proc.stdout
    assert f"job {job_id} SUCCEEDED" in proc.stderr
    assert "epoch 2/2 done" in proc.stderr  # the followed logs reached the client
    # The job's driver has no terminal: what it prints (and the client streams) is our header, epoch
    # lines and result; Ray's own output (the connection, Ray Data, the workers' logs) went to the run's
    # log file. The lines Ray's job manager and supervisor write into the job's log, and the Jobs SDK's
    # end-of-stream line, are not shown either.
    streamed = proc.stderr.splitlines()
    assert "epoch 1/2 done" in proc.stderr and "  Ray's output: " in proc.stderr
    for noise in ("Connecting to existing Ray cluster", "RayTrainWorker", "(pid=", "Running Dataset",
                  "Runtime env is setting up", "job_manager.py", "Running entrypoint for job", "WebSocket closed"):
        assert noise not in proc.stderr, proc.stderr
    assert len(streamed) < 40, proc.stderr
    assert ray_cluster.token not in proc.stdout + proc.stderr

    run = find_run(uri, "e2e")
    assert run.info.status == "FINISHED"
    assert run.data.params["train.workers"] == "2"
    history = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1))
    # system metrics from both nodes that trained (2-CPU workers on 3-CPU nodes: one on each), each
    # series named by its node: one address here, two Ray node ids
    nodes = {k.split("/")[1] for k in run.data.metrics if k.startswith("system/")}
    assert len(nodes) == 2, sorted(run.data.metrics)
    assert all(re.fullmatch(r"[0-9.]+-[0-9a-f]{8}", n) for n in nodes), nodes
    for node in nodes:
        assert f"system/{node}/cpu_utilization_percentage" in run.data.metrics

    auth = ["--address", ray_cluster.dashboard_url, "--token-file", str(ray_cluster.token_file)]
    logs = simclr(["jobs", "logs", job_id, *auth], client_env, tmp_path, timeout=120)
    assert logs.returncode == 0, logs.stderr
    # Ray's lines are still in the job's log
    assert "Runtime env is setting up" in logs.stdout and f"Running entrypoint for job {job_id}: " in logs.stdout

    listed = simclr(["jobs", "list", *auth], client_env, tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
