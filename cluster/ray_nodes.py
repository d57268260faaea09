"""A multi-node Ray cluster on 127.0.0.1: a head and worker nodes as local processes, token-protected.

Every node is a ``ray start --block`` process in its own process group, so one node (its raylet, object
store, agents and workers) can be killed with one ``killpg``, as a lost machine would be, and the whole
cluster torn down without ``ray stop``: ``ray stop`` kills *every* Ray process on the machine by name,
including other people's clusters, whatever ``--temp-dir`` says. Each cluster has its own short temp dir
(unix socket paths are limited to 107 bytes), its own ports and its own HOME, so it never reads or writes
the real ``~/.ray`` (Ray 2.60 turns token auth on by itself when it finds ``~/.ray/auth_token``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.services import VENV_BIN, free_port

START_ATTEMPTS = 3
# The GCS declares a node dead after this many failed health checks this far apart (Ray's defaults: 5, 3 s).
# On one machine a lost node's raylet refuses the connection at once: 3 checks a second apart say so in 3 s
# instead of 15, and a live but busy raylet still has each check's 10 s timeout to answer.
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
JOIN_TIMEOUT_S = 120  # per attempt; a node joins in seconds, in about a minute on a loaded 2-core machine


def descendant_pids(root: int) -> list[int]:
    """Every live descendant of ``root``, from the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_node(pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
    """SIGKILL a node: its process group (raylet, object store, agents, workers) and every descendant,
    which includes job drivers (the job supervisor starts them in their own session)."""
    descendants = descendant_pids(pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=30)


def stray_pids(root: Path) -> list[int]:
    """Processes (a cluster's: their command line names its unique root dir) still alive."""
    marker = str(root) + "/"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def stop_nodes(pids: Iterable[int], root: Path) -> None:
    """Kill the nodes (workers first, the head's GCS last), then any process still naming ``root`` (the
    cluster's alone: the dir is unique), and delete ``root``."""
    for pid in pids:
        kill_node(pid)
    deadline = time.monotonic() + 15
    while (strays := stray_pids(root)) and time.monotonic() < deadline:
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    log_path: Path
    tag: str  # a custom resource only this node has, to find it in the state API

    def kill(self) -> None:
        kill_node(self.proc.pid, self.proc)


@dataclass
class LocalCluster:
    """Head + worker nodes on 127.0.0.1; ``auth_mode`` is "token" or "disabled" on every node.
    ``extra_env`` is set on every node (what a real node gets from its image or role: the storage
    endpoint and credentials, system-metrics settings)."""

    auth_mode: str = "token"
    extra_env: dict[str, str] = field(default_factory=dict)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    def __post_init__(self) -> None:
        self.home = self.root / "home"
        (self.home / ".ray").mkdir(parents=True)
        self.token_file = self.home / ".ray" / "auth_token"
        self.token_file.write_text(self.token)
        self.token_file.chmod(0o600)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def env(self) -> dict[str, str]:
        """The environment of every node: the venv first on PATH (jobs run the ``python`` found there)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_", "MLFLOW_", "AWS_")) and k not in ("HOME", "VIRTUAL_ENV", "PYTHONPATH")}
        env.update(PATH=VENV_BIN + os.pathsep + env.get("PATH", ""), HOME=str(self.home),
                   RAY_AUTH_MODE=self.auth_mode, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        env.update(self.extra_env)
        return env

    def _launch(self, index: int, attempt: int, args: list[str], num_cpus: int,
                resources: dict[str, float] | None, object_store_mb: int) -> Node:
        tag = f"node_tag_{index}"
        log_path = self.root / f"{tag}.log"
        # Each node its own temp dir, as on separate machines: nodes sharing one would share (and
        # garbage-collect under each other) the unpacked runtime_env working_dir of running jobs.
        temp_dir = self.root / f"t{index}_{attempt}"
        cmd = [os.path.join(VENV_BIN, "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
               "--num-cpus", str(num_cpus), "--num-gpus", "0", "--temp-dir", str(temp_dir),
               "--object-store-memory", str(object_store_mb * 2**20),
               "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
               "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
               "--disable-usage-stats", *args, "--resources", json.dumps({**(resources or {}), tag: 1})]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root)
        return Node(proc, log_path, tag)

    def _start(self, head: bool, num_cpus: int, resources: dict[str, float] | None, object_store_mb: int) -> Node:
        """Start a node and wait until it is ALIVE in the cluster. Retried: `ray start` gives its raylet
        30 s to register with the GCS (fixed in Ray 2.60), too little on a loaded machine; and a worker
        node that keeps failing to reach the GCS without exiting is killed after JOIN_TIMEOUT_S and
        started again."""
        index = len(self.nodes)
        for attempt in range(START_ATTEMPTS):
            if head:
                self.gcs_port, self.dashboard_port = free_port(), free_port()
                args = ["--head", "--port", str(self.gcs_port), "--dashboard-host", "127.0.0.1",
                        "--dashboard-port", str(self.dashboard_port), "--include-dashboard", "true",
                        "--ray-client-server-port", str(free_port()), "--system-config", json.dumps(HEALTH_CHECK)]
            else:
                args = ["--address", self.gcs_address]
            node = self._launch(index, attempt, args, num_cpus, resources, object_store_mb)
            try:
                self._wait(lambda n=node: self.node_id(n) is not None, JOIN_TIMEOUT_S, f"node_tag_{index} to join",
                           node)
            except (RuntimeError, TimeoutError):  # `ray start` gave up, or never got in
                node.kill()
                if attempt == START_ATTEMPTS - 1:
                    raise
                continue
            self.nodes.append(node)
            return node
        raise AssertionError("unreachable")

    def start_head(self, num_cpus: int = 2, resources: dict[str, float] | None = None,
                   object_store_mb: int = 150) -> Node:
        return self._start(True, num_cpus, resources, object_store_mb)

    def add_node(self, num_cpus: int = 2, resources: dict[str, float] | None = None,
                 object_store_mb: int = 150) -> Node:
        return self._start(False, num_cpus, resources, object_store_mb)

    def _get(self, path: str) -> Any:
        req = urllib.request.Request(self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def _rows(self, what: str) -> list[dict[str, Any]]:
        try:
            body = self._get(f"/api/v0/{what}?limit=10000&detail=1")
        except (OSError, urllib.error.URLError, ValueError):
            return []
        rows: list[dict[str, Any]] = body.get("data", {}).get("result", {}).get("result", [])
        return rows

    def node_id(self, node: Node) -> str | None:
        """The Ray node id of a live node, None until it has joined (or once it is dead)."""
        for row in self._rows("nodes"):
            if row.get("state") == "ALIVE" and node.tag in (row.get("resources_total") or {}):
                return str(row["node_id"])
        return None

    def alive_nodes(self) -> int:
        return sum(1 for row in self._rows("nodes") if row.get("state") == "ALIVE")

    def actors_on(self, node: Node, class_name: str) -> list[dict[str, Any]]:
        node_id = self.node_id(node)
        return [a for a in self._rows("actors")
                if a.get("state") == "ALIVE" and a.get("class_name") == class_name and a.get("node_id") == node_id]

    def _wait(self, ready: Any, timeout: float, what: str, node: Node) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray start exited ({node.proc.returncode}) waiting for {what}:\n"
                                   f"{node.log_path.read_text()[-3000:]}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"timed out waiting for {what}:\n{node.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Every node killed, workers first and the head last, then whatever still names the root dir."""
        for node in reversed(self.nodes):
            node.kill()
        stop_nodes([], self.root)

    def stray_pids(self) -> list[int]:
        return stray_pids(self.root)
