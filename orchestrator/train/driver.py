"""The driver of ``simclr train``: Ray session, data, MLflow run, TorchTrainer, final artifacts.

One try/finally owns the MLflow run: whatever happens after it opens, it ends FINISHED, FAILED (with
the reason as a tag) or KILLED (Ctrl-C), never RUNNING. Re-running with the same ``train.name`` and
``train.storage_path`` resumes from the last checkpoint into the same MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa_lib
import pyarrow.fs as pafs
import ray
import ray.data
import ray.train
import torch
import yaml
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator import console, tracking
from orchestrator.data import sources
from orchestrator.data.prepare import PreparedData, prepare
from orchestrator.data.stream import ROW_ID, EpochClock, first_views, train_stream
from orchestrator.errors import UserError
from orchestrator.interrupt import StopFlag, run_interruptibly
from orchestrator.secrets import redact, redact_values
from orchestrator.tracking import plots
from orchestrator.tracking import record as mlflow_record
from orchestrator.tracking.tags import CHECKPOINT_TAG, COMPLETE_TAG, DATA_PREPARED_BY_TAG
from orchestrator.train.checkpoint import checkpoint_uri, load_state_file, storage_filesystem
from orchestrator.train.job import TrainJob
from orchestrator.train.model import build_model
from orchestrator.train.progress import NonFiniteLossError, check_fatal
from orchestrator.train.session import RayOptions, cpus_per_worker, ray_session
from orchestrator.train.worker import train_loop_per_worker
from workloads.config import Config
from workloads.methods import method


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: the workers saved a checkpoint and stopped; the run can be resumed by name."""


@dataclass
class TrainOutcome:
    run_id: str
    run_name: str
    experiment_id: str
    tracking_uri: str
    checkpoint: str
    complete: bool
    metrics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "tracking_uri": redact(self.tracking_uri)}, sort_keys=True)


def generated_name(cfg: Config) -> str:
    return f"{cfg.method}-{cfg.data.source}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def storage_path(cfg: Config) -> str:
    path = cfg.train.storage_path or "simclr_runs"
    return path if "://" in path else os.path.abspath(path)


def probe_storage(storage: str) -> None:
    """Write and delete a small file where checkpoints go, before Ray starts: a folder that cannot be
    created, a read-only mount, a missing bucket or missing credentials are one line, not a traceback
    from Ray Train's first checkpoint minutes later."""
    probe = f".simclr-write-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fs, base = pafs.FileSystem.from_uri(storage if "://" in storage else "file://" + storage)
        fs.create_dir(base, recursive=True)
        with fs.open_output_stream(f"{base}/{probe}") as f:
            f.write(b"ok")
        fs.delete_file(f"{base}/{probe}")
    except (OSError, ValueError, pa_lib.ArrowException) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"train.storage_path: cannot write to {redact(storage)} ({redact(reason)[:300]}); "
                        f"choose a writable folder or bucket") from err


def run_log_path(storage: str, name: str) -> str:
    """The console log of this invocation: beside the run's checkpoints when they are local, else in a
    temporary folder (either way it is logged to the MLflow run as ``logs/``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = os.path.join(storage, name, "logs") if "://" not in storage else tempfile.mkdtemp(prefix="simclr-log-")
    return os.path.join(folder, f"console-{stamp}.log")


def quiet_ray_data() -> None:
    """No Ray Data progress bars: the driver's DataContext is copied into every dataset made after this,
    and from there into the Train workers' iterators and the split coordinator."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False


def log_console_file(client: Any, run_id: str, log_path: str) -> None:
    if os.path.exists(log_path):
        try:
            sys.stderr.flush()
            client.log_artifact(run_id, log_path, "logs")
        except Exception:  # the tracking server may be away; the file is kept where it is
            pass


def header(cfg: Config, run_id: str, num_train: int, num_classes: int, steps: int, cpw: float,
           resources: dict[str, float]) -> str:
    """What runs where, in two lines."""
    where = os.environ.get("RAY_ADDRESS") or "a local Ray"
    device = "1 GPU" if cfg.train.use_gpu else f"{cpw:.2g} CPU"
    classes = f", {num_classes} classes" if num_classes else ""
    log = console.current().log_path
    return (f"run {cfg.train.name}, {cfg.method} (MLflow run {run_id}) on {where} "
            f"({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs)\n"
            f"  {cfg.train.workers} workers x {device}, {cfg.train.epochs} epochs of {steps} steps; "
            f"data {cfg.data.source}: {num_train} training images{classes}, {cfg.data.image_size} px"
            + (f"\n  Ray's output: {log}" if log else ""))


def has_checkpoint(storage: str, name: str) -> bool:
    fs, base = pafs.FileSystem.from_uri(storage if "://" in storage else "file://" + storage)
    selector = pafs.FileSelector(f"{base}/{name}", allow_not_found=True)
    return any(i.base_name.startswith("checkpoint_") for i in fs.get_file_info(selector))


def run_tags(cfg: Config, world: int) -> dict[str, str]:
    tags = {
        "method": cfg.method,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "world_size": str(world),
        "python": platform.python_version(),
        "dataset": cfg.data.source,
    }
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=os.path.dirname(os.path.abspath(__file__)))
        if commit.returncode == 0:
            tags["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def train(cfg: Config, ray_opts: RayOptions | None = None, parent_run_id: str = "",
          callbacks: Sequence[Any] = (), quiet: bool = False, prepared: PreparedData | None = None) -> TrainOutcome:
    """Run (or resume) one training and return where its results are.

    ``callbacks`` go to the TorchTrainer's RunConfig (``simclr tune`` passes Tune's TuneReportCallback).
    ``quiet`` (``simclr train`` without --verbose): Ray's own output goes to the run's log file and the
    terminal shows only our header, one line per epoch and the result (orchestrator/console.py).
    ``prepared``: ``cfg.data`` already read and decoded (a sweep's trials share it), else prepared here.
    """
    sources.check_paths(cfg.data.source, cfg.data.root, cfg.data.uri, cfg.data.download, cfg.data.eval_root)
    name = cfg.train.name or generated_name(cfg)
    cfg = cfg.replace({"train.name": name, "train.storage_path": storage_path(cfg)})
    probe_storage(cfg.train.storage_path)
    uri = tracking.resolve_uri(cfg.tracking.uri)
    cfg = cfg.replace({"tracking.uri": uri})  # checkpoints and `simclr eval` know where the run lives
    client = tracking.client_for(uri)
    exp_id = tracking.experiment_id(client, cfg.tracking.experiment, uri)
    previous = tracking.find_run(client, exp_id, name)
    resuming = has_checkpoint(cfg.train.storage_path, name)
    if previous is not None and previous.data.tags.get(COMPLETE_TAG) == "true" and resuming:
        raise UserError(f"train.name: run {name!r} already finished (MLflow run {previous.info.run_id}); "
                        f"choose a new name")
    ray_opts = ray_opts or RayOptions()
    local = not (ray.is_initialized() or ray_opts.address or os.environ.get("RAY_ADDRESS"))
    if local:  # the local Ray's size is known: refuse an impossible ask before starting it
        cpus_per_worker(cfg.train, float(ray_opts.num_cpus or os.cpu_count() or 1), float(torch.cuda.device_count()))
    log_path = run_log_path(cfg.train.storage_path, name)
    with console.capture(log_path, verbose=not quiet), ray_session(ray_opts):
        if quiet:
            quiet_ray_data()
        resources = ray.cluster_resources()
        cpw = cpus_per_worker(cfg.train, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
        data, prepare_seconds = _prepare(cfg, prepared, resources)
        steps = (data.num_train // cfg.train.workers) // cfg.train.worker_batch_size
        if steps < 1:
            raise UserError(f"train.batch_size={cfg.train.batch_size} is larger than the {data.num_train} training "
                            f"images; lower train.batch_size")
        run_id = _open_run(client, exp_id, cfg, previous if resuming else None, parent_run_id)
        console.current().say(header(cfg, run_id, data.num_train, data.num_classes, steps, cpw, resources))
        client.log_metric(run_id, "prepare_seconds", prepare_seconds)  # ~0 when a sweep prepared the data
        tracking.set_tags(client, run_id, {DATA_PREPARED_BY_TAG: "sweep" if prepared else "run"})
        try:
            outcome = _fit(cfg, data, steps, cpw, client, uri, exp_id, run_id, callbacks, quiet)
        except KeyboardInterrupt as err:
            tracking.end_run(client, run_id, "KILLED", str(err) or "interrupted (Ctrl-C or SIGTERM)")
            raise
        except BaseException as err:
            tracking.end_run(client, run_id, "FAILED", failure_message(err))
            raise
        finally:
            if quiet:
                log_console_file(client, run_id, log_path)
        tracking.set_tags(client, run_id, {COMPLETE_TAG: str(outcome.complete).lower()})
        tracking.end_run(client, run_id, "FINISHED")
        return outcome


def _open_run(client: Any, exp_id: str, cfg: Config, previous: Any, parent_run_id: str) -> str:
    """The MLflow run: the resumed run reopened, else a new one (a child of ``parent_run_id`` if set)."""
    if previous is not None:
        tracking.reopen_run(client, previous.info.run_id)
        return str(previous.info.run_id)
    tags = run_tags(cfg, cfg.train.workers)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return str(tracking.start_run(client, exp_id, cfg.train.name, cfg.to_flat_dict(), tags))


def _prepare(cfg: Config, prepared: PreparedData | None, resources: dict[str, float]) -> tuple[PreparedData, float]:
    """``cfg.data`` read and decoded (or as a sweep prepared it), and the seconds it took here."""
    start = time.perf_counter()
    data = prepared or prepare(cfg.data, cfg.train.seed, resources.get("object_store_memory"))
    return data, time.perf_counter() - start


def failure_message(err: BaseException) -> str:
    """The one line that says why a run failed, dug out of Ray's wrapped worker tracebacks."""
    text = str(err)
    for marker in (NonFiniteLossError.__name__, "UserError", "BadImageError"):
        for line in text.splitlines():
            if marker + ": " in line:
                return line.split(marker + ": ", 1)[1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def _fit(cfg: Config, data: PreparedData, steps: int, cpw: float, client: Any, uri: str, exp_id: str,
         run_id: str, callbacks: Sequence[Any] = (), quiet: bool = False) -> TrainOutcome:
    assert data.train is not None
    # on the driver's node, like Ray Train's controller: a lost worker node must not take these along
    on_driver = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    clock = EpochClock.options(scheduling_strategy=on_driver).remote()  # type: ignore[attr-defined]
    train_ds = train_stream(data.train, cfg, clock)
    _log_inputs(cfg, data, steps, client, run_id)
    datasets: dict[str, Any] = {"train": train_ds}
    if data.num_classes and data.eval_bank is not None and data.eval_test is not None:
        datasets.update(eval_bank=data.eval_bank, eval_test=data.eval_test)
    stop_flag = StopFlag.options(scheduling_strategy=on_driver).remote()  # type: ignore[attr-defined]
    job = TrainJob(config=cfg, run_id=run_id, tracking_uri=uri, steps_per_epoch=steps,
                   num_classes=data.num_classes if "eval_bank" in datasets else 0,
                   stop_flag=stop_flag, epoch_clock=clock, console=quiet)
    trainer = _torch_trainer(job, datasets, cpw, callbacks)
    # system metrics come from the nodes that train (orchestrator/train/progress.py: node_metrics), not
    # from here: the driver's node either hosts workers too (a local run: the same numbers twice) or
    # trains nothing (the head, for a submitted job)
    result, stopped = run_interruptibly(trainer.fit, stop_flag, _poller(stop_flag, quiet))
    where = checkpoint_uri(cfg.train.storage_path, result.checkpoint) if result.checkpoint else ""
    if where:
        tracking.set_tags(client, run_id, {CHECKPOINT_TAG: where})
    if stopped:
        raise TrainingInterrupted(f"stopped with a checkpoint at {where or '-'}; resume with --name {cfg.train.name}")
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    with result.checkpoint.as_directory() as d:
        payload = load_state_file(d)
    # whatever rank 0 could not send while the tracking server was away (idempotent)
    tracking.log_history(client, run_id, payload["history"])
    tracking.log_history(client, run_id, payload["step_history"], step_key="global_step")
    complete = int(payload["epoch"]) >= cfg.train.epochs
    with tempfile.TemporaryDirectory() as tmp:
        curves = os.path.join(tmp, "curves.png")
        plots.curves(payload["history"], curves)
        if os.path.exists(curves):
            client.log_artifact(run_id, curves, "plots")
    if complete:
        log_encoder(payload, run_id, uri, cfg)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    return TrainOutcome(run_id, cfg.train.name, exp_id, uri, where, complete, metrics)


def _torch_trainer(job: TrainJob, datasets: dict[str, Any], cpw: float, callbacks: Sequence[Any]) -> TorchTrainer:
    """Ray Train's TorchTrainer for the job: its workers, their resources, checkpoints and fault tolerance."""
    cfg = job.config
    resources: dict[str, float] = {"CPU": cpw}
    if cfg.train.use_gpu:
        resources["GPU"] = 1.0
    # chunks reach the workers in the epoch's order (with one worker the stream is the same every run)
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True
    # a bucket through a filesystem that waits out a brief outage (local paths: Ray's own handling)
    fs, path = storage_filesystem(cfg.train.storage_path) if "://" in cfg.train.storage_path else (None, "")
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.workers, use_gpu=cfg.train.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=cfg.train.name, storage_path=path or cfg.train.storage_path, storage_filesystem=fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            callbacks=list(callbacks),
            # rank 0 logs metrics: fail fast when the tracking server is away (records are re-sent later)
            worker_runtime_env={"env_vars": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                                             "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", **_forwarded_env()}},
        ),  # type: ignore[call-arg]  # the stubs see Train V1's RunConfig; V2's takes worker_runtime_env
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options={"train": ingest}),
    )


def _log_inputs(cfg: Config, data: PreparedData, steps: int, client: Any, run_id: str) -> None:
    """What goes into the run, before it trains: the config, a grid of augmented views, the dataset."""
    assert data.train is not None
    with tempfile.TemporaryDirectory() as tmp:
        config_path = os.path.join(tmp, "config.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(redact_values(cfg.to_dict()), f, sort_keys=False)
        client.log_artifact(run_id, config_path)
        sample = method(cfg.method).finish_batch(  # the views as the trainer sees them
            {k: torch.as_tensor(v) for k, v in first_views(data.train, cfg, 16).items() if k != ROW_ID}, cfg)
        grid = os.path.join(tmp, "augmented_views.png")
        plots.views_grid(sample["view0"], sample.get("view1"), grid)
        client.log_artifact(run_id, grid, "plots")
    # facts of the data as read (the config's own fields are under data.*)
    tracking.log_params(client, run_id, {"dataset.num_train": data.num_train, "dataset.num_classes": data.num_classes,
                                         "dataset.bad_images_skipped": data.bad_images,
                                         "dataset.steps_per_epoch": steps})
    if data.bad_images > 0:
        client.log_metric(run_id, "bad_images_skipped", data.bad_images)
    mlflow_record.log_dataset(client, run_id, cfg, data.num_train, data.num_classes)


def _forwarded_env() -> dict[str, str]:
    """Settings of the driver's environment that each node's MLflow system-metrics monitor reads (the
    sampling interval, samples per point); not the node id, which each node names for itself."""
    return {k: v for k, v in os.environ.items()
            if k.startswith("MLFLOW_SYSTEM_METRICS_") and k != "MLFLOW_SYSTEM_METRICS_NODE_ID"}


def _poller(flag: Any, quiet: bool) -> Any:
    """What the driver does twice a second while the workers train: print rank 0's progress lines
    (``quiet``), and every few seconds ask whether a worker hit a failure a restart would only repeat (a
    non-finite loss): then the run fails now, rather than after Ray Train has restarted the worker
    group ``train.max_failures`` times only to fail again at its first step."""
    printer = _printer(flag) if quiet else None
    last = 0.0

    def poll() -> None:
        nonlocal last
        if printer is not None:
            printer()
        if time.monotonic() - last < FATAL_POLL_S:
            return
        last = time.monotonic()
        with contextlib.suppress(ray.exceptions.RayError):  # the actor is busy or gone: Ray Train reports it
            check_fatal(flag, timeout=5)

    return poll


FATAL_POLL_S = 2.0


def _printer(flag: Any) -> Any:
    """Print rank 0's progress lines (sent through the flag's actor) on the driver's console."""
    seen = 0

    def poll() -> None:
        nonlocal seen
        try:
            lines: list[str] = ray.get(flag.lines.remote(seen), timeout=5)
        except Exception:  # the actor is busy or gone: the lines come with the next poll, or are in the log
            return
        seen += len(lines)
        con = console.current()
        for line in lines:
            if line.startswith("~"):
                con.progress(line[1:])
            else:
                con.say(line)

    return poll


def log_encoder(payload: dict[str, Any], run_id: str, uri: str, cfg: Config) -> None:
    """The trained backbone (features before the head) as an MLflow PyTorch model of the run: it takes
    uint8 images (B, 3, H, W) and normalises them itself (orchestrator/tracking/record.py)."""
    model = build_model(cfg)
    model.load_state_dict(payload["model"])
    mlflow_record.log_encoder_model(model.get_submodule("encoder").eval(), run_id, uri, cfg.data.image_size)
