"""Ray Jobs API client for ``simclr submit`` / ``simclr jobs``: runtime env, token, one-line errors.

The job carries the project as its ``working_dir`` (uploaded through the dashboard on every
submission, minus data, virtualenvs, MLflow stores and caches) and runs the CLI from it with the
cluster's own ``python``, so the code that runs is the code on this machine; the cluster only needs
the dependencies (``ray_cluster.yaml`` installs them, the KubeRay image bakes them in).

Token authentication (Ray >= 2.52): the dashboard wants ``Authorization: Bearer <token>``.
``JobSubmissionClient`` adds that header by itself only when this process has ``RAY_AUTH_MODE=token``;
we always pass it explicitly as ``headers=`` when a token is found, so the client works whatever
``RAY_AUTH_MODE`` says here (a server without auth ignores the header). The token is read from
``--token-file``, ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or Ray's default file
``~/.ray/auth_token`` — the same order Ray uses — and is never printed or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from orchestrator.errors import UserError
from orchestrator.storage import is_uri

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # what `ray dashboard ray_cluster.yaml` forwards to
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
CONNECT_TIMEOUT_S = 10.0
STOP_GRACE_S = 120  # from a stop's SIGTERM until Ray SIGKILLs the job: the checkpoint and the run's end fit in it

# gitignore patterns, anchored at the project root ("/data", not "data": a package folder named
# data deeper down must still ship). Ray also honours the project's .gitignore.
WORKING_DIR_EXCLUDES = [
    "/data", "/.venv", "/venv", "/mlruns", "/mlartifacts", "/simclr_runs", "/.git", "*.db",
    "__pycache__", "*.pyc", "/.mypy_cache", "/.pytest_cache", "/.ruff_cache", "/*.egg-info",
]

TOKEN_HELP = ("pass the cluster's token with --token-file FILE or the RAY_AUTH_TOKEN environment variable "
              "(on the head: `ray get-auth-token`)")


def project_root() -> Path:
    """The folder that holds ``orchestrator/``, ``workloads/`` and ``cluster/``."""
    return Path(__file__).resolve().parent.parent


def resolve_address(address: str = "") -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS``, else an http(s) ``RAY_ADDRESS``, else the tunnel's."""
    if not address:
        env_api = os.environ.get("RAY_API_SERVER_ADDRESS", "")
        env_ray = os.environ.get("RAY_ADDRESS", "")
        address = env_api or (env_ray if env_ray.startswith(("http://", "https://")) else "") or DEFAULT_ADDRESS
    if not is_uri(address):
        address = "http://" + address
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--address: {address!r} is not the dashboard's HTTP address; give e.g. http://HEAD:8265")
    return address.rstrip("/")


@dataclass(frozen=True)
class Token:
    """A bearer token and where it came from (the source is safe to show; the value never is)."""

    value: str
    source: str

    def __repr__(self) -> str:  # keep the value out of tracebacks and debug output
        return f"Token(source={self.source!r})"


def load_token(token_file: str = "") -> Token | None:
    """The token Ray would use, with ``--token-file`` first; None when there is none."""
    if token_file:
        return Token(_read_token(Path(token_file).expanduser(), "--token-file"), f"--token-file {token_file}")
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return Token(os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN")
    if os.environ.get("RAY_AUTH_TOKEN_PATH", ""):
        path = os.environ["RAY_AUTH_TOKEN_PATH"]
        return Token(_read_token(Path(path).expanduser(), "RAY_AUTH_TOKEN_PATH"), f"RAY_AUTH_TOKEN_PATH={path}")
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return Token(_read_token(default, str(default)), str(default))
    return None


def _read_token(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as err:
        raise UserError(f"{what}: cannot read {path} ({err.strerror or err})") from err
    if not value:
        raise UserError(f"{what}: {path} is empty; it should hold the cluster's token")
    return value


def runtime_env(tracking_uri: str = "", root: Path | None = None) -> dict[str, Any]:
    """The job's runtime env: the project as working_dir, where MLflow is, and how long a stopped job
    may take to stop.

    ``RAY_JOB_STOP_WAIT_TIME_S``: ``simclr jobs stop`` (and ``ray job stop``) send SIGTERM to the job,
    and Ray's job supervisor, which reads this from the job's env_vars, SIGKILLs it 3 s later by default:
    too soon for a training to save its checkpoint and end its MLflow run KILLED.
    ``MLFLOW_DISABLE_TELEMETRY``: on every node of the job, for the reason ``simclr`` sets it for itself
    (orchestrator/cli/main.py: MLflow's telemetry thread changes os.environ under HTTP requests).
    Object-store credentials never travel here: they come from the nodes' role (instance profile / IRSA).
    """
    env_vars = {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S), "MLFLOW_DISABLE_TELEMETRY": "true"}
    if tracking_uri:
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    return {"working_dir": str(root or project_root()), "excludes": list(WORKING_DIR_EXCLUDES), "env_vars": env_vars}


def entrypoint(command: str, args: list[str], need: dict[str, float] | None = None,
               resources_timeout_s: float = 1200.0) -> str:
    """``python -m orchestrator.cli <command> <args>``: ``simclr`` run from the uploaded working_dir.

    ``python -m`` puts the working_dir first on ``sys.path``, so the uploaded code runs even where an
    older copy of the project is installed; ``python`` is the one on PATH when ``ray start`` ran.
    With ``need`` ({"GPU": 4}), ``cluster.resources`` first waits for the autoscaler to provide it.
    """
    run = shlex.join(["python", "-m", "orchestrator.cli", command, *args])
    wanted = {k: v for k, v in (need or {}).items() if v > 0}
    if not wanted:
        return run
    wait = ["python", "-m", "cluster.resources", "--timeout-s", f"{resources_timeout_s:g}"]
    for key, flag in (("CPU", "--cpus"), ("GPU", "--gpus")):
        if key in wanted:
            wait += [flag, f"{wanted[key]:g}"]
    return f"{shlex.join(wait)} && {run}"


@contextlib.contextmanager
def _without_env(names: tuple[str, ...]) -> Iterator[None]:
    """Hide variables for the duration of the block. ``JobSubmissionClient`` lets RAY_ADDRESS /
    RAY_API_SERVER_ADDRESS override its ``address`` argument (documented Ray behaviour), so an
    explicit ``--address`` would lose to a RAY_ADDRESS exported for ``ray.init``."""
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


class JobsClient:
    """The few Jobs API calls the CLI needs; every failure a user can fix becomes one UserError line."""

    def __init__(self, address: str = "", token_file: str = "") -> None:
        self.address = resolve_address(address)
        self.token = load_token(token_file)
        _check_reachable(self.address)
        headers = {"Authorization": f"Bearer {self.token.value}"} if self.token else None
        from ray.job_submission import JobSubmissionClient

        _quiet_client_logs()
        with self._errors(), _without_env(("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")):
            self._client = JobSubmissionClient(self.address, headers=headers)

    @contextlib.contextmanager
    def _errors(self, job_id: str = "") -> Iterator[None]:
        """Map Ray's exceptions to one-line UserErrors (never echoing the token)."""
        import requests
        from ray.exceptions import AuthenticationError

        try:
            yield
        except AuthenticationError as err:
            text = err.message if hasattr(err, "message") else str(err)
            if "Forbidden" in text or "403" in text or "invalid" in text.lower():
                source = self.token.source if self.token else "no token"
                raise UserError(f"the Ray cluster at {self.address} rejected the token from {source} (403); "
                                f"{TOKEN_HELP}") from None
            if self.token is None:
                raise UserError(f"the Ray cluster at {self.address} requires a token (401) and none was found; "
                                f"{TOKEN_HELP}") from None
            raise UserError(f"the Ray cluster at {self.address} received no token (401) although one was sent from "
                            f"{self.token.source}: does a proxy drop the Authorization header?") from None
        except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
            raise UserError(f"--address: no Ray cluster answers at {self.address} ({_first_line(err)})") from None
        except RuntimeError as err:
            text = str(err)
            if job_id and ("404" in text or "does not exist" in text):
                raise UserError(f"no job {job_id!r} on the Ray cluster at {self.address} "
                                f"(see `simclr jobs list`)") from None
            if "Version check returned 404" in text or "Jobs API is not supported" in text:
                raise UserError(f"--address: {self.address} answers but is not a Ray dashboard with the Jobs API "
                                f"(ray[default] on the head?)") from None
            raise
        except ValueError as err:  # e.g. the packaged working_dir is over Ray's upload limit
            if "Package size" in str(err):
                raise UserError(f"the project is too large to upload as the job's working_dir: {_first_line(err)}; "
                                f"add large files to .gitignore") from None
            raise

    def submit(self, entrypoint: str, tracking_uri: str = "", metadata: dict[str, str] | None = None) -> str:
        with self._errors():
            job_id: str = self._client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env(tracking_uri),
                                                  metadata=metadata or {})
        return job_id

    def status(self, job_id: str) -> str:
        with self._errors(job_id):
            return str(self._client.get_job_status(job_id).value)

    def info(self, job_id: str) -> Any:
        with self._errors(job_id):
            return self._client.get_job_info(job_id)

    def list(self) -> list[Any]:
        with self._errors():
            jobs: list[Any] = self._client.list_jobs()
        return sorted(jobs, key=lambda j: j.start_time or 0)

    def logs(self, job_id: str) -> str:
        with self._errors(job_id):
            return str(self._client.get_job_logs(job_id))

    def stop(self, job_id: str) -> bool:
        with self._errors(job_id):
            return bool(self._client.stop_job(job_id))

    def wait(self, job_id: str, poll_s: float = 2.0, timeout_s: float = 0.0) -> str:
        """Poll until the job is SUCCEEDED, FAILED or STOPPED; return that status."""
        deadline = time.monotonic() + timeout_s if timeout_s else float("inf")
        while True:
            status = self.status(job_id)
            if status in TERMINAL:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {status} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def follow(self, job_id: str, write: Callable[[str], Any], poll_s: float = 2.0) -> str:
        """Stream the job's logs as they come until it ends; return its final status.

        If the log stream drops (network, head restart) the job keeps running: we say so and fall
        back to polling its status, so the exit code still reflects how the job ended.
        """
        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                write(chunk)

        import aiohttp

        self.status(job_id)  # an unknown id is a UserError here, not a failed websocket handshake

        with self._errors(job_id):
            try:
                asyncio.run(tail())
            except (RuntimeError, OSError, aiohttp.ClientError) as err:
                if "does not exist" in str(err) or "404" in str(err):
                    raise
                write(f"(log stream interrupted: {_first_line(err)}; waiting for the job to end)\n")
        return self.wait(job_id, poll_s)


def _quiet_client_logs() -> None:
    """Keep the client's stderr for the job's own lines. Ray logs a line per ignored file and per default
    exclude while packaging the working_dir (real packaging problems raise), and the Jobs SDK an INFO
    line when the log stream ends ("WebSocket closed for job ... with close code 1000"; an abnormal
    close raises)."""
    for name in ("ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir",
                 "ray.dashboard.modules.dashboard_sdk"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("ray.dashboard.modules.job.sdk").setLevel(logging.WARNING)


def _check_reachable(address: str) -> None:
    """Fail in seconds when nothing listens: Ray's HTTP calls have no timeout, and a firewall that
    drops packets (the dashboard port is closed on purpose in ray_cluster.yaml) would hang forever."""
    parsed = urlparse(address)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    host = parsed.hostname or ""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UserError(f"--address: no Ray cluster answers at {address} ({reason}); is the head up, and is its "
                        f"dashboard port reachable (e.g. `ray dashboard ray_cluster.yaml` forwards it to "
                        f"{DEFAULT_ADDRESS})?") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def print_stream(out: TextIO) -> Callable[[str], None]:
    """The job's log as it comes, every line (``simclr jobs logs --follow``)."""
    def write(chunk: str) -> None:
        out.write(chunk)
        out.flush()

    return write


# The job manager's INFO lines in Ray's log format ("2026-11-29 07:18:22,178\tINFO job_manager.py:581 --
# Runtime env is setting up."); its warnings (the supervisor could not start) stay in sight.
_JOB_MANAGER_INFO = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\tINFO job_manager\.py:\d+ -- ")


class RunStream:
    """What ``simclr submit`` shows of the job's log while it follows the run: the run's own lines (our
    header, epoch lines and result; the driver sends Ray's output to the run's log file), without the
    lines Ray's job manager and supervisor write into the same log around them. Those stay in the job's
    log (``simclr jobs logs``, ``ray job logs``). Chunks may end mid-line: lines are judged whole."""

    def __init__(self, out: TextIO, job_id: str) -> None:
        self.out = out
        self.entrypoint = f"Running entrypoint for job {job_id}: "  # the supervisor, before our command
        self.partial = ""

    def is_ray_line(self, line: str) -> bool:
        return line.startswith(self.entrypoint) or bool(_JOB_MANAGER_INFO.match(line))

    def write(self, chunk: str) -> None:
        *lines, self.partial = (self.partial + chunk).split("\n")
        kept = "".join(line + "\n" for line in lines if not self.is_ray_line(line))
        if kept:
            self.out.write(kept)
            self.out.flush()

    def close(self) -> None:
        """The last line, when the log did not end with a newline."""
        if self.partial and not self.is_ray_line(self.partial):
            self.out.write(self.partial + "\n")
            self.out.flush()
        self.partial = ""
