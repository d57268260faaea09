"""Ctrl-C that stops a training cleanly: the workers checkpoint and stop, the run ends KILLED.

Ray Train's own SIGINT handler aborts the run without a checkpoint, and is installed only when
``fit()`` runs on the main thread; so ``fit()`` runs on a helper thread and the main thread keeps
the signal. The first Ctrl-C sets a flag that rank 0 polls every few steps and broadcasts, so every
worker stops at the same step; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, TypeVar

import ray

T = TypeVar("T")


@ray.remote(num_cpus=0)
class StopFlag:
    """Set by the driver on Ctrl-C, read by rank 0."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


def run_interruptibly(fn: Callable[[], T], flag: Any) -> tuple[T, bool]:
    """Run ``fn`` on a thread; return its result and whether a graceful stop was asked for."""
    box: dict[str, Any] = {}
    asked = threading.Event()

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # re-raised on the main thread
            box["error"] = err

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if asked.is_set():
            raise KeyboardInterrupt
        asked.set()
        flag.set.remote()
        sys.stderr.write("\nstopping: the workers save a checkpoint at the next step (Ctrl-C again to abort)\n")

    thread = threading.Thread(target=target, name="simclr-fit", daemon=True)
    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    try:
        thread.start()
        while thread.is_alive():
            thread.join(timeout=0.5)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if "error" in box:
        raise box["error"]
    return box["result"], asked.is_set()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
