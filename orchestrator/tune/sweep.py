"""The driver of ``simclr tune``: a Ray Tune search whose every trial is one ``simclr train`` run.

Train V2 refuses ``Tuner(TorchTrainer)``, so each trial is a Tune *function trainable* that builds the
trial's Config (the sweep's base config + its sampled dotted values) and calls ``train()``, whose
TorchTrainer reports every epoch to Tune through ``TuneReportCallback``. The trainable itself asks for
0.1 CPU; the trial's real resources are its TorchTrainer's workers, so the number of concurrent trials
is set here from the cluster's CPUs (keeping CPUs for Ray Data, as ``train.cpus_per_worker`` does), and
a sweep whose trials cannot fit is refused before anything starts.

MLflow: the sweep is a parent run; each trial is a child run (it *is* a ``simclr train`` run, named
``<sweep>-<trial_id>``). A trial that ASHA stops is killed by Tune mid-epoch, so after ``fit()`` the
driver matches trials to child runs by name and ends any run left RUNNING: FINISHED with
``simclr.stopped_early=true``, FAILED with the error, or KILLED when the sweep was interrupted. The
parent always ends FINISHED, FAILED or KILLED. ``--resume NAME`` restores the Tune experiment from
``<storage>/<NAME>`` and reuses the parent run.

This module is the driver (options, checks, start and resume); the rest of the sweep is split by concern:
space.py (``--search`` parsing and checks), resources.py (trials per cluster), spec.py (the saved sweep),
trial.py (the trainable, ASHA, the search algorithm), report.py (outcome and parent-run report), runs.py
(MLflow parent and child runs).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ray import tune

from orchestrator import console, tracking
from orchestrator.data.catalog import evaluates_on_labels
from orchestrator.errors import UserError
from orchestrator.interrupt import sigterm_as_sigint
from orchestrator.storage import absolute, join
from orchestrator.train.run import failure_message, storage_path
from orchestrator.train.session import RayOptions, ray_session
from orchestrator.tune import progress
from orchestrator.tune.report import SweepOutcome, first_error, load_trials, register_best, report_parent, summarise
from orchestrator.tune.resources import cluster_plan
from orchestrator.tune.runs import end_orphans, fix_child_runs, start_parent
from orchestrator.tune.space import Dimension, param_space, parse_search, validate_space
from orchestrator.tune.spec import SweepSpec, load_spec, save_spec
from orchestrator.tune.trial import (
    build_scheduler,
    build_search_alg,
    make_trainable,
    shared_data,
    simclr_trial,  # noqa: F401 - a saved sweep may name its trainable by this module's path
    trial_dirname,
)
from workloads.config import Config
from workloads.methods import method


@dataclass
class TuneOptions:
    """The sweep's own settings (the trials' training settings are the Config)."""

    search: Sequence[str] = ()  # --search texts; empty -> the method's default space
    num_samples: int = 4
    scheduler: str = "asha"  # asha | none
    search_alg: str = "random"  # random | grid | optuna
    metric: str = ""  # "" -> knn_top1 (max) with labels, else loss (min)
    mode: str = ""
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_concurrent: int = 0  # 0 -> derived from the cluster
    share_data: bool = True  # the trials share one prepared dataset (when no searched key changes it)


def generated_name(cfg: Config) -> str:
    return f"tune-{cfg.method}-{cfg.data.source}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _absolute(cfg: Config) -> Config:
    """Tune runs each trial in its own working directory: every local path must be absolute."""
    over: dict[str, Any] = {"train.storage_path": storage_path(cfg),
                            "tracking.uri": tracking.resolve_uri(cfg.tracking.uri)}
    for key in ("data.root", "data.uri"):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value:
            over[key] = absolute(value)
    return cfg.replace(over)


def metric_and_mode(cfg: Config, opts: TuneOptions) -> tuple[str, str]:
    """``--metric``/``--mode``, else knn_top1 (max) when runs evaluate on labels, else loss (min)."""
    metric = opts.metric or ("knn_top1" if evaluates_on_labels(cfg.data) else "loss")
    mode = opts.mode or ("max" if metric.endswith(("top1", "acc", "accuracy")) else "min")
    return metric, mode


def prepare_sweep(cfg: Config, opts: TuneOptions, file_search: Sequence[str] = ()) -> dict[str, Dimension]:
    """Validate everything that can be checked without Ray: options, search space, metric."""
    if opts.scheduler not in ("asha", "none"):
        raise UserError(f"--scheduler must be asha or none; got {opts.scheduler!r}")
    if opts.search_alg not in ("random", "grid", "optuna"):
        raise UserError(f"--search-alg must be random, grid or optuna; got {opts.search_alg!r}")
    if opts.search_alg == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError as err:
            raise UserError("--search-alg optuna: optuna is not installed (pip install optuna)") from err
    if opts.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1; got {opts.num_samples}")
    if opts.mode not in ("", "min", "max"):
        raise UserError(f"--mode must be min or max; got {opts.mode!r}")
    if opts.scheduler == "asha":
        if opts.grace_period < 1 or opts.grace_period >= cfg.train.epochs:
            raise UserError(f"--grace-period must be in [1, train.epochs); got {opts.grace_period} with "
                            f"train.epochs={cfg.train.epochs}")
        if opts.reduction_factor <= 1:
            raise UserError(f"--reduction-factor must be > 1; got {opts.reduction_factor:g}")
    metric, _ = metric_and_mode(cfg, opts)
    if metric in ("knn_top1", "linear_probe_top1") and not evaluates_on_labels(cfg.data):
        raise UserError(f"--metric {metric}: data.source={cfg.data.source} gives no held-out labels here; "
                        f"use --metric loss")
    if metric == "knn_top1" and cfg.eval.every_epochs != 1:
        raise UserError(f"--metric knn_top1 must be reported every epoch (Tune and ASHA read it each epoch); "
                        f"set eval.every_epochs=1 (now {cfg.eval.every_epochs}) or use --metric loss")
    if metric == "linear_probe_top1" and opts.scheduler == "asha":
        raise UserError("--metric linear_probe_top1 exists only after the last epoch; ASHA needs a metric every "
                        "epoch: use --scheduler none or --metric knn_top1")
    texts = list(file_search) + list(opts.search)
    dims = parse_search(texts or method(cfg.method).search)
    validate_space(cfg, dims, opts.search_alg)
    return dims


def _check_dashboard(scheduler: str) -> None:
    if scheduler == "none":
        return
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
    except Exception:  # private API moved: do not block the sweep on the check itself
        return
    if not url:
        raise UserError("--scheduler asha needs Ray's dashboard (it cleans up the placement groups of stopped "
                        "trials); start Ray with the dashboard (ray[default]) or use --scheduler none")


def run_sweep(cfg: Config, opts: TuneOptions, ray_opts: RayOptions | None = None,
              file_search: Sequence[str] = (), quiet: bool = False) -> SweepOutcome:
    """Start a new sweep (validated up front), run it to the end and return its outcome.
    ``quiet``: Ray's output goes to the sweep's log file, the terminal shows orchestrator/tune/progress.py's lines."""
    dims = prepare_sweep(cfg, opts, file_search)
    name = cfg.train.name or generated_name(cfg)
    user_base = _absolute(cfg.replace({"train.name": ""}))
    storage = user_base.train.storage_path
    path = join(storage, name)
    if tune.Tuner.can_restore(path) or load_spec(path) is not None:
        raise UserError(f"--name: sweep {name!r} already exists in {storage}; resume it with --resume {name} "
                        f"or choose another name")
    metric, mode = metric_and_mode(cfg, opts)
    uri = user_base.tracking.uri
    client = tracking.client_for(uri)
    exp_id = tracking.experiment_id(client, cfg.tracking.experiment, uri)
    with console.capture(progress.log_path(storage, name), verbose=not quiet), ray_session(ray_opts or RayOptions()):
        sigterm_as_sigint()  # SIGTERM: Tune's graceful Ctrl-C stop
        _check_dashboard(opts.scheduler)
        plan = cluster_plan(cfg.train, opts.max_concurrent)
        base = user_base.replace({"train.cpus_per_worker": plan.cpus_per_worker,
                                  "train.storage_path": join(path, "trials")})
        spec = SweepSpec(
            name=name, storage=storage, base=base.to_dict(), user_base=user_base.to_dict(),
            search={k: d.expr for k, d in dims.items()}, search_alg=opts.search_alg, scheduler=opts.scheduler,
            num_samples=opts.num_samples, metric=metric, mode=mode, grace_period=opts.grace_period,
            reduction_factor=opts.reduction_factor, resources=asdict(plan), tracking_uri=uri, experiment_id=exp_id,
            share_data=opts.share_data)
        spec.parent_run_id = start_parent(client, spec)
        console.current().say(progress.header(spec))

        def new_tuner() -> tune.Tuner:
            save_spec(spec)
            return tune.Tuner(
                make_trainable(spec, quiet, shared_data(spec, client, quiet)),
                param_space=param_space(dims, opts.search_alg),
                tune_config=tune.TuneConfig(
                    metric=metric, mode=mode, num_samples=opts.num_samples, scheduler=build_scheduler(spec),
                    search_alg=build_search_alg(spec), trial_dirname_creator=trial_dirname),
                run_config=tune.RunConfig(name=name, storage_path=storage,
                                          failure_config=tune.FailureConfig(max_failures=0),
                                          callbacks=[progress.TrialLines(name, spec.epochs, list(dims), metric)]),
            )

        try:
            return _fit_and_report(new_tuner, spec, client)
        finally:
            progress.log_to_parent(client, spec)


def resume_sweep(name: str, storage: str, ray_opts: RayOptions | None = None, quiet: bool = False) -> SweepOutcome:
    """Go on with an interrupted sweep: unfinished and errored trials run again, into the same MLflow runs."""
    path = join(storage, name)
    spec = load_spec(path)
    if spec is None or not tune.Tuner.can_restore(path):
        raise UserError(f"--resume {name}: no sweep to resume in {path} (set train.storage_path to the sweep's "
                        f"storage folder)")
    client = tracking.client_for(spec.tracking_uri)
    with console.capture(progress.log_path(storage, name), verbose=not quiet), ray_session(ray_opts or RayOptions()):
        sigterm_as_sigint()
        _check_dashboard(spec.scheduler)
        # The trials keep their planned CPUs (in the base config): refuse up front if they no longer fit.
        cluster_plan(Config.from_saved(spec.base).train, int(spec.resources["max_concurrent"]))
        tracking.reopen_run(client, spec.parent_run_id)
        console.current().say("resuming " + progress.header(spec))

        def restored_tuner() -> tune.Tuner:
            end_orphans(client, spec, "KILLED", "the sweep's driver stopped before this trial ended")
            return tune.Tuner.restore(path, trainable=make_trainable(spec, quiet, shared_data(spec, client, quiet)),
                                      resume_unfinished=True,
                                      restart_errored=True)

        try:
            return _fit_and_report(restored_tuner, spec, client)
        finally:
            progress.log_to_parent(client, spec)


def _fit_and_report(make_tuner: Callable[[], tune.Tuner], spec: SweepSpec, client: Any) -> SweepOutcome:
    """Build and run the Tuner (the parent run is open); whatever happens, leave no run RUNNING."""
    try:
        make_tuner().fit()
        trials = load_trials(spec)
        outcome = summarise(spec, trials)
        fix_child_runs(client, spec, outcome)
        report_parent(client, spec, outcome)
        register_best(client, spec, outcome)
    except KeyboardInterrupt:
        end_orphans(client, spec, "KILLED", "sweep interrupted (Ctrl-C)")
        tracking.end_run(client, spec.parent_run_id, "KILLED", "interrupted (Ctrl-C)")
        raise
    except BaseException as err:
        end_orphans(client, spec, "KILLED", "the sweep's driver failed")
        tracking.end_run(client, spec.parent_run_id, "FAILED", failure_message(err))
        raise
    if outcome.interrupted:
        tracking.end_run(client, spec.parent_run_id, "KILLED",
                         f"interrupted; resume with simclr tune --resume {spec.name}")
    elif outcome.best is None:
        tracking.end_run(client, spec.parent_run_id, "FAILED",
                         f"no trial reported {spec.metric}: {first_error(outcome)}")
    else:
        tracking.end_run(client, spec.parent_run_id, "FINISHED")
    return outcome

