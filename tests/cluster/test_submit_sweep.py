"""`simclr submit tune` on the session's two-node cluster, with the trials' checkpoints in a bucket and the
runs on the team's MLflow server (PostgreSQL, artifacts in the bucket): the suite's one real sweep (ASHA, a
trial that fails, the console a person follows) records its parent and one child per trial on the server.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_ray import LocalCluster, find_run, simclr
from mlflow.tracking import MlflowClient
from services import S3, TrackingServer

from orchestrator import cli
from orchestrator.tracking.tags import CHECKPOINT_TAG, COMPLETE_TAG, KIND_TAG, REGISTERED_TAG, RUN_NAME_TAG

# 4 epochs of 256 synthetic 16 px images, one 1-CPU worker per trial, two trials at a time (a derived share
# of the cluster's CPUs per worker would leave less than a CPU free on each 3-CPU node for Ray Data's tasks).
SWEEP_SETS = {
    "data.source": "synthetic", "data.num_samples": 256, "data.image_size": 16, "data.augment_batch_size": 64,
    "model.widths": [8, 16], "model.blocks": [1, 1], "model.proj_dim": 16, "train.batch_size": 32,
    "train.workers": 1, "train.cpus_per_worker": 1, "train.log_every_steps": 3, "eval.knn_k": 20,
    "eval.linear_probe_epochs": 0,
    "optim.warmup_epochs": 0,
}
# Four temperatures in grid order (the trials start in this order, two at a time). The loss is the metric
# here because it is nearly a function of the temperature: at tau=3 every logit is within +-1/3, so its
# loss stays near log(63) = 4.14 while the low temperatures' falls, and ASHA's rung-1 comparison of the
# tau=3 trial against the first two trials stops it whatever the noise (of those two, the second to
# reach a rung may be stopped too). tau=1e-300 passes validation (> 0) but is 0 in float32: that
# trial's first loss is NaN and it fails inside the trial.
TEMPERATURES = (0.1, 0.15, 1e-300, 3.0)
FAILING = 1e-300


def trial_status(run: Any) -> str:
    """How a trial ended, from its child run: failed, stopped early by ASHA, or completed."""
    if run.info.status == "FAILED":
        return "failed"
    return "stopped_early" if run.data.tags.get("simclr.stopped_early") == "true" else "completed"


@pytest.fixture(scope="module")
def sweep(ray_cluster: LocalCluster, s3: S3, tracking_server: TrackingServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One 4-trial ASHA sweep, ``simclr submit tune`` followed as a user's terminal follows it (stderr:
    exactly what a person sees), with its trials' checkpoints in the bucket and its runs on the server."""
    tmp = tmp_path_factory.mktemp("sweep")
    home = tmp / "client_home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))} | {"HOME": str(home)}
    uri, storage = tracking_server.uri, f"{s3.bucket()}/sweeps"
    sets = [arg for k, v in SWEEP_SETS.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
    proc = simclr(["submit", "tune", *sets, "--name", "sw", "--epochs", "4", "--set", f"train.storage_path={storage}",
                   "--search", f"loss.temperature=grid({','.join(repr(t) for t in TEMPERATURES)})",
                   "--num-samples", "1", "--scheduler", "asha", "--grace-period", "1", "--reduction-factor", "2",
                   "--metric", "loss", "--max-concurrent", "2", "--tracking-uri", uri, "--register", "sweep-encoder",
                   "--address", ray_cluster.dashboard_url, "--token-file", str(ray_cluster.token_file)],
                  env, tmp, timeout=600)
    client = MlflowClient(uri)
    parent = find_run(uri, "sw")
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    yield {"proc": proc, "parent": parent, "children": children, "client": client, "uri": uri, "storage": storage}


@pytest.mark.slow
def test_submitted_asha_sweep_has_one_parent_four_children_on_the_server_one_stopped_early(
        sweep: dict[str, Any], s3: S3, tracking_server: TrackingServer, capfd: pytest.CaptureFixture[str]) -> None:
    proc, parent, children, client = sweep["proc"], sweep["parent"], sweep["children"], sweep["client"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    job_id = proc.stdout.strip().splitlines()[0]
    assert f"job {job_id} SUCCEEDED" in proc.stderr
    assert parent.data.tags[KIND_TAG] == "sweep" and parent.info.status == "FINISHED"
    assert len(children) == len(TEMPERATURES)
    assert sorted(float(r.data.params["loss.temperature"]) for r in children) == sorted(TEMPERATURES)
    # run names come from trial ids; every run has ended
    names = {r.info.run_name for r in children}
    assert len(names) == len(children) and all(n.startswith("sw-") for n in names)
    assert all(r.data.tags[RUN_NAME_TAG] == r.info.run_name for r in children)
    assert all(r.info.status != "RUNNING" for r in [parent, *children])
    stopped = [r for r in children if trial_status(r) == "stopped_early"]
    assert stopped and all(r.info.status == "FINISHED" for r in stopped)
    assert 3.0 in {float(r.data.params["loss.temperature"]) for r in stopped}
    # the best trial is named on the parent, with its value, its metric and the command that trains it again
    tags = parent.data.tags
    (best,) = [r for r in children if r.info.run_name == tags["simclr.best_trial"]]
    assert tags["best.run_id"] == best.info.run_id
    assert float(tags["best.loss.temperature"]) in (0.1, 0.15)
    assert parent.data.metrics["best_loss"] == pytest.approx(best.data.metrics["loss"])
    assert tags["best.train_command"].startswith("simclr train --config ")
    assert f"--set loss.temperature={tags['best.loss.temperature']}" in tags["best.train_command"]
    assert f"train it:    {tags['best.train_command']}" in proc.stderr  # the sweep's summary, followed
    # --register: the best trial's encoder, a version of the registered model with its alias on it (a best
    # trial that ASHA stopped logged no encoder, and the summary says so)
    if best.data.tags.get(COMPLETE_TAG) == "true":
        assert tags[REGISTERED_TAG] == best.data.tags[REGISTERED_TAG] == "sweep-encoder/1"
        assert client.get_model_version_by_alias("sweep-encoder", "candidate").run_id == best.info.run_id
        assert "registered:  sweep-encoder/1 (the best trial's encoder)" in proc.stderr
    else:
        assert REGISTERED_TAG not in tags and "logged no encoder" in proc.stderr
    assert parent.data.params["search.loss.temperature"].startswith("grid(")
    assert parent.data.params["tune.scheduler"] == "asha"
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "results.md", "base_config.yaml"} <= top
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == [
        "plots/loss_vs_loss.temperature.png"]
    # the data was prepared once, by the sweep's driver, for all four trials
    assert "prepare_seconds" in parent.data.metrics
    assert all(r.data.tags.get("simclr.data_prepared_by") == "sweep" for r in children)
    # every trial's checkpoints are in the bucket; the parent's report and every trial's config are in the
    # bucket behind the server
    assert all(r.data.tags[CHECKPOINT_TAG].startswith(f"{sweep['storage']}/sw/trials/")
               for r in children if trial_status(r) == "completed")
    stored = s3.files(tracking_server.artifacts)
    assert any(f.endswith(f"{parent.info.run_id}/artifacts/results.csv") for f in stored)
    assert all(any(f.endswith(f"{r.info.run_id}/artifacts/config.yaml") for f in stored) for r in children)
    capfd.readouterr()
    assert cli.main(["runs", "--tracking-uri", sweep["uri"], "--sweep", "sw", "--json"]) == 0
    assert {r["run_id"] for r in json.loads(capfd.readouterr().out)} == {r.info.run_id for r in children}


@pytest.mark.slow
def test_submitted_trial_that_raises_is_failed_with_its_error_and_the_others_finish(sweep: dict[str, Any]) -> None:
    children = sweep["children"]
    (failed,) = [r for r in children if float(r.data.params["loss.temperature"]) == FAILING]
    assert failed.info.status == "FAILED"
    assert "non-finite loss" in failed.data.tags["error"]
    assert re.search(rf"trial {failed.info.run_name} failed: non-finite loss", sweep["proc"].stderr)
    # the sweep went on: every other trial ended FINISHED, run to its last epoch or stopped by ASHA
    others = [r for r in children if r is not failed]
    assert len(others) == 3 and all(r.info.status == "FINISHED" for r in others)
    assert all(r.data.tags.get("simclr.complete") == "true" or r.data.tags.get("simclr.stopped_early") == "true"
               for r in others)
    assert sorted(trial_status(r) for r in others) in (
        ["completed", "stopped_early", "stopped_early"], ["completed", "completed", "stopped_early"])


@pytest.mark.slow
def test_submitted_sweep_console_has_a_header_and_a_line_per_trial_event_and_ray_output_goes_to_the_log(
        sweep: dict[str, Any]) -> None:
    """What the submitting terminal shows: our submit line, the sweep's header, a line per trial event,
    the sweep's summary and the job's end; Ray's output (Tune's status table, the trials' worker logs) is
    in the sweep's log file on the head, which is also an artifact of the parent run."""
    proc, parent, children = sweep["proc"], sweep["parent"], sweep["children"]
    lines = proc.stderr.splitlines()
    assert len(lines) < 60, proc.stderr
    start = next((i for i, ln in enumerate(lines) if ln.startswith("sweep sw: ")), len(lines))
    assert all(ln.startswith("submitted ") or " INFO mlflow." in ln for ln in lines[:start]), proc.stderr
    lines = lines[start:]
    # the header: the sweep, its search space, the parent run, where Ray's output went
    assert lines[0].startswith("sweep sw: 4 trial(s) of 4 epochs, random search, ASHA on loss"), proc.stderr
    assert lines[1] == "  search: loss.temperature=grid(0.1, 0.15, 1e-300, 3.0)"
    assert lines[2].startswith(f"  MLflow parent run {parent.info.run_id} at {sweep['uri']}")
    log = Path(lines[3].removeprefix("  Ray's output: "))
    assert lines[3].startswith("  Ray's output: ") and log.is_file()  # the head is a process on this machine
    # then the trial lines, every event of every trial, until the sweep's summary; nothing of Ray's
    end = next(i for i, ln in enumerate(lines) if ln.startswith("sweep:  "))
    events = lines[4:end]
    bad = [ln for ln in events if not re.match(r"trial sw-\S+ (started|epoch|finished|stopped by ASHA|failed)", ln)]
    assert not bad, proc.stderr
    for run in children:
        mine = [ln.split(" ", 2)[2] for ln in events if ln.split(" ", 2)[1] == run.info.run_name]
        assert mine[0].startswith("started: loss.temperature="), mine
        epochs = [ln for ln in mine if ln.startswith("epoch ")]
        status = trial_status(run)
        finish = {"completed": "finished epoch 4/4: loss ", "stopped_early": "stopped by ASHA after epoch ",
                  "failed": "failed: non-finite loss"}[status]
        assert mine[-1].startswith(finish), mine
        # a line for each epoch Tune saw: all 4, those up to ASHA's stop, none for the failure
        seen = {"completed": 4, "failed": 0}[status] if status != "stopped_early" else \
            int(mine[-1].removeprefix("stopped by ASHA after epoch ").split("/")[0])
        assert len(epochs) == seen, mine
        epoch_line = r"epoch \d/4: loss \d+\.\d{4}( knn_top1 \d\.\d{4})?  \(loss.temperature=\S+\)$"
        assert all(re.match(epoch_line, ln) for ln in epochs), mine
    for noise in ("Trial status", "RayTrainWorker", "(pid=", "Running Dataset", "Runtime env is setting up"):
        assert noise not in proc.stderr, proc.stderr
    text = log.read_text()
    assert "Trial status" in text and "epoch 1/4 done" in text and "trial sw-" in text
    assert [a.path for a in sweep["client"].list_artifacts(parent.info.run_id, "logs")] == [f"logs/{log.name}"]
