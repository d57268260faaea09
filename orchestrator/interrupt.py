"""Ctrl-C and SIGTERM that stop a training cleanly: the workers checkpoint and stop, the run ends KILLED.

Ray Train's own SIGINT handler aborts the run without a checkpoint, and is installed only when
``fit()`` runs on the main thread; so ``fit()`` runs on a helper thread and the main thread keeps
the signals. The first Ctrl-C or SIGTERM (what ``ray job stop``, Kubernetes, Slurm and ``docker stop``
send) sets a flag that rank 0 polls every few steps and broadcasts, so every worker stops at the same
step; a second one aborts at once. Outside ``fit()``, SIGTERM raises ``Terminated`` (a
KeyboardInterrupt) instead of Ray's ``sys.exit``, so the same clean-up paths run as for Ctrl-C.
The flag itself is orchestrator/train/stopflag.py's.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

from orchestrator import console

T = TypeVar("T")
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_received: list[int] = []  # the signals that asked for a stop, in order


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a running fit(): handled like Ctrl-C (runs end KILLED, Ray is stopped)."""


def exit_code() -> int:
    """130 after Ctrl-C, 143 after SIGTERM (128 + the signal), as shells report them."""
    return EXIT_CODES.get(signal.Signals(_received[0]), 130) if _received else 130


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise Terminated("terminated (SIGTERM)")


def sigterm_as_interrupt() -> None:
    """Make SIGTERM raise ``Terminated`` on the main thread (call again after ``ray.init``, which sets its own)."""
    if _main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def sigterm_as_sigint() -> None:
    """Make SIGTERM take Ctrl-C's path where a library owns SIGINT (Ray Tune stops its trials
    gracefully on the first SIGINT); the exit code still says SIGTERM."""
    def forward(signum: int, frame: FrameType | None) -> None:
        _received.append(signum)
        os.kill(os.getpid(), signal.SIGINT)

    if _main_thread():
        signal.signal(signal.SIGTERM, forward)


def run_interruptibly(fn: Callable[[], T], on_stop: Callable[[], None],
                      on_poll: Callable[[], None] | None = None) -> tuple[T, bool]:
    """Run ``fn`` on a thread; return its result and whether a graceful stop was asked for.

    The first Ctrl-C or SIGTERM calls ``on_stop`` (the driver sets the run's stop flag); a second aborts.

    ``on_poll`` runs on the main thread twice a second while ``fn`` runs (the driver prints rank 0's
    progress lines from there).
    """
    box: dict[str, Any] = {}
    asked = threading.Event()

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # re-raised on the main thread
            box["error"] = err

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if asked.is_set():
            raise Terminated("aborted") if signum == signal.SIGTERM else KeyboardInterrupt
        _received.append(signum)
        asked.set()
        on_stop()
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        console.current().say(f"stopping: the workers save a checkpoint at the next step ({again} again to abort)")

    thread = threading.Thread(target=target, name="simclr-fit", daemon=True)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if _main_thread() else {}
    try:
        thread.start()
        while thread.is_alive():
            thread.join(timeout=0.5)
            if on_poll is not None:
                on_poll()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if on_poll is not None:
            on_poll()
    if "error" in box:
        raise box["error"]
    return box["result"], asked.is_set()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
