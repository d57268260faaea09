"""A cluster's storage and tracking services as local processes on 127.0.0.1: an S3 endpoint (moto's
server), PostgreSQL, and an MLflow tracking server on that database with its artifacts in the bucket.

These are the parts a team's cluster reaches over the network (a bucket, a database, a tracking server),
run on one machine so that the whole path can be tried and tested without a cloud account: the tests
start them once per session (tests/services.py), ``python -m cluster.local up`` starts them for a user.
Every service runs in its own process group, so stopping one stops its workers too and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = os.path.dirname(sys.executable)
REGION = "us-east-1"
PG_USER = "postgres"  # PostgreSQL refuses to run as root; as root, its programs run as this user


class ServiceError(RuntimeError):
    """A service that cannot start: a missing program, or one that exited or never answered."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def program(name: str, hint: str) -> str:
    """The path of ``name``: the venv's bin folder first (moto_server, mlflow), then PATH."""
    found = shutil.which(name, path=VENV_BIN + os.pathsep + os.environ.get("PATH", ""))
    if found is None:
        raise ServiceError(f"{name} not found (looked in {VENV_BIN} and on PATH); {hint}")
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_group(pid: int, popen: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL what is left after ``timeout``; reap the leader
    when this process started it (``popen``)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=0.2)
            if not alive(pid):
                return
            time.sleep(0.2)


def wait_http(url: str, timeout: float, what: str, popen: subprocess.Popen[bytes] | None, log: Path) -> None:
    """Until ``url`` answers 200; a ServiceError with the log's tail if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            raise ServiceError(f"{what} exited with code {popen.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise ServiceError(f"{what} did not answer at {url} within {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session (process group), its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


# --- S3 -----------------------------------------------------------------------------------------------------


@dataclass
class S3Server:
    """moto's server: a real HTTP S3 API, in memory. Clients find it through the standard variables
    (``env()``); its credentials are any pair unless ``require_credentials`` switched IAM checks on."""

    port: int
    pid: int
    log: Path
    key_id: str = "simclr-local"
    # random, so that a test can look for it wherever it must not appear
    secret: str = field(default_factory=lambda: "local-" + secrets.token_hex(12))
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def start(cls, folder: Path, port: int = 0, timeout: float = 60.0) -> S3Server:
        exe = program("moto_server", "install the dev extra: pip install -e '.[dev]' (moto[server])")
        port = port or free_port()
        log = folder / "s3.log"
        popen = spawn([exe, "-H", "127.0.0.1", "-p", str(port)], log)
        server = cls(port, popen.pid, log, popen=popen)
        try:
            wait_http(f"{server.endpoint}/moto-api/", timeout, "moto_server", popen, log)
        except ServiceError:
            server.stop()
            raise
        return server

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What pyarrow, boto3 and Ray Train read (``AWS_*``), and MLflow's artifact client
        (``MLFLOW_S3_ENDPOINT_URL``): a client with these reaches the bucket as on AWS."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_REGION": REGION, "MLFLOW_S3_ENDPOINT_URL": self.endpoint}

    def client(self) -> object:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name=REGION)

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (idempotent); returns ``s3://name``."""
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):  # type: ignore[attr-defined]
            client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return f"s3://{name}"

    def require_credentials(self, on: bool) -> None:
        """moto's IAM access control: on, every request needs an access key IAM knows (none is made
        here, so every request is refused, as with revoked keys); off, any credentials pass."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0" if on else b"inf",
                                     method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10):
            pass

    def stop(self) -> None:
        stop_group(self.pid, self.popen)


# --- PostgreSQL ---------------------------------------------------------------------------------------------


def _as_pg_user(cmd: list[str]) -> list[str]:
    """``cmd`` as the ``postgres`` user when this process is root (PostgreSQL refuses root), else as is."""
    if os.geteuid() != 0:
        return cmd
    _require_pg_user()
    return [program("runuser", "it comes with util-linux"), "-u", PG_USER, "--", *cmd]


def _require_pg_user() -> None:
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServiceError(f"PostgreSQL refuses to run as root and there is no {PG_USER!r} user to run it as; "
                           f"create one (useradd {PG_USER}) or run as another user") from None


def _pg_run(cmd: list[str], what: str, timeout: float = 120.0) -> None:
    proc = subprocess.run(_as_pg_user(cmd), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ServiceError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")


@dataclass
class Postgres:
    """A PostgreSQL cluster in ``data`` (a folder of its own), on 127.0.0.1 only, with one superuser
    ``mlflow`` that logs in without a password from this machine (``-A trust``)."""

    data: Path
    port: int
    user: str = "mlflow"

    @classmethod
    def start(cls, folder: Path, port: int = 0) -> Postgres:
        hint = "install PostgreSQL (e.g. apt-get install postgresql) and put its bin folder on PATH"
        initdb = program("initdb", hint)
        program("pg_ctl", hint)  # both found before any work
        pg = cls(folder / "pg", port or free_port())
        pg.data.mkdir(mode=0o700)
        if os.geteuid() == 0:  # the server's user must own its folder and enter every folder above it
            _require_pg_user()
            shutil.chown(pg.data, PG_USER, PG_USER)
            for parent in pg.data.parents:
                if not parent.stat().st_mode & 0o001:
                    parent.chmod(parent.stat().st_mode | 0o001)
        _pg_run([initdb, "-D", str(pg.data), "-A", "trust", "-U", pg.user, "-E", "UTF8", "--no-sync"], "initdb")
        pg.resume()
        return pg

    @property
    def sqlalchemy_uri(self) -> str:
        """The backend-store URI MLflow takes (``+psycopg2``: SQLAlchemy's plain ``postgresql://`` looks for
        psycopg 3)."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/postgres"

    def resume(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k ''"  # TCP on 127.0.0.1 only, no unix socket
        cmd = [self._ctl(), "-D", str(self.data), "-o", options, "-l", str(self.data / "server.log"), "-w", "-t", "60",
               "start"]
        # its own session: the server outlives pg_ctl, and a terminal's Ctrl-C must not reach it
        proc = subprocess.run(_as_pg_user(cmd), capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL,
                              start_new_session=True)
        if proc.returncode != 0:
            raise ServiceError(f"pg_ctl start failed ({proc.returncode}): {proc.stderr.strip()[-1000:]}\n"
                               f"{tail(self.data / 'server.log')}")

    def pause(self) -> None:
        """Stop the server (fast: open sessions are ended), keeping its data for ``resume``."""
        if self.running():
            _pg_run([self._ctl(), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"], "pg_ctl stop")

    def running(self) -> bool:
        pid = self.pid()
        return pid is not None and alive(pid)

    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        try:
            self.pause()
        except (ServiceError, subprocess.TimeoutExpired):
            pid = self.pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    @staticmethod
    def _ctl() -> str:
        return program("pg_ctl", "install PostgreSQL and put its bin folder on PATH")


# --- MLflow --------------------------------------------------------------------------------------------------


@dataclass
class MlflowServer:
    """``mlflow server`` with its runs in PostgreSQL and its artifacts proxied to the bucket
    (``--serve-artifacts``): clients log over HTTP and need no credentials for the bucket."""

    port: int
    pid: int
    log: Path
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def start(cls, folder: Path, backend_uri: str, artifacts: str, s3_env: dict[str, str], port: int = 0,
              timeout: float = 180.0) -> MlflowServer:
        port = port or free_port()
        log = folder / "mlflow.log"
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
               "--artifacts-destination", artifacts, "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        popen = spawn(cmd, log, env={**env, **s3_env})
        server = cls(port, popen.pid, log, popen=popen)
        try:
            wait_http(f"{server.uri}/health", timeout, "mlflow server", popen, log)
        except ServiceError:
            server.stop()
            raise
        return server

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_group(self.pid, self.popen)
