"""The cluster's real parts for the tests, started once per session on 127.0.0.1 by the same code as
``python -m cluster.local up`` and stopped at its end by ``down``: an S3 endpoint (moto's server), an
MLflow tracking server on PostgreSQL whose artifacts go to a bucket there, and a token-protected Ray
cluster. tests/conftest.py imports the fixtures, so every test module can ask for them; a test makes
its own buckets.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from cluster.local import Stack, up
from cluster.local import main as local_main
from cluster.ray_nodes import stray_pids
from cluster.services import REGION, MlflowServer, Postgres, S3Server, ServiceError, alive, free_port
from orchestrator.errors import UserError
from orchestrator.tracking import probe_server


@dataclass
class S3:
    """The session's S3 endpoint, with what tests do to it."""

    server: S3Server

    def env(self) -> dict[str, str]:
        """The variables a client process needs to reach the bucket (pyarrow, boto3, Ray Train, MLflow)."""
        return self.server.env()

    def bucket(self, stem: str = "t") -> str:
        """A new, empty bucket of the test's own: ``s3://<stem>-<random>``."""
        return self.server.make_bucket(f"{stem}-{secrets.token_hex(4)}")

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(access_key=self.server.key_id, secret_key=self.server.secret, region=REGION,
                                 endpoint_override=self.server.endpoint, scheme="http")

    def upload(self, local: Path, uri: str) -> str:
        """Copy a local file or folder to ``uri`` (``s3://bucket/prefix``); returns ``uri``."""
        target = uri.removeprefix("s3://").rstrip("/")
        if local.is_dir():
            pafs.copy_files(str(local), target, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.filesystem())
        else:
            with self.filesystem().open_output_stream(target) as out:
                out.write(local.read_bytes())
        return uri

    def read(self, uri: str) -> bytes:
        with self.filesystem().open_input_stream(uri.removeprefix("s3://")) as f:
            data: bytes = f.read()
            return data

    def files(self, uri: str) -> list[str]:
        """Every object under ``uri``, as paths relative to it."""
        base = uri.removeprefix("s3://").rstrip("/")
        infos = self.filesystem().get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path[len(base) + 1:] for i in infos if i.type == pafs.FileType.File)

    @contextlib.contextmanager
    def refusing_credentials(self) -> Iterator[None]:
        """Every request refused for its credentials (moto's IAM access control) inside the block."""
        self.server.require_credentials(True)
        try:
            yield
        finally:
            self.server.require_credentials(False)


@dataclass
class TrackingServer:
    """The session's MLflow server on PostgreSQL, its artifacts in ``artifacts`` (a bucket on ``s3``)."""

    postgres: Postgres
    server: MlflowServer
    artifacts: str

    @property
    def uri(self) -> str:
        return self.server.uri

    @contextlib.contextmanager
    def database_down(self) -> Iterator[None]:
        """PostgreSQL stopped inside the block (the MLflow server keeps running and answers 5xx); after
        it, the database is back and the server answers queries again."""
        self.postgres.pause()
        try:
            yield
        finally:
            self.postgres.resume()
            self._wait_for_queries()

    def _wait_for_queries(self, timeout: float = 60.0) -> None:
        """The server's pooled connections to the stopped database fail once each, then reconnect."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe_server(self.uri)
                return
            except UserError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


class Outage:
    """A TCP forwarder on 127.0.0.1 to a service's port, which a test can cut and restore: while cut, new
    connections are refused and open ones reset, as when a storage endpoint goes away."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self.restore()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._open = self._open, set()
        if listener is not None:
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
                conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut: the listener was closed
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for conn in (src, dst):  # one side ended: end the other direction too
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._open.discard(src)
        src.close()  # each direction's pump closes the socket it reads

    def close(self) -> None:
        self.cut()


_STOPS: list[Callable[[], None]] = []  # the running stack's stop (one at most)


def stop_stack() -> None:
    """Stop the session's stack now, if it runs (tests/conftest.py calls it after the stack's last test)."""
    while _STOPS:
        _STOPS.pop()()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The whole local stack, as ``python -m cluster.local up`` starts it for users: S3, PostgreSQL + the
    MLflow server, and a token-protected Ray head + one worker node of 3 logical CPUs each (a run with
    2-CPU train workers puts one on each node and leaves a CPU per node for Ray Data). Stopped as users
    stop it (``down``) after the last test that uses it, or at the end, and checked: nothing it started
    is left running."""
    folder = Path(tempfile.mkdtemp(prefix="stack-", dir="/tmp"))
    try:
        # the worker-group start timeout raised for a loaded machine (after a node loss Ray Train waits for
        # the replacement node); the suite's controller poll (tests/conftest.py); system metrics every
        # second, so that a short run has some from each node
        started = up(folder, workers=1, cpus=3, bucket="simclr-tests", object_store_mb=150,
                     node_env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "240",
                               "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"],
                               "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
    except ServiceError as err:
        pytest.fail(f"the local stack did not start: {err}", pytrace=False)
    state = started.state()

    def stop() -> None:
        assert local_main(["down", "--dir", str(folder)]) == 0
        left = [pid for pid in (state["s3"]["pid"], state["mlflow"]["pid"], *state["ray"]["pids"]) if alive(pid)]
        assert not left and not started.postgres.running() and not stray_pids(started.ray.root), \
            f"left running after `cluster.local down`: {left}"
        assert not folder.exists()

    _STOPS.append(stop)
    try:
        yield started
    finally:
        stop_stack()


@pytest.fixture(scope="session")
def s3(stack: Stack) -> S3:
    return S3(stack.s3)


@pytest.fixture(scope="session")
def tracking_server(stack: Stack) -> TrackingServer:
    return TrackingServer(stack.postgres, stack.mlflow, f"s3://{stack.bucket}/mlflow")
