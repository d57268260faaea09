"""The run's stop flag: a small actor on the driver's node that the driver and the train workers share.

Driver side: ``start`` makes it; ``request_stop`` sets it on Ctrl-C/SIGTERM; ``poller`` is what the
driver runs twice a second while the workers train: print the progress lines rank 0 sent, and fail the
run at once when a worker recorded a failure that a restart would only repeat (a non-finite loss).

Worker side (rank 0): ``stop_requested`` (polled every few steps, then broadcast, so every worker stops
at the same step), ``fatal`` (record such a failure, then give the driver time to end the run),
``say`` (a progress line, also printed by the driver when its console is quiet), ``attempt_started``
(which attempt of the worker group this is: a restart after a lost worker or node is attempt 2, 3, ...,
and where the previous attempt had got to) and ``progress``.

Every function takes the actor's handle, or None where there is no driver (the Trainer's unit tests):
then there is nothing to stop, record or tell.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator import console
from orchestrator.errors import NonFiniteLossError
from orchestrator.secrets import redact

FATAL_POLL_S = 2.0  # how often the driver asks for a recorded failure
FATAL_GRACE_S = 30.0  # how long a worker waits for the driver to end the run: 15 of its polls
TRANSIENT = "~"  # a line that starts with it is a step within an epoch (shown on a terminal only)


@ray.remote(num_cpus=0)
class StopFlag:
    """Set by the driver on Ctrl-C/SIGTERM, read by rank 0; also the run's attempts, progress, recorded
    failure and the progress lines rank 0 sends for the driver to print."""

    def __init__(self) -> None:
        self._set = False
        self._attempts = 0
        self._progress: dict[str, float] = {}
        self._lines: list[str] = []
        self._fatal = ""

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def attempt_started(self) -> tuple[int, dict[str, float]]:
        """Rank 0 calls this once per worker group: its attempt number (1 = first) and where the
        previous attempt had got to (epoch, global_step, time), empty for the first."""
        self._attempts += 1
        previous, self._progress = self._progress, {}
        return self._attempts, previous

    def progress(self, epoch: int, global_step: int) -> None:
        self._progress = {"epoch": float(epoch), "global_step": float(global_step), "time": time.time()}

    def fail(self, message: str) -> None:
        self._fatal = message

    def fatal_error(self) -> str:
        """A deterministic failure (a non-finite loss) that a restart would only repeat; "" when none."""
        return self._fatal

    def say(self, line: str) -> None:
        self._lines.append(line)

    def lines(self, since: int) -> list[str]:
        return self._lines[since:]


# --- driver side -----------------------------------------------------------------------------------------


def start() -> Any:
    """The flag, on the driver's node like Ray Train's controller: a lost worker node must not take it along."""
    on_driver = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return StopFlag.options(scheduling_strategy=on_driver).remote()  # type: ignore[attr-defined]


def request_stop(flag: Any) -> None:
    flag.set.remote()


def poller(flag: Any, quiet: bool) -> Callable[[], None]:
    """What the driver does twice a second while the workers train: print rank 0's progress lines
    (``quiet``), and every ``FATAL_POLL_S`` raise a failure a worker recorded, so that the run fails now
    rather than after Ray Train has restarted the worker group ``train.max_failures`` times only to fail
    again at its first step."""
    printer = _printer(flag) if quiet else None
    last = 0.0

    def poll() -> None:
        nonlocal last
        if printer is not None:
            printer()
        if time.monotonic() - last < FATAL_POLL_S:
            return
        last = time.monotonic()
        with contextlib.suppress(ray.exceptions.RayError):  # the actor is busy or gone: Ray Train reports it
            raise_fatal(flag, timeout=5)

    return poll


def _printer(flag: Any) -> Callable[[], None]:
    """Print the lines rank 0 sent since the last poll on the driver's console."""
    seen = 0

    def poll() -> None:
        nonlocal seen
        try:
            lines: list[str] = ray.get(flag.lines.remote(seen), timeout=5)
        except Exception:  # the actor is busy or gone: the lines come with the next poll, or are in the log
            return
        seen += len(lines)
        con = console.current()
        for line in lines:
            if line.startswith(TRANSIENT):
                con.progress(line[len(TRANSIENT):])
            else:
                con.say(line)

    return poll


def raise_fatal(flag: Any, timeout: float = 60) -> None:
    """Raise the failure a worker recorded, if any: the driver's poll fails the run with it, and a
    restarted worker group fails at once instead of repeating it."""
    if flag is not None:
        message = ray.get(flag.fatal_error.remote(), timeout=timeout)
        if message:
            raise NonFiniteLossError(message)


# --- worker side -----------------------------------------------------------------------------------------

_console: Any = None  # the flag, when the driver prints this worker's lines (set once per worker)


def connect(flag: Any) -> None:
    """Send this worker's ``say`` lines to the driver too (None: stderr only)."""
    global _console
    _console = flag


def say(msg: str, transient: bool = False) -> None:
    """A progress line on stderr (stdout stays clean for --json). Written directly: Ray Train patches
    ``print`` on workers to go through the root logger, which shows each line twice. With a quiet
    console the line also goes to the driver, which shows it (``transient``: steps within an epoch,
    on a terminal only) while Ray's forwarded output goes to the run's log file."""
    line = redact(msg)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if _console is not None:
        _console.say.remote((TRANSIENT if transient else "") + line)


def stop_requested(flag: Any) -> bool:
    """Whether the driver asked for a stop (Ctrl-C, SIGTERM)."""
    if flag is None:
        return False
    try:
        return bool(ray.get(flag.is_set.remote(), timeout=30))
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return False  # the driver is gone or unreachable: nobody can ask for a stop


def fatal(flag: Any, message: str) -> None:
    """Record a failure a restart would only repeat (a non-finite loss), then give the driver time to end
    the run before this worker raises. Raised at once, the error reaches Ray Train's controller, which
    may restart the worker group before the driver's next poll (every ``FATAL_POLL_S``) fails the run;
    the driver ends the run within a poll or two, and this worker with it; ``FATAL_GRACE_S`` bounds the
    wait where no driver polls."""
    if flag is None:
        return
    ray.get(flag.fail.remote(message), timeout=60)
    time.sleep(FATAL_GRACE_S)


def attempt_started(flag: Any) -> tuple[int, dict[str, float]]:
    """This worker group's attempt (1: the first) and where the previous one had got to."""
    if flag is None:
        return 1, {}
    attempt, previous = ray.get(flag.attempt_started.remote(), timeout=60)
    return int(attempt), dict(previous)


def progress(flag: Any, epoch: int, global_step: int) -> None:
    """Where this attempt has got to, for the record of a restart that may follow."""
    if flag is not None:
        flag.progress.remote(epoch, global_step)
