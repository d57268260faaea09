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

from orchestrator import storage
from orchestrator.secrets import redact
from orchestrator.train import faults
from workloads.config import Config

STATE_FILE = "state.pt"


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
    if not storage.is_uri(location):
        return load_state_file(location)
    try:
        fs, base = storage.filesystem(location.rstrip("/"))
        with fs.open_input_stream(f"{base}/{STATE_FILE}") as f:
            data = f.read()
    except (OSError, ValueError) as err:  # ValueError: pyarrow's ArrowInvalid, a URI it cannot open
        reason = redact(storage.first_line(err))[:300]
        raise CheckpointError(f"cannot read {STATE_FILE} of {redact(location)} ({reason}); pass a checkpoint "
                              f"folder of a simclr run") from err
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


def checkpoint_uri(storage_root: str, checkpoint: ray.train.Checkpoint) -> str:
    """Where a checkpoint Ray Train registered lives, as a user passes it to ``simclr eval``: a local path,
    or the storage's URI (Ray keeps the path inside the bucket, without its scheme)."""
    if not storage.is_uri(storage_root):
        return str(checkpoint.path)
    scheme = storage_root.split(storage.SCHEME, 1)[0]
    return f"{scheme}://{str(checkpoint.path).lstrip('/')}"


def latest_checkpoint(storage_root: str, name: str, registered: ray.train.Checkpoint | None
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
    fs, base = storage.patient_filesystem(storage.join(storage_root, name))
    entries = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    names = sorted((e.base_name for e in entries if e.type == pafs.FileType.Directory
                    and e.base_name.startswith("checkpoint_epoch_")), reverse=True)
    for dir_name in names:
        if best is not None and dir_name <= os.path.basename(best[0].rstrip("/")):
            break  # sorted newest first: nothing newer than the registered one is left
        try:
            with ray.train.Checkpoint(f"{base}/{dir_name}", filesystem=fs).as_directory() as d:
                return f"{base}/{dir_name}", load_state_file(d)
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
