"""A training's MLflow run from its name to its end.

``settle``: the run's name (given, else generated), where its checkpoints go (absolute, and probed for
writes before Ray starts) and the tracking URI (resolved, so checkpoints and ``simclr eval`` know where
the run lives). ``find``: the experiment and the run's earlier MLflow run: re-running with the same
``train.name`` and ``train.storage_path`` resumes from the last checkpoint into that run, and a run that
finished is not trained again under its name. ``open_run``: that run reopened, else a new one with the
config as params and its tags (a sweep's trial is a child of the sweep's run). ``ended``: whatever
happens once the run is open, it ends FINISHED, FAILED (with ``failure_message`` as its ``error`` tag)
or KILLED (Ctrl-C, SIGTERM), never RUNNING.
"""

from __future__ import annotations

import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from orchestrator import storage, tracking
from orchestrator.errors import UserError, our_error
from orchestrator.tracking.tags import COMPLETE_TAG
from workloads.config import Config

DEFAULT_STORAGE = "simclr_runs"


def generated_name(cfg: Config) -> str:
    return f"{cfg.method}-{cfg.data.source}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def storage_path(cfg: Config) -> str:
    """Where runs keep their checkpoints: ``train.storage_path`` (default ./simclr_runs), absolute."""
    return storage.absolute(cfg.train.storage_path or DEFAULT_STORAGE)


def settle(cfg: Config) -> Config:
    """``cfg`` with its run's name, absolute storage path (writable: checked here) and tracking URI."""
    cfg = cfg.replace({"train.name": cfg.train.name or generated_name(cfg), "train.storage_path": storage_path(cfg)})
    storage.check_writable(cfg.train.storage_path, "train.storage_path")
    return cfg.replace({"tracking.uri": tracking.resolve_uri(cfg.tracking.uri)})


@dataclass(frozen=True)
class Found:
    """The run's place in MLflow before it starts: its experiment, and the MLflow run it resumes (if any)."""

    client: Any
    experiment_id: str
    previous: Any  # the resumed MLflow run, or None for a new run


def find(cfg: Config) -> Found:
    """The experiment (created if missing) and, when the run has checkpoints, the MLflow run it resumes."""
    name, uri = cfg.train.name, cfg.tracking.uri
    client = tracking.client_for(uri)
    exp_id = tracking.experiment_id(client, cfg.tracking.experiment, uri)
    previous = tracking.find_run(client, exp_id, name)
    resuming = has_checkpoint(cfg.train.storage_path, name)
    if previous is not None and previous.data.tags.get(COMPLETE_TAG) == "true" and resuming:
        raise UserError(f"train.name: run {name!r} already finished (MLflow run {previous.info.run_id}); "
                        f"choose a new name")
    return Found(client, exp_id, previous if resuming else None)


def has_checkpoint(storage_root: str, name: str) -> bool:
    return any(i.base_name.startswith("checkpoint_") for i in storage.listing(storage.join(storage_root, name)))


def open_run(found: Found, cfg: Config, parent_run_id: str = "") -> str:
    """The MLflow run: the resumed run reopened, else a new one (a child of ``parent_run_id`` if set)."""
    if found.previous is not None:
        tracking.reopen_run(found.client, found.previous.info.run_id)
        return str(found.previous.info.run_id)
    tags = run_tags(cfg, cfg.train.workers)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return str(tracking.start_run(found.client, found.experiment_id, cfg.train.name, cfg.to_flat_dict(), tags))


def run_tags(cfg: Config, world: int) -> dict[str, str]:
    import ray
    import torch

    tags = {
        "method": cfg.method,
        "ray_version": ray.__version__,
        "torch_version": torch.__version__,
        "world_size": str(world),
        "python": platform.python_version(),
        "dataset": cfg.data.source,
    }
    commit = _git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def _git_commit() -> str:
    """The commit of this checkout, "" outside a git checkout (an installed package, a job's working_dir)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@contextmanager
def ended(client: Any, run_id: str, log_path: str = "") -> Iterator[None]:
    """End the run as the block ends: FINISHED, KILLED on Ctrl-C/SIGTERM (the interruption's message as
    its error tag) or FAILED (``failure_message``); the exception goes on. ``log_path``: the console log,
    logged to the run as ``logs/`` either way."""
    try:
        yield
    except KeyboardInterrupt as err:
        tracking.end_run(client, run_id, "KILLED", str(err) or "interrupted (Ctrl-C or SIGTERM)")
        raise
    except BaseException as err:
        tracking.end_run(client, run_id, "FAILED", failure_message(err))
        raise
    finally:
        if log_path:
            log_console_file(client, run_id, log_path)
    tracking.end_run(client, run_id, "FINISHED")


def failure_message(err: BaseException) -> str:
    """The one line that says why a run failed: the message of our own error inside Ray's wrappers (a
    worker's non-finite loss, an unreadable image, a user error), else the last line of the error."""
    ours = our_error(err)
    if ours is not None:
        return next((ln.strip() for ln in str(ours).splitlines() if ln.strip()), type(ours).__name__)
    return last_line(str(err)) or type(err).__name__


def last_line(text: str) -> str:
    """The last line that is not blank ("" when none): where a traceback says what was raised."""
    return next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")


def run_log_path(storage_root: str, name: str, kind: str = "console") -> str:
    """The console log of this invocation (``kind``: console for training, eval): beside the run's
    checkpoints when they are local, else in a temporary folder (either way it is logged to the MLflow
    run as ``logs/``)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if storage.is_uri(storage_root):
        folder = tempfile.mkdtemp(prefix="simclr-log-")
    else:
        folder = os.path.join(storage_root, name, "logs")
    return os.path.join(folder, f"{kind}-{stamp}.log")


def log_console_file(client: Any, run_id: str, log_path: str) -> None:
    if os.path.exists(log_path):
        try:
            sys.stderr.flush()
            client.log_artifact(run_id, log_path, "logs")
        except Exception:  # the tracking server may be away; the file is kept where it is
            pass
