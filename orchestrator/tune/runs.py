"""MLflow runs of a sweep: the parent run, and the repair of child runs Tune left RUNNING (a trial ASHA
stops is killed mid-epoch): matched to trials by name and ended FINISHED, FAILED or KILLED."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import yaml

from orchestrator import tracking
from orchestrator.tracking.tags import KIND_TAG, RUN_NAME_TAG, STOPPED_EARLY_TAG, SWEEP_TAG, TRIAL_TAG
from orchestrator.tune.report import SweepOutcome
from orchestrator.tune.spec import SweepSpec


def start_parent(client: Any, spec: SweepSpec) -> str:
    params: dict[str, Any] = {f"search.{k}": v for k, v in spec.search.items()}
    params.update({"tune.scheduler": spec.scheduler, "tune.search_alg": spec.search_alg,
                   "tune.num_samples": spec.num_samples, "tune.metric": spec.metric, "tune.mode": spec.mode,
                   "tune.max_concurrent": spec.resources["max_concurrent"],
                   "tune.workers_per_trial": spec.resources["workers"],
                   "tune.cpus_per_worker": spec.resources["cpus_per_worker"],
                   "train.epochs": spec.epochs, "data.source": spec.base["data"]["source"]})
    if spec.scheduler == "asha":
        params.update({"tune.grace_period": spec.grace_period, "tune.reduction_factor": spec.reduction_factor})
    run_id = tracking.start_run(client, spec.experiment_id, spec.name, params,
                                {KIND_TAG: "sweep", SWEEP_TAG: spec.name, "dataset": spec.base["data"]["source"]})
    with tempfile.TemporaryDirectory() as tmp:
        base_yaml = os.path.join(tmp, "base_config.yaml")
        with open(base_yaml, "w") as f:
            yaml.safe_dump(spec.user_base, f, sort_keys=False)
        client.log_artifact(run_id, base_yaml)
    return run_id


def child_runs(client: Any, spec: SweepSpec) -> list[Any]:
    query = f"tags.`mlflow.parentRunId` = '{spec.parent_run_id}'"
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([spec.experiment_id], filter_string=query, max_results=500, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def end_orphans(client: Any, spec: SweepSpec, status: str, reason: str) -> None:
    """End every child run still RUNNING (its trial process is gone)."""
    for run in child_runs(client, spec):
        if run.info.status == "RUNNING":
            tracking.end_run(client, run.info.run_id, status, reason)


def fix_child_runs(client: Any, spec: SweepSpec, outcome: SweepOutcome) -> None:
    """Match trials to child runs by name; end each run as its trial ended; tag stopped trials."""
    by_name: dict[str, list[Any]] = {}
    for run in child_runs(client, spec):
        by_name.setdefault(run.data.tags.get(RUN_NAME_TAG, run.info.run_name), []).append(run)
    for trial in outcome.trials:
        runs = sorted(by_name.pop(trial.run_name, []), key=lambda r: r.info.start_time)
        if not runs:
            continue
        trial.run_id = runs[-1].info.run_id
        status, error = _ending(trial, spec)
        for run in runs:
            run_id = run.info.run_id
            tags = {TRIAL_TAG: trial.trial_id, SWEEP_TAG: spec.name}
            if run is runs[-1] and trial.status == "stopped_early":
                tags[STOPPED_EARLY_TAG] = "true"
            tracking.set_tags(client, run_id, tags)
            # Tune's stop (ASHA's, or the sweep's on Ctrl-C/SIGTERM) removes the trial's placement group;
            # the training inside may see its actors die first and end its run FAILED ("placement group
            # was removed"): the trial was stopped, not failed
            torn_down = (run is runs[-1] and run.info.status == "FAILED"
                         and trial.status in ("stopped_early", "interrupted"))
            if torn_down and not error and "error" in run.data.tags:
                client.delete_tag(run_id, "error")
            if run.info.status == "RUNNING" or torn_down:
                tracking.end_run(client, run_id, status, error)
    for runs in by_name.values():  # runs of no known trial: never leave them RUNNING
        for run in runs:
            if run.info.status == "RUNNING":
                tracking.end_run(client, run.info.run_id, "KILLED", "no Tune trial matches this run")


def _ending(trial: Any, spec: SweepSpec) -> tuple[str, str]:
    """How a trial's run ends: its status and error tag. Completed or stopped early by the scheduler,
    the run did what it was asked."""
    if trial.status == "failed":
        return "FAILED", trial.error
    if trial.status == "interrupted":
        return "KILLED", f"sweep interrupted; resume with simclr tune --resume {spec.name}"
    return "FINISHED", ""

