"""What ``simclr tune`` shows a person: a header, one line per trial event, then the summary.

Ray's, Ray Tune's and Ray Data's own output (Tune's status tables, progress bars, the trials' worker
logs) goes to the sweep's log file (``orchestrator.console.capture``, as for ``simclr train``); the
lines here come from a Tune ``Callback`` on the driver, which sees every trial start, every epoch a
trial reports (through its TorchTrainer's ``TuneReportCallback``), and every trial's end. The
callback is pickled with the Tuner, so ``--resume`` keeps showing the same lines.
"""

from __future__ import annotations

import math
from typing import Any

from ray import cloudpickle, tune

from orchestrator import console
from orchestrator.secrets import redact
from orchestrator.train.run import failure_message, last_line, log_console_file, run_log_path

SHOWN_METRICS = ("loss", "knn_top1")  # per epoch; the sweep's metric is added when it is another one


def header(spec: Any) -> str:
    """The sweep in four lines: trials and scheduler, the search space, the parent run, the log file."""
    dims = spec.dims
    grid = math.prod(len(d.args) for d in dims.values() if d.kind == "grid" or spec.search_alg == "grid")
    trials = spec.num_samples * grid
    res = spec.resources
    if spec.scheduler == "asha":
        sched = (f"ASHA on {spec.metric} ({spec.mode}, grace {spec.grace_period} epoch(s), "
                 f"reduction factor {spec.reduction_factor:g})")
    else:
        sched = f"no early stopping, best {spec.metric} ({spec.mode})"
    lines = [
        f"sweep {spec.name}: {trials} trial(s) of {spec.epochs} epochs, {spec.search_alg} search, {sched}; "
        f"{res['max_concurrent']} at a time x {res['workers']} worker(s) x {res['cpus_per_worker']:g} CPU",
        "  search: " + ", ".join(f"{k}={v}" for k, v in spec.search.items()),
        f"  MLflow parent run {spec.parent_run_id} at {redact(spec.tracking_uri)}",
    ]
    log = console.current().log_path
    if log:
        lines.append(f"  Ray's output: {log}")
    return "\n".join(lines)


def log_path(storage: str, name: str) -> str:
    """The sweep's console log: ``<storage>/<sweep>/logs/`` when local, else a temporary folder."""
    return run_log_path(storage, name)


def log_to_parent(client: Any, spec: Any) -> None:
    """The console log as ``logs/`` of the sweep's parent run (when the console was captured)."""
    path = console.current().log_path
    if path and spec.parent_run_id:
        log_console_file(client, spec.parent_run_id, path)


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class TrialLines(tune.Callback):
    """One console line per trial event: started, each epoch, finished, stopped by ASHA, failed."""

    def __init__(self, sweep: str, epochs: int, keys: list[str], metric: str) -> None:
        self.sweep = sweep
        self.epochs = epochs
        self.keys = keys
        self.metrics = list(dict.fromkeys([*SHOWN_METRICS, metric]))
        self.stopped: set[str] = set()  # trials the scheduler stopped (their last result says done)

    def _name(self, trial: Any) -> str:
        return f"{self.sweep}-{trial.trial_id}"

    def _values(self, trial: Any) -> str:
        config = trial.config or {}
        return " ".join(f"{k}={_show(_plain(config[k]))}" for k in self.keys if k in config)

    def _epoch(self, result: dict[str, Any]) -> str:
        shown = " ".join(f"{k} {result[k]:.4f}" for k in self.metrics
                         if isinstance(result.get(k), int | float) and not isinstance(result.get(k), bool))
        return f"epoch {int(result.get('epoch', 0))}/{self.epochs}" + (f": {shown}" if shown else "")

    def _say(self, line: str) -> None:
        console.current().say(redact(line))

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._say(f"trial {self._name(trial)} started: {self._values(trial)}")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        if "epoch" not in result:
            return
        self._say(f"trial {self._name(trial)} {self._epoch(result)}  ({self._values(trial)})")
        # Tune marks the result ``done`` before the callbacks when the scheduler decided to stop the trial
        if result.get("done") and int(result["epoch"]) < self.epochs:
            self.stopped.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        epoch = int(last.get("epoch", 0))
        if trial.trial_id in self.stopped:
            what = f"stopped by ASHA after epoch {epoch}/{self.epochs}"
        elif epoch >= self.epochs:
            what = f"finished {self._epoch(last)}"
        else:
            what = f"ended after epoch {epoch}/{self.epochs}"
        self._say(f"trial {self._name(trial)} {what}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._say(f"trial {self._name(trial)} failed: {_error(trial)}")


def _error(trial: Any) -> str:
    """The one line of a failed trial's error. Tune writes the error, pickled and as text, in the
    trial's local folder before the callbacks run (``Trial.get_pickled_error`` reads the storage copy,
    synced later); the text stands in when the error could not be pickled."""
    try:
        with open(trial.pickled_error_file, "rb") as f:
            err = cloudpickle.load(f)
    except Exception:  # not pickled (an error that cannot be), or of a class this process cannot load
        err = None
    if isinstance(err, BaseException):
        return failure_message(err)
    try:
        with open(trial.error_file) as f:
            text = f.read()
    except (OSError, TypeError, AttributeError):  # no local file: the summary has the trial's status and error
        text = ""
    return last_line(text) or "see the sweep's log file"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") and not isinstance(value, list | tuple | dict) else value
