"""Checkpoint I/O: ``state.pt`` written atomically, read completely or not at all, found after a crash.

A checkpoint folder holds one file, ``state.pt``: model and optimiser weights, the ``TrainState``
(epoch, step, the metric histories MLflow may still lack), RNG states, the config and the MLflow run.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
import ray.train
import torch
from torch import nn

from orchestrator.secrets import redact
from orchestrator.train import faults
from workloads.config import Config

STATE_FILE = "state.pt"
# Attempts of a storage request that meets a transient error (the endpoint away, throttling, a 5xx). The
# AWS SDK backs off exponentially, up to 20 s between attempts: 12 wait out about two minutes of outage,
# pyarrow's default of 3 only a few seconds.
STORAGE_ATTEMPTS = 12


class CheckpointError(RuntimeError):
    """A checkpoint folder without a complete state file."""


@dataclass
class TrainState:
    """Everything a resumed run needs besides model and optimiser weights; the same on every rank."""

    epoch: int = 0  # last completed epoch (0: none)
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one record per epoch (epoch 0 = init)
    step_history: list[dict[str, float]] = field(default_factory=list)  # {"global_step", "step_loss"}


def save_state(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
               cfg: Config, run_id: str) -> None:
    """Write ``state.pt`` atomically (temp file + rename), so no reader ever sees half a file."""
    payload: dict[str, Any] = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": state.epoch,
        "global_step": state.global_step,
        "history": state.history,
        "step_history": state.step_history,
        "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
        "config": cfg.to_dict(),
        "run_id": run_id,
    }
    if torch.cuda.is_available():
        payload["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    tmp = os.path.join(path, STATE_FILE + ".tmp")
    torch.save(payload, tmp)
    if faults.fires("die_in_checkpoint", state.epoch):  # killed between writing and publishing
        os._exit(1)
    os.replace(tmp, os.path.join(path, STATE_FILE))


def load_state_file(path: str) -> dict[str, Any]:
    """Load a checkpoint's state; a missing or truncated file is an error, never half a state."""
    return _parse(os.path.join(path, STATE_FILE), path)


def read_checkpoint(location: str) -> dict[str, Any]:
    """The state of the checkpoint folder at ``location``: a local path, or a URI in an object store
    (``s3://bucket/runs/NAME/checkpoint_epoch_00010``), read whole into memory."""
    if "://" not in location:
        return load_state_file(location)
    try:
        fs, base = pafs.FileSystem.from_uri(location.rstrip("/"))
        with fs.open_input_stream(f"{base}/{STATE_FILE}") as f:
            data = f.read()
    except (OSError, ValueError) as err:  # ValueError: pyarrow's ArrowInvalid, a URI it cannot open
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read {STATE_FILE} of {redact(location)} ({redact(first)[:300]}); pass a "
                              f"checkpoint folder of a simclr run") from err
    return _parse(io.BytesIO(data), location)


def _parse(file: str | io.BytesIO, where: str) -> dict[str, Any]:
    try:
        payload: dict[str, Any] = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"checkpoint {redact(where)!r} is incomplete or unreadable ({err}); "
                              f"use an earlier checkpoint of the run") from err
    missing = {"model", "optimizer", "epoch", "global_step", "config", "run_id"} - set(payload)
    if missing:
        raise CheckpointError(f"checkpoint {redact(where)!r} lacks {sorted(missing)}; use an earlier checkpoint "
                              f"of the run")
    return payload


def checkpoint_uri(storage: str, checkpoint: ray.train.Checkpoint) -> str:
    """Where a checkpoint Ray Train registered lives, as a user passes it to ``simclr eval``: a local path,
    or the storage's URI (Ray keeps the path inside the bucket, without its scheme)."""
    if "://" not in storage:
        return str(checkpoint.path)
    scheme = storage.split("://", 1)[0]
    return f"{scheme}://{str(checkpoint.path).lstrip('/')}"


def storage_filesystem(storage: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of ``train.storage_path`` where a run's checkpoints are written and read.

    In S3 (or a store with its API), a request that meets a transient error is retried for about two
    minutes (``STORAGE_ATTEMPTS``) instead of seconds: while the endpoint is briefly away, a checkpoint
    upload, Ray Train's snapshot of its checkpoints and a restarted worker's look-up wait for it rather
    than fail the run. Errors that are not transient (a refused key, a missing bucket) fail at once.
    """
    if "://" not in storage:
        return pafs.LocalFileSystem(), os.path.abspath(storage)
    fs, path = pafs.FileSystem.from_uri(storage)
    if isinstance(fs, pafs.S3FileSystem):
        _, (options,) = fs.__reduce__()  # the options from_uri resolved: region, endpoint, credentials
        fs = _patient_s3(options)
    return fs, path


class _PatientS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem with ``STORAGE_ATTEMPTS`` retries, kept when it is pickled to Ray Train's
    controller and workers: pyarrow's own pickling leaves the retry strategy out, and the copy retries
    as pyarrow does by default (a few seconds)."""

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        _, (options,) = super().__reduce__()
        return _patient_s3, (options,)


def _patient_s3(options: dict[str, Any]) -> _PatientS3FileSystem:
    retry = pafs.AwsStandardS3RetryStrategy(max_attempts=STORAGE_ATTEMPTS)
    return _PatientS3FileSystem(**{**options, "retry_strategy": retry})


def latest_checkpoint(storage: str, name: str, registered: ray.train.Checkpoint | None
                      ) -> tuple[str, dict[str, Any]] | None:
    """The newest complete checkpoint of the run: Ray's registered one, or a newer one on storage.

    Ray Train hands a restarted worker group the last checkpoint its controller registered; a worker
    process that dies right after reporting can take that registration with it (seen with Ray 2.60),
    so the run's folder is scanned too. Only checkpoints whose state file loads completely count:
    a folder left half-written by a crash is passed over, never loaded.
    """
    best: tuple[str, dict[str, Any]] | None = None
    if registered is not None:
        try:
            with registered.as_directory() as d:
                best = (registered.path, load_state_file(d))
        except CheckpointError:
            best = None
    fs, base = storage_filesystem(storage)
    entries = fs.get_file_info(pafs.FileSelector(f"{base}/{name}", allow_not_found=True))
    names = sorted((e.base_name for e in entries if e.type == pafs.FileType.Directory
                    and e.base_name.startswith("checkpoint_epoch_")), reverse=True)
    for dir_name in names:
        if best is not None and dir_name <= os.path.basename(best[0].rstrip("/")):
            break  # sorted newest first: nothing newer than the registered one is left
        try:
            with ray.train.Checkpoint(f"{base}/{name}/{dir_name}", filesystem=fs).as_directory() as d:
                return f"{base}/{name}/{dir_name}", load_state_file(d)
        except (CheckpointError, FileNotFoundError):
            continue
    return best


def restore(payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng"]["torch"])
    if "cuda" in payload["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return TrainState(payload["epoch"], payload["global_step"], payload["history"], payload["step_history"])


def optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move restored optimiser state (momentum buffers) to the training device."""
    for st in optimizer.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                st[k] = v.to(device)
