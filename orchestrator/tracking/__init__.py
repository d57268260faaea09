"""MLflow: runs and their history (runs.py), what a run records (record.py), its pictures (plots.py)."""

from orchestrator.tracking.runs import (
    artifact_location,
    client_for,
    end_run,
    experiment_id,
    find_run,
    log_history,
    probe_server,
    reopen_run,
    resolve_uri,
    set_tags,
    start_run,
)
from orchestrator.tracking.tags import RUN_NAME_TAG

__all__ = [
    "RUN_NAME_TAG",
    "artifact_location",
    "client_for",
    "end_run",
    "experiment_id",
    "find_run",
    "log_history",
    "probe_server",
    "reopen_run",
    "resolve_uri",
    "set_tags",
    "start_run",
]
