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
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import secrets
import shlex
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs
import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from orchestrator import console, tracking
from orchestrator.errors import UserError
from orchestrator.interrupt import sigterm_as_sigint
from orchestrator.tracking import plots
from orchestrator.tracking.tags import BEST_TRIAL_TAG, KIND_TAG, RUN_NAME_TAG, STOPPED_EARLY_TAG, SWEEP_TAG, TRIAL_TAG
from orchestrator.train.driver import failure_message, quiet_ray_data, storage_path, train
from orchestrator.train.session import RayOptions, ray_session, start_local_ray
from orchestrator.tune import progress
from workloads.config import Config, ConfigError, DataConfig, TrainConfig
from workloads.methods import method

SPEC_FILE = "simclr_sweep.json"  # in the Tune experiment folder: what --resume needs to rebuild the trainable
BASE_CONFIG_FILE = "base_config.yaml"  # beside it: the config every trial starts from, for `simclr train --config`
TRIAL_CPU = 0.1  # the function trainable's own reservation (Tune refuses 0)
MIN_CPUS_PER_WORKER = 0.1
# Fields the sweep owns or needs fixed across trials (resources, ASHA's max_t, where runs go).
FIXED_KEYS = ("train.name", "train.storage_path", "train.workers", "train.cpus_per_worker", "train.use_gpu",
              "train.epochs", "tracking.uri", "tracking.experiment")
KINDS = ("uniform", "loguniform", "randint", "choice", "grid")
_EXPR = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.DOTALL)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


# --- search space -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One searched field: ``loss.temperature=loguniform(0.05,1.0)``."""

    key: str
    kind: str  # one of KINDS
    args: tuple[Any, ...]

    @property
    def expr(self) -> str:
        return f"{self.kind}({', '.join(_show(a) for a in self.args)})"

    def domain(self) -> Any:
        """The Tune search domain."""
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "randint":
            return tune.randint(*self.args)
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return tune.grid_search(list(self.args))

    def probes(self) -> list[Any]:
        """Values that must all pass ``Config`` validation: the bounds, or every listed value."""
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return list(self.args)

    @property
    def numeric(self) -> bool:
        return all(isinstance(a, int | float) and not isinstance(a, bool) for a in self.args)


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | str) else repr(value)


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; a numeric-looking string becomes a number."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return value


def parse_dimension(key: str, expr: str, flag: str = "--search") -> Dimension:
    """``("loss.temperature", "loguniform(0.05,1.0)")`` -> a Dimension; malformed input is a ConfigError."""
    where = f"{flag} {key}={expr}"
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"{where}: expected section.field=kind(values), e.g. {flag} loss.temperature=grid(0.1,0.5)")
    m = _EXPR.match(str(expr))
    if not m or m.group(1) not in KINDS:
        raise ConfigError(f"{where}: expected one of {', '.join(k + '(...)' for k in KINDS)}, "
                          f"e.g. loguniform(0.05,1.0) or grid(0.1,0.2,0.5)")
    kind, inner = m.group(1), m.group(2)
    try:
        raw = yaml.safe_load(f"[{inner}]")
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: cannot read the values ({str(err).splitlines()[0]})") from err
    args = tuple(_number(v) for v in raw)
    if not args:
        raise ConfigError(f"{where}: no values given")
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}: {kind} takes two numbers, low and high")
        low, high = args
        if not low < high:
            raise ConfigError(f"{where}: low must be below high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0")
        if kind == "randint":
            if not all(float(a).is_integer() for a in args):
                raise ConfigError(f"{where}: randint takes two integers (low inclusive, high exclusive)")
            args = (int(low), int(high))
        else:
            args = (float(low), float(high))
    return Dimension(key, kind, args)


def parse_search(texts: Sequence[str], flag: str = "--search") -> dict[str, Dimension]:
    """``["loss.temperature=loguniform(0.05,1.0)", ...]`` -> {key: Dimension}; a later key wins."""
    dims: dict[str, Dimension] = {}
    for text in texts:
        key, sep, expr = text.partition("=")
        if not sep:
            raise ConfigError(f"{flag} {text!r}: expected section.field=kind(values), "
                              f"e.g. {flag} loss.temperature=loguniform(0.05,1.0)")
        dims[key.strip()] = parse_dimension(key, expr, flag)
    return dims


def search_from_yaml(section: Any) -> list[str]:
    """The config file's ``search:`` section (``{loss.temperature: "grid(0.1,0.5)"}`` or nested) as texts."""
    if section is None:
        return []
    if not isinstance(section, dict):
        raise ConfigError("--config search: expected a mapping of section.field: kind(values)")
    texts: list[str] = []
    for key, value in section.items():
        if isinstance(value, dict):  # nested: {loss: {temperature: "..."}}
            texts.extend(f"{key}.{k}={v}" for k, v in value.items())
        else:
            texts.append(f"{key}={value}")
    return texts


def validate_space(cfg: Config, dims: Mapping[str, Dimension], search_alg: str) -> None:
    """Every key is a Config field the sweep may vary and every probe value passes Config's checks."""
    flat = cfg.to_flat_dict()
    for key, dim in dims.items():
        if key in FIXED_KEYS:
            raise ConfigError(f"--search {key}: fixed for the whole sweep (resources, ASHA's max_t and where runs "
                              f"go); set it with --set {key}=... instead")
        if key not in flat:
            try:  # let Config name the known keys
                cfg.replace({key: dim.probes()[0]})
            except ConfigError as err:
                raise ConfigError(f"--search {key}: {err}") from err
            raise ConfigError(f"--search {key}: not a config field")
        for value in dim.probes():
            try:
                cfg.replace({key: value})
            except ConfigError as err:
                raise ConfigError(f"--search {key}={dim.expr}: {err}") from err
        if search_alg == "optuna" and dim.kind == "grid":
            raise ConfigError(f"--search {key}={dim.expr}: --search-alg optuna does not take grid(...); "
                              f"use choice(...)")
        if search_alg == "grid" and dim.kind not in ("grid", "choice"):
            raise ConfigError(f"--search {key}={dim.expr}: --search-alg grid needs grid(...) or choice(...) "
                              f"values; use --search-alg random to sample {dim.kind}")


def param_space(dims: Mapping[str, Dimension], search_alg: str) -> dict[str, Any]:
    if search_alg == "grid":  # every listed value, choice(...) included
        return {k: tune.grid_search(list(d.args)) for k, d in dims.items()}
    return {k: d.domain() for k, d in dims.items()}


def data_has_labels(data: DataConfig) -> bool:
    """Whether runs report ``knn_top1``: labelled data with a held-out split (own test split or holdout)."""
    if data.source in ("cifar10", "cifar100", "mnist", "fashion_mnist"):
        return True
    if data.source == "stl10":
        return data.split != "unlabeled"
    if data.source in ("digits", "synthetic", "imagefolder"):
        return data.holdout_fraction > 0
    if data.source == "parquet":
        return bool(data.label_column) and data.holdout_fraction > 0
    return False


# --- resources ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialResources:
    """What every trial reserves and how many trials run at once."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    max_concurrent: int

    @property
    def cpus_per_trial(self) -> float:
        return TRIAL_CPU + self.workers * self.cpus_per_worker


def data_reserve(cpus: float) -> float:
    """CPUs kept free for Ray Data's tasks: the rule of ``orchestrator.train.cpus_per_worker``."""
    return min(max(1.0, 0.25 * cpus), cpus / 2)


def plan_resources(train_cfg: TrainConfig, cpus: float, gpus: float, max_concurrent: int = 0,
                   largest_node_cpus: float = 0.0) -> TrialResources:
    """Resources per trial and the number of concurrent trials, or a UserError if trials cannot fit.

    Tune only sees each trainable's 0.1 CPU, so without this limit it would start trials whose
    TorchTrainers then wait for CPUs forever (ray 38505). By default a worker gets at least one CPU and
    trials run side by side only when that still holds; ``max_concurrent`` trades CPUs per worker for
    more trials at once.
    """
    w = train_cfg.workers
    reserve = data_reserve(cpus)
    budget = cpus - reserve  # for trainables and train workers, all trials together
    gpu_fit = 0
    if train_cfg.use_gpu:
        gpu_fit = int(gpus // w)
        if gpu_fit < 1:
            raise UserError(f"train.workers={w} with --use-gpu needs {w} GPUs per trial; the cluster has {gpus:g}")
    if max_concurrent < 0:
        raise UserError(f"--max-concurrent must be >= 1 (0 derives it); got {max_concurrent}")
    if train_cfg.cpus_per_worker:
        cpw = train_cfg.cpus_per_worker
        fit = int(budget / (TRIAL_CPU + w * cpw) + 1e-9)
        if gpu_fit:
            fit = min(fit, gpu_fit)
        k = max_concurrent or fit
        if fit < 1 or k > fit:
            raise UserError(
                f"{max(k, 1)} trial(s) at once x ({w} worker(s) x {cpw:g} CPU + {TRIAL_CPU:g}) need "
                f"{max(k, 1) * (TRIAL_CPU + w * cpw):g} CPUs, but {budget:g} of the cluster's {cpus:g} are left after "
                f"keeping {reserve:g} for Ray Data; lower --max-concurrent, train.workers or train.cpus_per_worker")
    else:
        k = max_concurrent or max(1, int(budget / (TRIAL_CPU + w * 1.0) + 1e-9))
        if gpu_fit:
            if max_concurrent and k > gpu_fit:
                raise UserError(f"--max-concurrent {k}: each trial needs {w} GPUs and the cluster has {gpus:g}; "
                                f"at most {gpu_fit} trial(s) fit")
            k = min(k, gpu_fit)
        cpw = (budget / k - TRIAL_CPU) / w
        if train_cfg.use_gpu:
            cpw = min(cpw, 8.0)
        if cpw < MIN_CPUS_PER_WORKER:
            raise UserError(
                f"--max-concurrent {k}: {k} trial(s) x {w} worker(s) leave {max(cpw, 0):.2g} CPU per worker of the "
                f"{budget:g} CPUs not kept for Ray Data (cluster: {cpus:g}); lower --max-concurrent or train.workers")
        cpw = math.floor(cpw * 100) / 100  # whole hundredths: no float dust in Ray's resource requests
    if largest_node_cpus and cpw > largest_node_cpus + 1e-9:
        raise UserError(f"train.cpus_per_worker={cpw:g} is more than the largest node's {largest_node_cpus:g} CPUs; "
                        f"lower it (0 derives it)")
    return TrialResources(w, cpw, 1.0 if train_cfg.use_gpu else 0.0, k)


# --- the sweep's persistent description -----------------------------------------------------------------


@dataclass
class SweepSpec:
    """Everything needed to start, resume and report a sweep; saved as JSON in its Tune folder."""

    name: str
    storage: str  # storage root; the Tune experiment is <storage>/<name>
    base: dict[str, Any]  # the trials' base Config (absolute paths, derived cpus_per_worker)
    user_base: dict[str, Any]  # the config as the user gave it (for the printed train command)
    search: dict[str, str]  # key -> expression
    search_alg: str
    scheduler: str
    num_samples: int
    metric: str
    mode: str
    grace_period: int
    reduction_factor: float
    resources: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str = ""

    @property
    def path(self) -> str:
        return join(self.storage, self.name)

    @property
    def trials_storage(self) -> str:
        return join(self.path, "trials")

    @property
    def dims(self) -> dict[str, Dimension]:
        return {k: parse_dimension(k, v) for k, v in self.search.items()}

    @property
    def epochs(self) -> int:
        return int(self.base["train"]["epochs"])


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if "://" in base else os.path.join(base, *parts)


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(path if "://" in path else "file://" + os.path.abspath(path))


def save_spec(spec: SweepSpec) -> None:
    """The spec (for --resume) and the user's base config (for the printed train command)."""
    fs, base = _fs(spec.path)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base}/{SPEC_FILE}") as f:
        f.write(json.dumps(asdict(spec), indent=1, sort_keys=True).encode())
    with fs.open_output_stream(f"{base}/{BASE_CONFIG_FILE}") as f:
        f.write(yaml.safe_dump(spec.user_base, sort_keys=False).encode())


def load_spec(path: str) -> SweepSpec | None:
    fs, base = _fs(path)
    if fs.get_file_info(f"{base}/{SPEC_FILE}").type != pafs.FileType.File:
        return None
    with fs.open_input_stream(f"{base}/{SPEC_FILE}") as f:
        return SweepSpec(**json.loads(f.read().decode()))


# --- the trainable ----------------------------------------------------------------------------------------


def trial_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def _plain(value: Any) -> Any:
    """numpy scalars from Tune's samplers -> Python (Config takes int, float, str, bool, lists)."""
    if hasattr(value, "item") and not isinstance(value, list | tuple | dict):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def simclr_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """One Tune trial: the sweep's base config with this trial's values, trained by ``train()``.

    Runs in the trial's actor: Ray is already up, so ``train()`` uses it; the TorchTrainer's per-epoch
    reports reach Tune through ``TuneReportCallback``.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    values = {k: _plain(v) for k, v in config.items()}
    cfg = Config.from_dict(spec["base"]).replace(
        {**values, "train.name": trial_run_name(spec["name"], trial_id), "train.storage_path": spec["trials_storage"]})
    if spec.get("quiet"):  # no Ray Data progress bars: their last lines would reach the terminal at exit
        quiet_ray_data()
    train(cfg, parent_run_id=spec["parent_run_id"], callbacks=[TuneReportCallback()])


def make_trainable(spec: SweepSpec, quiet: bool = False) -> Any:
    """The same trainable for a new sweep and for ``Tuner.restore`` (its name must match)."""
    payload = {"name": spec.name, "base": spec.base, "parent_run_id": spec.parent_run_id,
               "trials_storage": spec.trials_storage, "quiet": quiet}
    return tune.with_resources(tune.with_parameters(simclr_trial, spec=payload), {"cpu": TRIAL_CPU})


class LastEpochASHA(ASHAScheduler):
    """ASHA on epochs that never stops a trial at its last epoch.

    Ray's ASHA stops every trial that reaches ``max_t``; here that would kill the trial while
    ``train()`` writes its final artifacts and ends its run, so a trial at its last epoch goes on and
    ends by itself.
    """

    def __init__(self, max_t: int, grace_period: int, reduction_factor: float) -> None:
        super().__init__(time_attr="epoch", max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, stop_last_trials=False)
        self.last_epoch = max_t

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if result.get("epoch", 0) >= self.last_epoch:
            return TrialScheduler.CONTINUE
        action: str = super().on_trial_result(tune_controller, trial, result)
        return action


def _trial_dirname(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


def build_scheduler(spec: SweepSpec) -> TrialScheduler:
    if spec.scheduler == "asha":
        return LastEpochASHA(spec.epochs, spec.grace_period, spec.reduction_factor)
    return FIFOScheduler()


def build_search_alg(spec: SweepSpec) -> Any:
    """Seeded by ``train.seed`` (the same sweep samples the same values) and limited to the planned
    number of concurrent trials: Tune sees only each trainable's 0.1 CPU and would start them all."""
    seed = int(spec.base["train"]["seed"])
    limit = int(spec.resources.get("max_concurrent", 0))
    if spec.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=limit) if limit else OptunaSearch(seed=seed)
    return BasicVariantGenerator(max_concurrent=limit, random_state=seed)  # random samples, grid values crossed


# --- outcome ------------------------------------------------------------------------------------------


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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.best is not None:
            data["best"] = {"trial_id": self.best.trial_id, "run_name": self.best.run_name,
                            "run_id": self.best.run_id, "params": self.best.params,
                            "metric": self.best.metrics.get(self.metric)}
        return data


# --- the driver ---------------------------------------------------------------------------------------


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


def generated_name(cfg: Config) -> str:
    return f"tune-{cfg.method}-{cfg.data.source}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _absolute(cfg: Config) -> Config:
    """Tune runs each trial in its own working directory: every local path must be absolute."""
    over: dict[str, Any] = {"train.storage_path": storage_path(cfg),
                            "tracking.uri": tracking.resolve_uri(cfg.tracking.uri)}
    for key in ("data.root", "data.uri"):
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and "://" not in value:
            over[key] = os.path.abspath(value)
    return cfg.replace(over)


def metric_and_mode(cfg: Config, opts: TuneOptions) -> tuple[str, str]:
    """``--metric``/``--mode``, else knn_top1 (max) when runs evaluate on labels, else loss (min)."""
    metric = opts.metric or ("knn_top1" if data_has_labels(cfg.data) else "loss")
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
    if metric in ("knn_top1", "linear_probe_top1") and not data_has_labels(cfg.data):
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


def start_ray_for_tune(num_cpus: int = 0, object_store_mb: int = 0) -> None:
    """A local Ray with its dashboard, which Train V2's placement-group cleanup needs (see start_local_ray)."""
    start_local_ray(num_cpus, object_store_mb, dashboard=True)


def tune_session(opts: RayOptions) -> AbstractContextManager[None]:
    return ray_session(opts, dashboard=True)


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


def _cluster_plan(train_cfg: TrainConfig, max_concurrent: int) -> TrialResources:
    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((float(n.get("Resources", {}).get("CPU", 0.0)) for n in nodes), default=0.0)
    return plan_resources(train_cfg, float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0)), max_concurrent, largest)


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
    with console.capture(progress.log_path(storage, name), verbose=not quiet), tune_session(ray_opts or RayOptions()):
        sigterm_as_sigint()  # SIGTERM: Tune's graceful Ctrl-C stop
        _check_dashboard(opts.scheduler)
        plan = _cluster_plan(cfg.train, opts.max_concurrent)
        base = user_base.replace({"train.cpus_per_worker": plan.cpus_per_worker,
                                  "train.storage_path": join(path, "trials")})
        spec = SweepSpec(
            name=name, storage=storage, base=base.to_dict(), user_base=user_base.to_dict(),
            search={k: d.expr for k, d in dims.items()}, search_alg=opts.search_alg, scheduler=opts.scheduler,
            num_samples=opts.num_samples, metric=metric, mode=mode, grace_period=opts.grace_period,
            reduction_factor=opts.reduction_factor, resources=asdict(plan), tracking_uri=uri, experiment_id=exp_id)
        spec.parent_run_id = _start_parent(client, spec)
        console.current().say(progress.header(spec))

        def new_tuner() -> tune.Tuner:
            save_spec(spec)
            return tune.Tuner(
                make_trainable(spec, quiet),
                param_space=param_space(dims, opts.search_alg),
                tune_config=tune.TuneConfig(
                    metric=metric, mode=mode, num_samples=opts.num_samples, scheduler=build_scheduler(spec),
                    search_alg=build_search_alg(spec), trial_dirname_creator=_trial_dirname),
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
    with console.capture(progress.log_path(storage, name), verbose=not quiet), tune_session(ray_opts or RayOptions()):
        sigterm_as_sigint()
        _check_dashboard(spec.scheduler)
        # The trials keep their planned CPUs (in the base config): refuse up front if they no longer fit.
        _cluster_plan(Config.from_dict(spec.base).train, int(spec.resources["max_concurrent"]))
        tracking.reopen_run(client, spec.parent_run_id)
        console.current().say("resuming " + progress.header(spec))

        def restored_tuner() -> tune.Tuner:
            _end_orphans(client, spec, "KILLED", "the sweep's driver stopped before this trial ended")
            return tune.Tuner.restore(path, trainable=make_trainable(spec, quiet), resume_unfinished=True,
                                      restart_errored=True)

        try:
            return _fit_and_report(restored_tuner, spec, client)
        finally:
            progress.log_to_parent(client, spec)


def _start_parent(client: Any, spec: SweepSpec) -> str:
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


def _fit_and_report(make_tuner: Callable[[], tune.Tuner], spec: SweepSpec, client: Any) -> SweepOutcome:
    """Build and run the Tuner (the parent run is open); whatever happens, leave no run RUNNING."""
    try:
        make_tuner().fit()
        trials = _load_trials(spec)
        outcome = _summarise(spec, trials)
        _fix_child_runs(client, spec, outcome)
        _report_parent(client, spec, outcome)
    except KeyboardInterrupt:
        _end_orphans(client, spec, "KILLED", "sweep interrupted (Ctrl-C)")
        tracking.end_run(client, spec.parent_run_id, "KILLED", "interrupted (Ctrl-C)")
        raise
    except BaseException as err:
        _end_orphans(client, spec, "KILLED", "the sweep's driver failed")
        tracking.end_run(client, spec.parent_run_id, "FAILED", failure_message(err))
        raise
    if outcome.interrupted:
        tracking.end_run(client, spec.parent_run_id, "KILLED",
                         f"interrupted; resume with simclr tune --resume {spec.name}")
    elif outcome.best is None:
        tracking.end_run(client, spec.parent_run_id, "FAILED",
                         f"no trial reported {spec.metric}: {_first_error(outcome)}")
    else:
        tracking.end_run(client, spec.parent_run_id, "FINISHED")
    return outcome


def _first_error(outcome: SweepOutcome) -> str:
    return next((t.error for t in outcome.trials if t.error), "no trial ran")


def _load_trials(spec: SweepSpec) -> list[Any]:
    return list(tune.ExperimentAnalysis(spec.path).trials)


def _trial_error(trial: Any) -> str:
    try:
        err = trial.get_error()
    except Exception:  # the error file is gone or unreadable
        err = None
    return failure_message(err) if err is not None else "trial failed"


def _summarise(spec: SweepSpec, trials: Sequence[Any]) -> SweepOutcome:
    outcome = SweepOutcome(spec.name, spec.parent_run_id, spec.tracking_uri, spec.experiment_id, spec.metric,
                           spec.mode, spec.path)
    for trial in trials:
        last = trial.last_result or {}
        metrics = {k: float(v) for k, v in last.items()
                   if k in ("epoch", "loss", "knn_top1", "linear_probe_top1", "images_per_s", spec.metric)
                   and isinstance(v, int | float)}
        params = {k: _plain(trial.config[k]) for k in spec.search if k in trial.config}
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


# --- MLflow: children, parent -----------------------------------------------------------------------------


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


def _end_orphans(client: Any, spec: SweepSpec, status: str, reason: str) -> None:
    """End every child run still RUNNING (its trial process is gone)."""
    for run in child_runs(client, spec):
        if run.info.status == "RUNNING":
            tracking.end_run(client, run.info.run_id, status, reason)


def _fix_child_runs(client: Any, spec: SweepSpec, outcome: SweepOutcome) -> None:
    """Match trials to child runs by name; end the ones Tune's kill left RUNNING; tag stopped trials."""
    by_name: dict[str, list[Any]] = {}
    for run in child_runs(client, spec):
        by_name.setdefault(run.data.tags.get(RUN_NAME_TAG, run.info.run_name), []).append(run)
    for trial in outcome.trials:
        runs = sorted(by_name.pop(trial.run_name, []), key=lambda r: r.info.start_time)
        if not runs:
            continue
        trial.run_id = runs[-1].info.run_id
        for run in runs:
            run_id = run.info.run_id
            tags = {TRIAL_TAG: trial.trial_id, SWEEP_TAG: spec.name}
            if run is runs[-1] and trial.status == "stopped_early":
                tags[STOPPED_EARLY_TAG] = "true"
            tracking.set_tags(client, run_id, tags)
            if run.info.status != "RUNNING":
                continue
            if trial.status == "failed":
                tracking.end_run(client, run_id, "FAILED", trial.error)
            elif trial.status == "interrupted":
                tracking.end_run(client, run_id, "KILLED",
                                 f"sweep interrupted; resume with simclr tune --resume {spec.name}")
            else:  # completed or stopped early by the scheduler: the run did what it was asked
                tracking.end_run(client, run_id, "FINISHED")
    for runs in by_name.values():  # runs of no known trial: never leave them RUNNING
        for run in runs:
            if run.info.status == "RUNNING":
                tracking.end_run(client, run.info.run_id, "KILLED", "no Tune trial matches this run")


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


def _report_parent(client: Any, spec: SweepSpec, outcome: SweepOutcome) -> None:
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
