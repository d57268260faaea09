"""``simclr submit`` and ``simclr jobs``: run ``simclr train`` / ``simclr tune`` on a remote Ray cluster.

``simclr submit train --epochs 30 --set train.storage_path=s3://b/runs --address http://HEAD:8265``
uploads the project as the job's working_dir, runs ``simclr train --epochs 30 ...`` on the head,
prints the job id and follows the logs. Exit code: 0 when the job SUCCEEDED, 1 when it FAILED or was
STOPPED, 2 for user errors (bad flags or config, no cluster at the address, a missing or wrong token).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from cluster.jobs import DEFAULT_ADDRESS, JobsClient, RunStream, entrypoint, print_stream, project_root
from orchestrator.errors import UserError
from orchestrator.storage import is_uri

EXIT_JOB_FAILED = 1
WORKLOADS = ("train", "tune")


def cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default="",
                   help=f"the head's dashboard, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, an http "
                        f"$RAY_ADDRESS, else {DEFAULT_ADDRESS}, where `ray dashboard ray_cluster.yaml` forwards it)")
    p.add_argument("--token-file", default="", metavar="FILE",
                   help="file holding the cluster's auth token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, "
                        "else ~/.ray/auth_token)")


def _submit_flags(p: argparse.ArgumentParser) -> None:
    cluster_flags(p)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return; don't follow the logs")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI the job logs to, as the cluster sees it (e.g. http://MLFLOW:5000); "
                        "sent as MLFLOW_TRACKING_URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--resources-timeout-s", type=float, default=1200.0, metavar="S",
                   help="train: how long the job waits for the autoscaler to provide the GPUs (or CPUs) of "
                        "train.workers before giving up (default 1200)")
    p.add_argument("--json", action="store_true", help="print only one JSON object on stdout at the end")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "submit", help="run `simclr train|tune ...` on a Ray cluster through the Jobs API",
        description="Run `simclr train ...` or `simclr tune ...` on a remote Ray cluster. Every argument after "
                    "the command goes to it, except this command's own flags, which may come anywhere.")
    _submit_flags(p)
    p.add_argument("workload", choices=WORKLOADS, help="the simclr command to run on the cluster")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments, e.g. --epochs 30 --set data.source=cifar10")
    p.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="list, read and stop jobs on a Ray cluster")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, parser_class=type(p))
    q = jobs_sub.add_parser("list", help="jobs on the cluster, oldest first")
    cluster_flags(q)
    q.add_argument("--json", action="store_true", help="print the jobs as one JSON list")
    q.set_defaults(func=cmd_jobs_list)
    q = jobs_sub.add_parser("logs", help="a job's logs so far (or --follow until it ends)")
    cluster_flags(q)
    q.add_argument("job_id", metavar="ID")
    q.add_argument("--follow", action="store_true", help="keep printing until the job ends; exit 0 only if it "
                                                        "SUCCEEDED")
    q.set_defaults(func=cmd_jobs_logs)
    q = jobs_sub.add_parser("stop", help="stop a running job")
    cluster_flags(q)
    q.add_argument("job_id", metavar="ID")
    q.set_defaults(func=cmd_jobs_stop)


def split_args(args: argparse.Namespace) -> argparse.Namespace:
    """Take this command's flags out of the pass-through arguments wherever they stand."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _submit_flags(p)
    own, rest = p.parse_known_args(args.args)
    for key, value in vars(own).items():
        default = p.get_default(key)
        if value != default:  # a flag given after the command wins over one given before it
            setattr(args, key, value)
    args.args = rest
    return args


def check_train_args(rest: list[str]) -> tuple[list[str], dict[str, float], list[str]]:
    """Parse and resolve the train arguments here, so a bad flag or config fails before the upload.

    Returns the arguments to send, with ``--config`` rewritten relative to the project root (the
    job's working directory), the resources the run needs ({"GPU": workers} or {"CPU": workers}),
    and notes for the user.
    """
    from orchestrator.cli.flags import Parser, config_flags, config_overrides, ray_flags
    from orchestrator.config_io import resolve

    p = Parser(prog="simclr submit train")
    config_flags(p)
    ray_flags(p)
    ns = p.parse_args(rest)
    cfg = resolve(ns.recipe, ns.config, ns.set, config_overrides(ns), ns.method)
    if ns.config:
        rest = _rebase_config(rest, ns.config)
    notes = []
    storage = cfg.train.storage_path
    if not storage:
        notes.append("train.storage_path is unset: checkpoints would go to simclr_runs/ in the job's temporary "
                     "working directory and be lost with it; use e.g. --set train.storage_path=s3://BUCKET/runs")
    elif not is_uri(storage):
        notes.append(f"train.storage_path={storage} is a path on the cluster's nodes: fine on one node; with "
                     f"several, every node must see it (NFS), or use --set train.storage_path=s3://BUCKET/runs")
    need = {"GPU": float(cfg.train.workers)} if cfg.train.use_gpu else {"CPU": float(cfg.train.workers)}
    return rest, need, notes


def _rebase_config(rest: list[str], config: str) -> list[str]:
    root = project_root()
    path = Path(config).resolve()
    if not path.is_relative_to(root):
        raise UserError(f"--config {config}: the job sees only the project folder {root} (its working_dir); "
                        f"put the file inside it")
    relative = str(path.relative_to(root))
    out = []
    skip = False
    for i, arg in enumerate(rest):
        if skip:
            skip = False
            continue
        if arg == "--config" and i + 1 < len(rest):
            out += ["--config", relative]
            skip = True
        elif arg.startswith("--config="):
            out.append(f"--config={relative}")
        else:
            out.append(arg)
    return out


def cmd_submit(args: argparse.Namespace, out: TextIO) -> int:
    args = split_args(args)
    rest = list(args.args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    need: dict[str, float] = {}
    notes: list[str] = []
    if args.workload == "train":  # a bad flag or config fails here, before any upload
        rest, need, notes = check_train_args(rest)
    client = JobsClient(args.address, args.token_file)
    tracking_uri = args.tracking_uri if args.tracking_uri is not None else os.environ.get("MLFLOW_TRACKING_URI", "")
    if not tracking_uri:
        notes.append("no --tracking-uri: the run is tracked in mlflow.db inside the job's temporary working "
                     "directory on the head; pass --tracking-uri http://MLFLOW_HOST:5000")
    for note in notes:
        print(f"simclr: note: {note}", file=sys.stderr)
    command = entrypoint(args.workload, rest, need, args.resources_timeout_s)
    job_id = client.submit(command, tracking_uri, metadata={"simclr_command": args.workload})
    if not args.json:
        print(job_id, file=out, flush=True)
    if args.no_wait:
        print(f"submitted {job_id} to {client.address}; follow it with `simclr jobs logs --follow {job_id}`",
              file=sys.stderr)
        if args.json:
            print(json.dumps({"job_id": job_id, "status": "PENDING", "address": client.address}), file=out)
        return 0
    print(f"submitted {job_id} to {client.address}; following its logs (Ctrl-C stops following, not the job)",
          file=sys.stderr, flush=True)
    status = _follow(client, job_id)
    if args.json:
        print(json.dumps({"job_id": job_id, "status": status, "address": client.address}), file=out)
    return 0 if status == "SUCCEEDED" else EXIT_JOB_FAILED


def _follow(client: JobsClient, job_id: str) -> str:
    stream = RunStream(sys.stderr, job_id)
    try:
        status = client.follow(job_id, stream.write)
        stream.close()
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job_id} keeps running (`simclr jobs stop {job_id}` stops it)",
              file=sys.stderr)
        raise
    info = client.info(job_id)
    message = (info.message or "").strip().splitlines()
    detail = f": {message[0]}" if message and status != "SUCCEEDED" else ""
    print(f"job {job_id} {status}{detail}", file=sys.stderr)
    return status


def cmd_jobs_list(args: argparse.Namespace, out: TextIO) -> int:
    client = JobsClient(args.address, args.token_file)
    jobs = client.list()
    if args.json:
        rows = [{"submission_id": j.submission_id, "job_id": j.job_id, "status": str(j.status.value),
                 "entrypoint": j.entrypoint, "start_time": j.start_time, "end_time": j.end_time,
                 "metadata": j.metadata or {}} for j in jobs]
        print(json.dumps(rows), file=out)
        return 0
    if not jobs:
        print(f"no jobs on the Ray cluster at {client.address}", file=out)
        return 0
    print(f"{'ID':<32} {'STATUS':<10} {'STARTED':<19} COMMAND", file=out)
    for j in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        command = j.entrypoint.split(" && ")[-1].replace("python -m orchestrator.cli ", "simclr ", 1)
        command = command if len(command) <= 70 else command[:67] + "..."
        print(f"{j.submission_id or j.job_id or '-':<32} {j.status.value:<10} {started:<19} {command}", file=out)
    return 0


def cmd_jobs_logs(args: argparse.Namespace, out: TextIO) -> int:
    client = JobsClient(args.address, args.token_file)
    if not args.follow:
        out.write(client.logs(args.job_id))
        return 0
    status = client.follow(args.job_id, print_stream(out))
    print(f"job {args.job_id} {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else EXIT_JOB_FAILED


def cmd_jobs_stop(args: argparse.Namespace, out: TextIO) -> int:
    client = JobsClient(args.address, args.token_file)
    if client.stop(args.job_id):
        print(f"stop requested for job {args.job_id}", file=out)
    else:
        print(f"job {args.job_id} had already ended ({client.status(args.job_id)})", file=out)
    return 0
