"""`simclr jobs stop` and `simclr submit tune` on the session's two-node cluster, with the checkpoints in a
bucket and the runs on the team's MLflow server (PostgreSQL, artifacts in the bucket).

A stopped job is a run to resume, not a run lost: the stop's SIGTERM takes the Ctrl-C path (a checkpoint
at the current step, the run KILLED), and the same submit with the same --name goes on from there. A
sweep submitted to the cluster records its parent and one child per trial on the server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from local_ray import TINY, LocalCluster, find_run, registered_epoch, simclr, wait_until
from mlflow.tracking import MlflowClient
from services import S3, TrackingServer

from orchestrator import cli
from orchestrator.tracking.tags import CHECKPOINT_TAG, KIND_TAG, RUN_NAME_TAG
from orchestrator.train.checkpoint import read_checkpoint

EPOCHS = 6
TRIALS = 4


@pytest.mark.slow
def test_jobs_stop_ends_the_run_killed_with_a_checkpoint_in_the_bucket_and_the_same_submit_resumes_it(
        ray_cluster: LocalCluster, client_env: dict[str, str], tmp_path: Path, s3: S3,
        tracking_server: TrackingServer, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3.env().items():  # this process reads the checkpoint in the bucket
        monkeypatch.setenv(key, value)
    uri, storage = tracking_server.uri, f"{s3.bucket()}/runs"
    auth = ["--address", ray_cluster.dashboard_url, "--token-file", str(ray_cluster.token_file)]
    # one 1-CPU worker (a derived share of the cluster's 6 CPUs would not fit on one 3-CPU node)
    train = ["train", *TINY, "--epochs", str(EPOCHS), "--workers", "1", "--set", "train.cpus_per_worker=1",
             "--name", "stopped", "--set", f"train.storage_path={storage}", "--tracking-uri", uri, *auth]
    submitted = simclr(["submit", "--no-wait", *train], client_env, tmp_path, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[0]
    try:
        wait_until(lambda: registered_epoch(s3, f"{storage}/stopped") >= 1, 420, "a checkpoint in the bucket", poll=0.2)
        # `simclr jobs stop`, here in this process so that the stop lands in the next epoch
        assert cli.main(["jobs", "stop", job_id, *auth]) == 0
        assert "stop requested" in capfd.readouterr().out
        assert cli.main(["jobs", "logs", "--follow", job_id, *auth]) == 1
    finally:
        cli.main(["jobs", "stop", job_id, *auth])  # a failed test leaves no job on the session's cluster
    logs, followed = capfd.readouterr()
    assert f"job {job_id} STOPPED" in followed, followed
    assert "simclr: interrupted: stopped with a checkpoint" in logs, logs[-3000:]
    killed = find_run(uri, "stopped")
    assert killed.info.status == "KILLED"
    where = killed.data.tags[CHECKPOINT_TAG]  # the checkpoint the stop saved, in the bucket
    assert where.startswith(f"{storage}/stopped/checkpoint_epoch_") and "_stopped_" in where, where
    epoch = read_checkpoint(where)["epoch"]
    assert 1 <= epoch < EPOCHS

    again = simclr(["submit", *train], client_env, tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "SUCCEEDED" in again.stderr and f"after epoch {epoch}" in again.stderr
    resumed = find_run(uri, "stopped")
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == "FINISHED"
    assert "error" not in resumed.data.tags  # the stop's message went with the stop
    steps = [m.step for m in MlflowClient(uri).get_metric_history(resumed.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, EPOCHS + 1)), steps  # each epoch once
    assert resumed.data.tags[CHECKPOINT_TAG] == f"{storage}/stopped/checkpoint_epoch_{EPOCHS:05d}"


@pytest.mark.slow
def test_submit_tune_records_the_sweep_and_a_child_run_per_trial_on_the_tracking_server(
        ray_cluster: LocalCluster, client_env: dict[str, str], tmp_path: Path, s3: S3,
        tracking_server: TrackingServer, capfd: pytest.CaptureFixture[str]) -> None:
    uri, storage = tracking_server.uri, f"{s3.bucket()}/sweeps"
    auth = ["--address", ray_cluster.dashboard_url, "--token-file", str(ray_cluster.token_file)]
    proc = simclr(["submit", "tune", *TINY, "--epochs", "1", "--set", "train.workers=1", "--num-samples", str(TRIALS),
                   "--scheduler", "none", "--name", "sweep4", "--set", f"train.storage_path={storage}",
                   "--tracking-uri", uri, *auth], client_env, tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(re.findall(r"trial sweep4-\S+ finished", proc.stderr)) == TRIALS, proc.stderr[-4000:]

    client = MlflowClient(uri)
    parent = find_run(uri, "sweep4")
    assert parent.data.tags[KIND_TAG] == "sweep" and parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == TRIALS and all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags[RUN_NAME_TAG].startswith("sweep4") for r in children)
    assert all(r.data.tags[CHECKPOINT_TAG].startswith(f"{storage}/sweep4/trials/") for r in children)
    # the parent's report and every trial's config are in the bucket behind the server
    stored = s3.files(tracking_server.artifacts)
    assert any(f.endswith(f"{parent.info.run_id}/artifacts/results.csv") for f in stored)
    assert all(any(f.endswith(f"{r.info.run_id}/artifacts/config.yaml") for f in stored) for r in children)
    assert cli.main(["runs", "--tracking-uri", uri, "--sweep", "sweep4", "--json"]) == 0
    assert {r["run_id"] for r in json.loads(capfd.readouterr().out)} == {r.info.run_id for r in children}
