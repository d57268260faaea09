"""The sweep's outcome: each trial summarised from Tune's results, the best one, the command that trains
it again, and the parent run's report (best-trial tags, results table, metric-vs-parameter plots)."""

from __future__ import annotations

import csv
import json
import os
import shlex
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ray import tune

from orchestrator import tracking
from orchestrator.storage import join
from orchestrator.tracking import plots, record
from orchestrator.tracking.tags import BEST_TRIAL_TAG, REGISTERED_TAG
from orchestrator.train.run import failure_message, last_line
from orchestrator.tune.spec import BASE_CONFIG_FILE, SweepSpec
from orchestrator.tune.trial import plain, trial_run_name


@dataclass
class TrialSummary:
    trial_id: str
    run_name: str
    status: str  # completed | stopped_early | failed | interrupted | pending
    params: dict[str, Any]
    metrics: dict[str, float]
    run_id: str = ""
    error: str = ""


@dataclass
class SweepOutcome:
    name: str
    parent_run_id: str
    tracking_uri: str
    experiment_id: str
    metric: str
    mode: str
    path: str
    trials: list[TrialSummary] = field(default_factory=list)
    best: TrialSummary | None = None
    train_command: str = ""
    interrupted: bool = False
    registered: str = ""  # "NAME/VERSION": the best trial's encoder in the Model Registry (tracking.register)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.best is not None:
            data["best"] = {"trial_id": self.best.trial_id, "run_name": self.best.run_name,
                            "run_id": self.best.run_id, "params": self.best.params,
                            "metric": self.best.metrics.get(self.metric)}
        return data


def first_error(outcome: SweepOutcome) -> str:
    return next((t.error for t in outcome.trials if t.error), "no trial ran")


def load_trials(spec: SweepSpec) -> list[Any]:
    return list(tune.ExperimentAnalysis(spec.path).trials)


def _trial_error(trial: Any) -> str:
    """The one line of a failed trial's error: from the error Tune pickled, else the last line of its text."""
    try:
        err = trial.get_pickled_error()
    except Exception:  # the file is gone, unreadable, or names a class this process cannot import
        err = None
    if err is not None:
        return failure_message(err)
    try:
        text = str(trial.get_error() or "")
    except Exception:  # the error file is gone or unreadable
        text = ""
    return last_line(text) or "trial failed"


def summarise(spec: SweepSpec, trials: Sequence[Any]) -> SweepOutcome:
    outcome = SweepOutcome(spec.name, spec.parent_run_id, spec.tracking_uri, spec.experiment_id, spec.metric,
                           spec.mode, spec.path)
    for trial in trials:
        last = trial.last_result or {}
        metrics = {k: float(v) for k, v in last.items()
                   if k in ("epoch", "loss", "knn_top1", "linear_probe_top1", "images_per_s", spec.metric)
                   and isinstance(v, int | float)}
        params = {k: plain(trial.config[k]) for k in spec.search if k in trial.config}
        if trial.status == "ERROR":
            status, error = "failed", _trial_error(trial)
        elif trial.status == "TERMINATED":
            status = "completed" if metrics.get("epoch", 0) >= spec.epochs else "stopped_early"
            error = ""
        elif trial.status == "PENDING" and not last:
            status, error = "pending", ""
        else:
            status, error = "interrupted", ""
        outcome.trials.append(TrialSummary(trial.trial_id, trial_run_name(spec.name, trial.trial_id), status,
                                           params, metrics, error=error))
    outcome.interrupted = any(t.status in ("interrupted", "pending") for t in outcome.trials)
    outcome.best = best_trial(outcome.trials, spec.metric, spec.mode)
    if outcome.best is not None:
        outcome.train_command = train_command(join(spec.path, BASE_CONFIG_FILE), outcome.best.params)
    return outcome


def best_trial(trials: Sequence[TrialSummary], metric: str, mode: str) -> TrialSummary | None:
    """Best last-reported metric among completed trials; trials stopped early only if none completed."""
    for pool in (("completed",), ("completed", "stopped_early")):
        scored = [t for t in trials if t.status in pool and metric in t.metrics]
        if scored:
            key = (lambda t: t.metrics[metric]) if mode == "min" else (lambda t: -t.metrics[metric])
            return min(scored, key=key)
    return None


def train_command(base_yaml: str, params: Mapping[str, Any]) -> str:
    """``simclr train --config <sweep>/base_config.yaml --set k=v ...``: the best trial, reproducible."""
    parts = ["simclr", "train", "--config", base_yaml]
    for key, value in params.items():
        shown = json.dumps(value) if isinstance(value, list) else (repr(value) if isinstance(value, float) else value)
        parts += ["--set", f"{key}={shown}"]
    return " ".join(shlex.quote(p) for p in parts)


def results_rows(outcome: SweepOutcome, keys: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for t in outcome.trials:
        row: dict[str, Any] = {"trial_id": t.trial_id, "run_name": t.run_name, "status": t.status}
        row.update({k: t.params.get(k, "") for k in keys})
        for m in dict.fromkeys([outcome.metric, "loss", "knn_top1", "epoch"]):
            row[m] = t.metrics.get(m, "")
        row.update({"run_id": t.run_id, "error": t.error})
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "(no trials)\n"
    cols = list(rows[0])

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "/")

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def report_parent(client: Any, spec: SweepSpec, outcome: SweepOutcome) -> None:
    """Best trial (tags + metric), the results table (CSV, markdown) and metric-vs-parameter plots."""
    keys = list(spec.search)
    rows = results_rows(outcome, keys)
    run_id = spec.parent_run_id
    counts: dict[str, int] = {}
    for t in outcome.trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    for status, n in counts.items():
        client.log_metric(run_id, f"trials_{status}", n)
    best = outcome.best
    if best is not None:
        tags = {BEST_TRIAL_TAG: best.run_name, "best.trial_id": best.trial_id, "best.run_id": best.run_id,
                "best.train_command": outcome.train_command}
        tags.update({f"best.{k}": json.dumps(v) if isinstance(v, list) else str(v) for k, v in best.params.items()})
        tracking.set_tags(client, run_id, tags)
        client.log_metric(run_id, f"best_{spec.metric}", best.metrics[spec.metric])
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = os.path.join(tmp, "results.csv")
        with open(csv_path, "w", newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        md_path = os.path.join(tmp, "results.md")
        with open(md_path, "w") as f:
            f.write(f"# Sweep {spec.name}: {spec.metric} ({spec.mode})\n\n" + markdown_table(rows))
        client.log_artifact(run_id, csv_path)
        client.log_artifact(run_id, md_path)
        dims = spec.dims
        scored = [t for t in outcome.trials if spec.metric in t.metrics]
        for key in keys:
            pts = [(t.params[key], t.metrics[spec.metric]) for t in scored
                   if isinstance(t.params.get(key), int | float) and not isinstance(t.params.get(key), bool)]
            if not pts or not dims[key].numeric:
                continue
            png = os.path.join(tmp, f"{spec.metric}_vs_{key}.png")
            plots.metric_vs_param([p[0] for p in pts], [p[1] for p in pts], key, spec.metric, png,
                                  log_x=dims[key].kind == "loguniform")
            client.log_artifact(run_id, png, "plots")



def register_best(client: Any, spec: SweepSpec, outcome: SweepOutcome) -> None:
    """``tracking.register``: the best trial's encoder as a new version of that registered model, tagged on
    the parent and on the trial's run. A best trial that ASHA stopped before its last epoch logged no
    encoder: said in ``outcome.notes``, not an error (``train it:`` trains it to the end)."""
    wanted = spec.base.get("tracking", {})
    name, best = str(wanted.get("register", "")), outcome.best
    if not name or best is None:
        return
    model_uri = record.logged_encoder(client, best.run_id)
    if not model_uri:
        outcome.notes.append(f"the best trial {best.run_name} stopped before its last epoch and logged no encoder: "
                             f"nothing registered as {name}; train it to the end with the command above")
        return
    outcome.registered = record.register_encoder(client, best.run_id, model_uri, name,
                                                 str(wanted.get("register_alias", "candidate")))
    tracking.set_tags(client, spec.parent_run_id, {REGISTERED_TAG: outcome.registered})
