"""MLflow: where runs go, how they start, resume and end, and idempotent per-epoch logging.

The driver creates (or, on resume, reopens) the run and always ends it: FINISHED, FAILED with the
error as a tag, or KILLED on Ctrl-C, so no run is left RUNNING. Rank 0 of the train workers logs
metrics into that run by id. Metrics reach MLflow only for epochs that are checkpointed; a resumed run
re-sends whatever the checkpoint holds beyond the last epoch MLflow has, so no epoch is logged twice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.errors import UserError
from orchestrator.secrets import redact
from orchestrator.storage import is_uri
from orchestrator.tracking.tags import EXPERIMENT_KIND_TAG, RUN_NAME_TAG

EPOCH_KEY = "epoch"  # logged once per epoch; its history says which epochs MLflow already has
MAX_PARAM_LEN = 6000


def resolve_uri(uri: str = "") -> str:
    """``--tracking-uri`` / config, then ``MLFLOW_TRACKING_URI``, then ``./mlflow.db`` (sqlite)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return "sqlite:///" + os.path.abspath("mlflow.db")
    if not is_uri(uri):  # a bare path: a sqlite file
        return "sqlite:///" + os.path.abspath(uri)
    return uri


def artifact_location(uri: str) -> str | None:
    """Artifacts of a local sqlite store live beside the database, whatever the working directory."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db_path = uri[len("sqlite:///"):]
        return "file://" + os.path.join(os.path.dirname(os.path.abspath(db_path)), "mlartifacts")
    return None


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, created (with its artifact location set) when missing."""
    if urlparse(uri).scheme in ("http", "https"):
        probe_server(uri)
    try:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            exp_id = str(client.create_experiment(name, artifact_location=artifact_location(uri)))
        else:
            exp_id = str(exp.experiment_id)
        if exp is None or EXPERIMENT_KIND_TAG not in exp.tags:
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, "custom_model_development")
        return exp_id
    except Exception as err:  # MlflowException, connection errors, sqlite errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"tracking.uri: cannot reach the MLflow store at {redact(uri)}: {redact(first)[:300]}") from err


def probe_server(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after MLflow's minutes of retries, when no tracking server answers."""
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as err:
        raise UserError(f"tracking.uri: no MLflow server answers at {redact(uri)} ({type(err).__name__}); "
                        f"start it, or use a local store such as --tracking-uri sqlite:///mlflow.db") from err
    probe_backend(uri, timeout)


def probe_backend(uri: str, timeout: float = 5.0) -> None:
    """One read of the server's store, not retried: a server whose database is down still answers
    ``/health`` but fails every request with a 5xx, which MLflow's client retries for minutes."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        resp = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET",
                            max_retries=0, raise_on_status=False, timeout=timeout, params={"max_results": 1})
    except MlflowException as err:  # no answer in time, or the connection dropped
        # (a server started while its database was down retries connecting inside the request)
        raise UserError(f"tracking.uri: the MLflow server at {redact(uri)} did not answer a query within "
                        f"{timeout:g} s; check the server and its backend store (database)") from err
    if resp.status_code >= 500:
        raise UserError(f"tracking.uri: the MLflow server at {redact(uri)} answers {resp.status_code} to a query "
                        f"({redact(_error_message(resp.text))[:200]}); its backend store (database) is down or "
                        f"unreachable from the server: check the database and --backend-store-uri")


def _error_message(body: str) -> str:
    """The ``message`` of MLflow's JSON error body (its first line), else the body's first line."""
    try:
        text = str(json.loads(body).get("message", "")) or body
    except (ValueError, AttributeError):
        text = body
    return text.strip().splitlines()[0] if text.strip() else "no message"


def find_run(client: MlflowClient, exp_id: str, run_name: str, parent_id: str = "") -> Any | None:
    """The newest run with this name (our tag), or None."""
    query = f"tags.`{RUN_NAME_TAG}` = '{run_name}'"
    if parent_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_id}'"
    runs = client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def start_run(client: MlflowClient, exp_id: str, run_name: str, params: Mapping[str, Any],
              tags: Mapping[str, str]) -> str:
    run = client.create_run(exp_id, run_name=run_name, tags={RUN_NAME_TAG: run_name, **tags})
    run_id: str = run.info.run_id
    log_params(client, run_id, params)
    return run_id


def reopen_run(client: MlflowClient, run_id: str) -> None:
    """A stopped or failed run resumed: RUNNING again, without the ``error`` tag of how it last ended
    (else a run that then finishes still shows the stop's message in ``simclr runs``)."""
    if "error" in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, "error")
    client.update_run(run_id, status="RUNNING")


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, redact(str(v))[:MAX_PARAM_LEN]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100], synchronous=True)


def end_run(client: MlflowClient, run_id: str, status: str, error: str = "") -> None:
    """FINISHED / FAILED / KILLED; a failure's reason goes in the ``error`` tag (one line)."""
    if error:
        line = error.strip().splitlines()[-1] if error.strip() else error
        set_tag(client, run_id, "error", redact(line)[:5000])
    client.set_terminated(run_id, status=status)


def set_tag(client: MlflowClient, run_id: str, key: str, value: str) -> None:
    """One tag, written once more when the store refuses it. Two writers may end the same run at the
    same moment (a stopped trial's process and the sweep's driver); the store writes a tag as a read
    then an insert, so the later insert collides with the earlier one's row, which the store reports as
    a bad request. The second write finds that row and updates it. Any other failure (a server that does
    not answer, after MLflow's own retries) is raised at once."""
    from mlflow.exceptions import MlflowException

    try:
        client.set_tag(run_id, key, value)
    except MlflowException as err:
        if err.error_code != "BAD_REQUEST":
            raise
        client.set_tag(run_id, key, value)


def logged_max_step(client: MlflowClient, run_id: str, key: str) -> int:
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=-1)


def log_history(client: MlflowClient, run_id: str, history: Iterable[Mapping[str, float]],
                step_key: str = EPOCH_KEY) -> int:
    """Log each record (a dict with ``step_key``) whose step MLflow does not have yet; idempotent.

    Returns how many records were sent.
    """
    done = logged_max_step(client, run_id, step_key)
    now = int(time.time() * 1000)
    metrics: list[Metric] = []
    sent = 0
    for record in history:
        step = int(record[step_key])
        if step <= done:
            continue
        sent += 1
        metrics.extend(Metric(k, float(v), now, step) for k, v in record.items())
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i:i + 500], synchronous=True)
    return sent


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)
