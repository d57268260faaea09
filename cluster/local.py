"""A cluster's real parts on one machine, to try the cluster path before paying for one:

    eval "$(python -m cluster.local up [--workers N] [--cpus-per-node C] [--bucket NAME] [--dir DIR])"
    python -m cluster.local status
    eval "$(python -m cluster.local env)"    # in another shell
    python -m cluster.local down

``up`` starts, as local processes on 127.0.0.1: an S3 endpoint (moto's server) with one bucket,
PostgreSQL with an MLflow tracking server on it (runs in the database, artifacts proxied to the bucket),
and a token-protected Ray cluster of a head and N worker nodes whose processes see the bucket as a
cloud node sees it through its role. It prints (and ``env`` prints again, and DIR/env.sh holds) the
``export`` lines that point ``simclr``, Ray, MLflow, pyarrow and boto3 at these parts, the same variables
a real cluster's users set to their endpoint, bucket, tracking server and token (docs/CLUSTER.md).
``down`` stops every process ``up`` recorded in DIR/state.json, nothing else on the machine, and deletes
what it wrote in DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import shlex
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.ray_nodes import LocalCluster, stop_nodes
from cluster.services import MlflowServer, Postgres, S3Server, ServiceError, alive, stop_group

DEFAULT_DIR = Path(tempfile.gettempdir()) / f"simclr-local-{getpass.getuser()}"
STATE = "state.json"
ENV_FILE = "env.sh"


@dataclass
class Stack:
    """The parts ``up`` started, as objects (the tests use them); ``state()`` is what DIR/state.json keeps."""

    folder: Path
    bucket: str
    s3: S3Server
    postgres: Postgres
    mlflow: MlflowServer
    ray: LocalCluster

    def env(self) -> dict[str, str]:
        """What a user's shell exports: the bucket's endpoint and credentials, the tracking server, and
        the Ray cluster's Jobs API and token (what ``simclr submit`` reads). Clients log artifacts through
        the tracking server, so MLflow's own S3 endpoint setting is the server's alone."""
        s3 = {k: v for k, v in self.s3.env().items() if k != "MLFLOW_S3_ENDPOINT_URL"}
        return {**s3, "MLFLOW_TRACKING_URI": self.mlflow.uri, "RAY_API_SERVER_ADDRESS": self.ray.dashboard_url,
                "RAY_AUTH_TOKEN_PATH": str(self.ray.token_file)}

    def state(self) -> dict[str, Any]:
        return {"dir": str(self.folder), "bucket": self.bucket, "env": self.env(),
                "s3": {"pid": self.s3.pid, "port": self.s3.port},
                "postgres": {"data": str(self.postgres.data), "port": self.postgres.port},
                "mlflow": {"pid": self.mlflow.pid, "port": self.mlflow.port},
                "ray": {"root": str(self.ray.root), "pids": [n.proc.pid for n in self.ray.nodes],
                        "dashboard": self.ray.dashboard_url, "token_file": str(self.ray.token_file)}}


def up(folder: Path, workers: int = 1, cpus: int = 3, bucket: str = "simclr", object_store_mb: int = 300,
       node_env: dict[str, str] | None = None) -> Stack:
    """Start every part and record them in ``folder``; on any failure stop what already started.
    ``node_env``: more variables for every Ray node (the tests' settings for Ray Train and MLflow)."""
    if (folder / STATE).exists():
        raise ServiceError(f"a local stack is already recorded in {folder}; `python -m cluster.local down "
                           f"--dir {folder}` first")
    remove_files(folder)  # what a failed `up` left
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # PostgreSQL's user must enter it
    started: list[S3Server | Postgres | MlflowServer | LocalCluster] = []
    try:
        s3 = S3Server.start(folder)
        started.append(s3)
        s3.make_bucket(bucket)
        postgres = Postgres.start(folder)
        started.append(postgres)
        mlflow = MlflowServer.start(folder, postgres.sqlalchemy_uri, f"s3://{bucket}/mlflow", s3.env())
        started.append(mlflow)
        # the nodes reach the bucket as a cloud node does through its role: credentials in their environment
        ray = LocalCluster(auth_mode="token", extra_env={**s3.env(), **(node_env or {})})
        started.append(ray)
        ray.start_head(num_cpus=cpus, object_store_mb=object_store_mb)
        for _ in range(workers):
            ray.add_node(num_cpus=cpus, object_store_mb=object_store_mb)
    except BaseException:
        for part in reversed(started):
            part.stop()
        raise
    stack = Stack(folder, bucket, s3, postgres, mlflow, ray)
    (folder / STATE).write_text(json.dumps(stack.state(), indent=1))
    (folder / ENV_FILE).write_text(env_script(stack.env()))
    return stack


def remove_files(folder: Path) -> None:
    """Delete what ``up`` writes in ``folder`` (and the folder, once empty); nothing else in it."""
    shutil.rmtree(folder / "pg", ignore_errors=True)
    for name in (STATE, ENV_FILE, "s3.log", "mlflow.log"):
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def env_script(env: dict[str, str]) -> str:
    lines = ["# The local stack of `python -m cluster.local up`: source this file to use it."]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def down(state: dict[str, Any]) -> None:
    """Stop every part ``state`` records: the Ray nodes (workers first), the tracking server, the
    database, the S3 endpoint."""
    stop_nodes(reversed(state["ray"]["pids"]), Path(state["ray"]["root"]))
    stop_group(state["mlflow"]["pid"])
    Postgres(Path(state["postgres"]["data"]), state["postgres"]["port"]).stop()
    stop_group(state["s3"]["pid"])


def load_state(folder: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((folder / STATE).read_text())
    except FileNotFoundError:
        raise ServiceError(f"no local stack in {folder} (start one with `python -m cluster.local up`)") from None
    return state


def status(state: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(part, where, up) for each part."""
    pg = Postgres(Path(state["postgres"]["data"]), state["postgres"]["port"])
    ray = state["ray"]
    nodes = _ray_nodes(ray["dashboard"], Path(ray["token_file"]))
    return [
        ("s3", state["env"]["AWS_ENDPOINT_URL"] + f" (bucket s3://{state['bucket']})", alive(state["s3"]["pid"])),
        ("postgres", f"127.0.0.1:{pg.port} ({pg.data})", pg.running()),
        ("mlflow", state["env"]["MLFLOW_TRACKING_URI"], alive(state["mlflow"]["pid"])),
        ("ray", f"{ray['dashboard']} ({nodes} of {len(ray['pids'])} nodes alive)", nodes == len(ray["pids"])),
    ]


def _ray_nodes(dashboard: str, token_file: Path) -> int:
    try:
        req = urllib.request.Request(f"{dashboard}/api/v0/nodes?limit=1000",
                                     headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            rows = json.loads(resp.read())["data"]["result"]["result"]
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return 0
    return sum(1 for row in rows if row.get("state") == "ALIVE")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("up", "down", "status", "env"))
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"the stack's folder (default {DEFAULT_DIR})")
    p.add_argument("--workers", type=int, default=1, help="up: Ray worker nodes besides the head (default 1)")
    p.add_argument("--cpus-per-node", type=int, default=3, help="up: logical CPUs of each Ray node (default 3)")
    p.add_argument("--object-store-mb", type=int, default=300, help="up: each Ray node's object store (default 300)")
    p.add_argument("--bucket", default="simclr", help="up: the bucket to create (default simclr)")
    args = p.parse_args(argv)
    folder = args.dir.resolve()
    try:
        if args.command == "up":
            if args.workers < 0 or args.cpus_per_node < 1:
                raise ServiceError("--workers must be >= 0 and --cpus-per-node >= 1")
            stack = up(folder, args.workers, args.cpus_per_node, args.bucket, args.object_store_mb)
            print(env_script(stack.env()), end="")
            print(f"cluster.local: up: {args.workers + 1} Ray nodes, bucket s3://{args.bucket}, state in {folder}; "
                  f"`python -m cluster.local down` stops it", file=sys.stderr)
            return 0
        state = load_state(folder)
        if args.command == "env":
            print(env_script(state["env"]), end="")
            return 0
        if args.command == "down":
            down(state)
            remove_files(folder)
            print(f"stopped the local stack in {folder}", file=sys.stderr)
            return 0
        rows = status(state)
        for part, where, ok in rows:
            print(f"{part:<9} {'up' if ok else 'DOWN':<5} {where}")
        return 0 if all(ok for _, _, ok in rows) else 1
    except ServiceError as err:
        print(f"cluster.local: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
