"""``simclr runs`` (a table of MLflow runs) and ``simclr ui`` (the MLflow UI on the same store)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, TextIO
from urllib.parse import urlparse

from orchestrator import tracking
from orchestrator.errors import UserError
from orchestrator.tracking.tags import CHECKPOINT_TAG, KIND_TAG, RUN_NAME_TAG, STOPPED_EARLY_TAG

KEY_PARAMS = ("loss.temperature", "aug.strength", "aug.min_scale", "optim.lr", "train.batch_size", "train.epochs")
KEY_METRICS = ("knn_top1", "linear_probe_top1", "loss", "epoch")
WHERE_COLUMNS = ("data", "checkpoint")  # --where: the data's location and the newest checkpoint
MAX_RUNS = 1000


def register(sub: Any) -> None:
    p = sub.add_parser("runs", help="table of MLflow runs (or a sweep's trials) with key params and metrics")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite ./mlflow.db)")
    p.add_argument("--experiment", default="simclr", help="MLflow experiment (tracking.experiment; default simclr)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sweep", default="", metavar="NAME", help="only the trials of this `simclr tune` sweep")
    group.add_argument("--parent", default="", metavar="RUN_ID", help="only the child runs of this run")
    p.add_argument("--sort", default="", metavar="KEY",
                   help="order by a metric or param, best first (ascending for names with 'loss', else descending)")
    p.add_argument("--reverse", action="store_true", help="reverse the --sort order")
    p.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50)")
    p.add_argument("--where", action="store_true",
                   help="two more columns: where the run's data is and its newest checkpoint (path or bucket URI)")
    p.add_argument("--json", action="store_true", help="one JSON list of runs on stdout")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("ui", help="serve the MLflow UI on this project's tracking store at 127.0.0.1")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite ./mlflow.db); for a "
                        "tracking server (http://...), print the address of its own UI")
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default 5000)")
    p.add_argument("--server-workers", type=int, default=1, help="MLflow server worker processes (default 1)")
    p.set_defaults(func=cmd_ui)


# --- simclr runs ------------------------------------------------------------------------------------------


def _experiment_id(client: Any, name: str) -> str:
    try:
        exp = client.get_experiment_by_name(name)
    except Exception as err:  # MlflowException, connection errors
        raise UserError(f"--tracking-uri: cannot read the MLflow store: {str(err).splitlines()[0][:300]}") from err
    if exp is None:
        raise UserError(f"--experiment: no experiment {name!r} in this MLflow store")
    return str(exp.experiment_id)


def _search(client: Any, exp_id: str, query: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while len(runs) < MAX_RUNS:
        page = client.search_runs([exp_id], filter_string=query, order_by=["attributes.start_time DESC"],
                                  max_results=min(500, MAX_RUNS - len(runs)), page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _sweep_parent(client: Any, exp_id: str, name: str) -> Any:
    query = f"tags.`{KIND_TAG}` = 'sweep' and tags.`{RUN_NAME_TAG}` = '{name}'"
    runs = _search(client, exp_id, query)
    if not runs:
        raise UserError(f"--sweep: no sweep named {name!r} in this experiment")
    return runs[0]


def _kind(run: Any) -> str:
    if run.data.tags.get(KIND_TAG) == "sweep":
        return "sweep"
    return "trial" if "mlflow.parentRunId" in run.data.tags else "train"


def run_record(run: Any, params: Sequence[str]) -> dict[str, Any]:
    tags = run.data.tags
    note = "stopped early" if tags.get(STOPPED_EARLY_TAG) == "true" else tags.get("error", "")
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "kind": _kind(run),
        "status": run.info.status,
        "note": note,
        "parent_run_id": tags.get("mlflow.parentRunId", ""),
        "params": {k: run.data.params[k] for k in params if k in run.data.params},
        "metrics": dict(run.data.metrics),
        "data": _data_source(run),
        "checkpoint": tags.get(CHECKPOINT_TAG, ""),
    }


def _data_source(run: Any) -> str:
    """The URI or path of the run's training dataset input ("" for generated data)."""
    for used in getattr(run.inputs, "dataset_inputs", None) or []:
        try:
            return str(json.loads(used.dataset.source).get("uri", ""))
        except (ValueError, AttributeError):
            continue
    return ""


def _value(record: dict[str, Any], key: str) -> float | None:
    raw = record["metrics"].get(key, record["params"].get(key))
    try:
        value = float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    return None if value is None or math.isnan(value) else value


def sort_records(records: list[dict[str, Any]], key: str, reverse: bool = False) -> list[dict[str, Any]]:
    """Best first: ascending for keys with 'loss' in the name, else descending; runs without the key last."""
    descending = "loss" not in key
    if reverse:
        descending = not descending
    have = [r for r in records if _value(r, key) is not None]
    lack = [r for r in records if _value(r, key) is None]
    have.sort(key=lambda r: _value(r, key) or 0.0, reverse=descending)
    return have + lack


def format_table(records: Sequence[dict[str, Any]], params: Sequence[str], metrics: Sequence[str],
                 where: bool = False) -> str:
    cols = ["run_name", "kind", "status", *params, *metrics, "note", *(WHERE_COLUMNS if where else ())]
    rows = []
    for r in records:
        row = {"run_name": r["run_name"], "kind": r["kind"], "status": r["status"], "note": r["note"][:60],
               **{c: r[c] for c in WHERE_COLUMNS}}
        row.update({p: r["params"].get(p, "") for p in params})
        row.update({m: f"{r['metrics'][m]:.4g}" if m in r["metrics"] else "" for m in metrics})
        rows.append(row)
    widths = {c: max([len(c), *(len(str(row[c])) for row in rows)]) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(str(row[c]).ljust(widths[c]) for c in cols).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def cmd_runs(args: argparse.Namespace, out: TextIO) -> int:
    if args.limit < 1:
        raise UserError(f"--limit must be >= 1; got {args.limit}")
    uri = tracking.resolve_uri(args.tracking_uri or "")
    client = tracking.client_for(uri)
    exp_id = _experiment_id(client, args.experiment)
    params = list(KEY_PARAMS)
    if args.sweep or args.parent:
        parent = _sweep_parent(client, exp_id, args.sweep) if args.sweep else client.get_run(args.parent)
        searched = [k[len("search."):] for k in parent.data.params if k.startswith("search.")]
        params = searched + [p for p in params if p not in searched]
        runs = _search(client, exp_id, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    else:
        runs = _search(client, exp_id, "")
    records = [run_record(r, params) for r in runs]
    if args.sort:
        records = sort_records(records, args.sort, args.reverse)
    records = records[:args.limit]
    if args.json:
        print(json.dumps(records, sort_keys=True), file=out)
        return 0
    if not records:
        print("no runs", file=out)
        return 0
    shown_params = [p for p in params if any(p in r["params"] for r in records)]
    metrics = list(KEY_METRICS)
    if args.sort and args.sort not in metrics and args.sort not in shown_params:
        metrics.insert(0, args.sort)
    shown_metrics = [m for m in metrics if any(m in r["metrics"] for r in records)]
    print(format_table(records, shown_params, shown_metrics, args.where), file=out, end="")
    return 0


# --- simclr ui --------------------------------------------------------------------------------------------


def server_command(uri: str, port: int, workers: int = 1) -> list[str]:
    """``mlflow server`` on the runs' store, bound to 127.0.0.1, serving artifacts from where runs keep them."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https", "databricks"):
        raise UserError(f"--tracking-uri {uri} is already a tracking server: open it in a browser")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers)]
    artifacts = tracking.artifact_location(uri)
    if artifacts:  # experiments made by the UI keep their artifacts beside ours
        cmd += ["--default-artifact-root", artifacts, "--artifacts-destination", artifacts]
    return cmd


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cmd_ui(args: argparse.Namespace, out: TextIO) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535; got {args.port}")
    if args.server_workers < 1:
        raise UserError(f"--server-workers must be >= 1; got {args.server_workers}")
    uri = tracking.resolve_uri(args.tracking_uri or "")
    if urlparse(uri).scheme in ("http", "https"):  # a tracking server serves its own UI
        tracking.probe_server(uri)
        print(f"MLflow UI at {ui_url(uri, args.port, base=uri.rstrip('/'))} (the tracking server's own)", file=out)
        return 0
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise UserError(f"--tracking-uri: no MLflow store at {uri[len('sqlite:///'):]} (run simclr train or tune "
                        f"first, or pass --tracking-uri)")
    cmd = server_command(uri, args.port, args.server_workers)
    if not _port_free(args.port):
        raise UserError(f"--port {args.port} is in use on 127.0.0.1; choose another with --port")
    print(f"MLflow UI at {ui_url(uri, args.port)} (store {uri}); Ctrl-C stops it", file=sys.stderr)
    # its own process group: the server's gunicorn/uvicorn workers are stopped with it, never orphaned
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (cli.main makes it one)
        stop_group(proc)
        return 0
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the server's whole process group, then SIGKILL whatever is left after ``timeout``."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the workers, even when the leader already exited
    proc.wait()


def ui_url(uri: str, port: int, base: str = "") -> str:
    """The UI (at ``base``, else the one started on ``port``), opened on the training runs of our experiment
    (MLflow 3 opens experiments on traces)."""
    base = base or f"http://127.0.0.1:{port}"
    try:
        client = tracking.client_for(uri)
        exp = client.get_experiment_by_name("simclr")
    except Exception:
        return base
    return f"{base}/#/experiments/{exp.experiment_id}/runs" if exp is not None else base
