"""The driver of ``simclr train``: the run settled, its data prepared, Ray Train's TorchTrainer built and fit.

The run's life in MLflow (named, found, opened, ended) is orchestrator/train/run.py's; what it records,
orchestrator/tracking/record.py's; the stop flag it shares with the workers, orchestrator/train/stopflag.py's.
Re-running with the same ``train.name`` and ``train.storage_path`` resumes from the last checkpoint into
the same MLflow run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.data
import ray.train
import torch
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from torch import nn

from orchestrator import console, tracking
from orchestrator.data import catalog
from orchestrator.data.prepare import PreparedData, node_object_store, prepare
from orchestrator.data.stream import ROW_ID, EpochClock, first_views, train_stream
from orchestrator.errors import UserError
from orchestrator.interrupt import run_interruptibly
from orchestrator.secrets import redact
from orchestrator.storage import is_uri, join, patient_filesystem
from orchestrator.tracking import record
from orchestrator.tracking.tags import CHECKPOINT_TAG, COMPLETE_TAG, DATA_PREPARED_BY_TAG
from orchestrator.train import run, stopflag
from orchestrator.train.checkpoint import checkpoint_uri, load_state_file
from orchestrator.train.job import TrainJob
from orchestrator.train.model import build_model
from orchestrator.train.session import RayOptions, cpus_per_worker, quiet_ray_data, ray_session
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
    registered: str = ""  # "NAME/VERSION" in the Model Registry (tracking.register), "" if not registered

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "tracking_uri": redact(self.tracking_uri)}, sort_keys=True)


def train(cfg: Config, ray_opts: RayOptions | None = None, parent_run_id: str = "",
          callbacks: Sequence[Any] = (), quiet: bool = False, prepared: PreparedData | None = None,
          listings: str = "") -> TrainOutcome:
    """Run (or resume) one training and return where its results are.

    ``callbacks`` go to the TorchTrainer's RunConfig (``simclr tune`` passes Tune's TuneReportCallback).
    ``quiet`` (``simclr train`` without --verbose): Ray's own output goes to the run's log file and the
    terminal shows only our header, one line per epoch and the result (orchestrator/console.py).
    ``prepared``: ``cfg.data`` already read and decoded (a sweep's trials share it), else prepared here.
    ``listings``: where the listings of the folders the data is read from are kept as manifests ("": the
    run's own folder, ``train.storage_path/<name>``; a sweep's trials keep the sweep's).
    """
    catalog.check_paths(cfg.data)
    cfg = run.settle(cfg)
    found = run.find(cfg)
    ray_opts = ray_opts or RayOptions()
    local = not (ray.is_initialized() or ray_opts.address or os.environ.get("RAY_ADDRESS"))
    if local:  # the local Ray's size is known: refuse an impossible ask before starting it
        cpus_per_worker(cfg.train, float(ray_opts.num_cpus or os.cpu_count() or 1), float(torch.cuda.device_count()))
    log_path = run.run_log_path(cfg.train.storage_path, cfg.train.name)
    with console.capture(log_path, verbose=not quiet), ray_session(ray_opts):
        if quiet:
            quiet_ray_data()
        resources = ray.cluster_resources()
        cpw = cpus_per_worker(cfg.train, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
        data, prepare_seconds = _prepare(cfg, prepared, listings or join(cfg.train.storage_path, cfg.train.name))
        steps = (data.num_train // cfg.train.workers) // cfg.train.worker_batch_size
        if steps < 1:
            raise UserError(f"train.batch_size={cfg.train.batch_size} is larger than the {data.num_train} training "
                            f"images; lower train.batch_size")
        client = found.client
        run_id = run.open_run(found, cfg, parent_run_id)
        console.current().say(header(cfg, run_id, data.num_train, data.num_classes, steps, cpw, resources))
        client.log_metric(run_id, "prepare_seconds", prepare_seconds)  # ~0 when a sweep prepared the data
        tracking.set_tags(client, run_id, {DATA_PREPARED_BY_TAG: "sweep" if prepared else "run"})
        with run.ended(client, run_id, log_path if quiet else ""):
            outcome = _fit(cfg, data, steps, cpw, found, run_id, callbacks, quiet)
            tracking.set_tags(client, run_id, {COMPLETE_TAG: str(outcome.complete).lower()})
        return outcome


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


def _prepare(cfg: Config, prepared: PreparedData | None, listings: str) -> tuple[PreparedData, float]:
    """``cfg.data`` read and decoded (or as a sweep prepared it), and the seconds it took here."""
    start = time.perf_counter()
    data = prepared or prepare(cfg.data, cfg.train.seed, node_object_store(), listings=listings)
    return data, time.perf_counter() - start


def _fit(cfg: Config, data: PreparedData, steps: int, cpw: float, found: run.Found, run_id: str,
         callbacks: Sequence[Any] = (), quiet: bool = False) -> TrainOutcome:
    assert data.train is not None
    client, uri = found.client, cfg.tracking.uri
    # on the driver's node, like Ray Train's controller: a lost worker node must not take it along
    on_driver = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    clock = EpochClock.options(scheduling_strategy=on_driver).remote()  # type: ignore[attr-defined]
    train_ds = train_stream(data.train, cfg, clock)
    record.log_inputs(client, run_id, cfg, _first_views(data, cfg), data.num_train, data.num_classes,
                      data.bad_images, steps)
    datasets: dict[str, Any] = {"train": train_ds}
    if data.num_classes and data.eval_bank is not None and data.eval_test is not None:
        datasets.update(eval_bank=data.eval_bank, eval_test=data.eval_test)
    flag = stopflag.start()
    job = TrainJob(config=cfg, run_id=run_id, tracking_uri=uri, steps_per_epoch=steps,
                   num_classes=data.num_classes if "eval_bank" in datasets else 0,
                   stop_flag=flag, epoch_clock=clock, console=quiet)
    trainer = _torch_trainer(job, datasets, cpw, callbacks)
    # system metrics come from the nodes that train (orchestrator/train/progress.py: node_metrics), not
    # from here: the driver's node either hosts workers too (a local run: the same numbers twice) or
    # trains nothing (the head, for a submitted job)
    result, stopped = run_interruptibly(trainer.fit, lambda: stopflag.request_stop(flag), stopflag.poller(flag, quiet))
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
    record.log_curves(client, run_id, payload["history"])
    registered = ""
    if complete:
        model_uri = record.log_encoder_model(_encoder(payload, cfg), run_id, uri, cfg.data.image_size)
        if cfg.tracking.register:
            registered = record.register_encoder(client, run_id, model_uri, cfg.tracking.register,
                                                 cfg.tracking.register_alias)
    metrics = {k: float(v) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    return TrainOutcome(run_id, cfg.train.name, found.experiment_id, uri, where, complete, metrics, registered)


def _first_views(data: PreparedData, cfg: Config) -> dict[str, torch.Tensor]:
    """The views of 16 training images as the trainer sees them (for the run's picture of them)."""
    assert data.train is not None
    views = first_views(data.train, cfg, 16)
    return method(cfg.method).finish_batch({k: torch.as_tensor(v) for k, v in views.items() if k != ROW_ID}, cfg)


def _encoder(payload: dict[str, Any], cfg: Config) -> nn.Module:
    """The trained backbone (features before the head) of a checkpoint's payload, in eval mode."""
    model = build_model(cfg)
    model.load_state_dict(payload["model"])
    return model.get_submodule("encoder").eval()


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
    fs, path = patient_filesystem(cfg.train.storage_path) if is_uri(cfg.train.storage_path) else (None, "")
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


def _forwarded_env() -> dict[str, str]:
    """Settings of the driver's environment that each node's MLflow system-metrics monitor reads (the
    sampling interval, samples per point); not the node id, which each node names for itself."""
    return {k: v for k, v in os.environ.items()
            if k.startswith("MLFLOW_SYSTEM_METRICS_") and k != "MLFLOW_SYSTEM_METRICS_NODE_ID"}
