"""What a train worker records in the run besides its metrics: restarts of the worker group, each
node's system metrics, and the checkpointed epochs MLflow still lacks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import ray

from orchestrator import tracking
from orchestrator.secrets import redact
from orchestrator.tracking import record
from orchestrator.tracking.tags import RESTART_TAG_PREFIX
from orchestrator.train import stopflag
from orchestrator.train.checkpoint import TrainState
from orchestrator.train.stopflag import say


def start_attempt(flag: Any, client: Any, run_id: str, state: TrainState, found: str) -> None:
    """Rank 0, once per worker group: a second or later attempt within one fit() is a restart after a
    lost worker process or node. Record it on the MLflow run: the ``restarts`` metric (its count) and a
    ``simclr.restart.N`` tag plus ``restarts/restart_N.json`` (time, cause, epochs and steps lost)."""
    attempt, previous = stopflag.attempt_started(flag)
    if attempt < 2:
        return
    n = attempt - 1
    reached = int(previous.get("global_step", state.global_step))
    record = {
        "restart": n,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cause": _restart_cause(previous.get("time", 0.0)),
        "resumed_after_epoch": state.epoch,
        "resumed_from": found or "the start (no checkpoint yet)",
        "epoch_in_progress": int(previous.get("epoch", state.epoch + 1)),
        "steps_lost": max(0, reached - state.global_step),
    }
    say(f"restart {n}: {record['cause']}; resumed after epoch {state.epoch}, {record['steps_lost']} steps lost")
    if client is None:
        return
    try:
        client.log_metric(run_id, "restarts", n, step=n)
        client.set_tag(run_id, f"{RESTART_TAG_PREFIX}{n}", json.dumps(record, sort_keys=True))
        client.log_dict(run_id, record, f"restarts/restart_{n}.json")
    except Exception as err:  # the tracking server may be away; training goes on
        say(f"MLflow: could not record restart {n} ({redact(str(err))[:200]})")


def _restart_cause(since: float) -> str:
    """A node that died since the last progress report means a lost node, else a lost worker process."""
    try:
        dead = [n for n in ray.nodes() if not n.get("Alive", True)]
    except Exception:
        dead = []
    if dead:
        ips = ", ".join(sorted({str(n.get("NodeManagerAddress", "?")) for n in dead}))
        return f"node lost ({ips}); Ray Train restarted the worker group"
    return "a train worker process was lost; Ray Train restarted the worker group"


@contextmanager
def node_metrics(run_id: str, uri: str) -> Iterator[None]:
    """One worker on each Ray node (the first to claim the node) samples the node's system metrics into
    the run as ``system/<node>/*`` while it trains (orchestrator/tracking/record.py). They stop in the
    ``finally``: at the end, on an error and on a stop request. A worker Ray Train kills to restart the
    group takes the thread and its claim with its process; a restarted worker on the node claims it
    again and continues the node's series, and a replacement node starts its own."""
    claim = _claim_node(run_id, node := this_node()) if uri else None
    monitor = None
    if claim is not None:
        try:
            monitor = record.system_metrics(run_id, uri, node)
        except Exception as err:  # no psutil, the tracking server away: training goes on without them
            say(f"MLflow: no system metrics from node {node} ({redact(str(err))[:200]})")
    try:
        yield
    finally:
        if monitor is not None:
            monitor.finish()
        if claim is not None:
            with contextlib.suppress(OSError):
                os.unlink(claim.name)
            claim.close()


def _claim_node(run_id: str, node: str) -> IO[str] | None:
    """An exclusive lock on a file named after the run and the Ray node, held by one process of the node
    until it closes the file or dies. Per Ray node, not per address as Ray Train's local rank: the
    name says which node, and several Ray nodes may share a machine."""
    path = os.path.join(tempfile.gettempdir(), f"simclr-sysmetrics-{run_id}-{node}.lock")
    f = open(path, "a")  # noqa: SIM115  # held open: the lock lives as long as the file is open
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # another worker of this node holds it
        f.close()
        return None
    return f


def this_node() -> str:
    """This worker's node, as its system metrics are named."""
    return record.node_name(ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())


def flush(client: Any, run_id: str, state: TrainState) -> None:
    """Send checkpointed epochs MLflow lacks. When the server is away, training goes on: the records
    stay in the checkpoint and are re-sent at the next checkpoint (and by the driver at the end)."""
    try:
        tracking.log_history(client, run_id, state.history)
        tracking.log_history(client, run_id, state.step_history, step_key="global_step")
    except Exception as err:  # MlflowException, connection errors: never stop training for metrics
        say(f"MLflow unreachable ({redact(str(err)).splitlines()[0][:200]}); "
            f"epochs up to {state.epoch} are kept in the checkpoint and re-sent later")
