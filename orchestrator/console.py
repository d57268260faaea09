"""What a person sees: a header, a progress line per epoch, the result. Everything else goes to a log file.

Ray, Ray Data, MLflow and the C++ core write to the driver's file descriptors 1 and 2 (and Ray
forwards every worker's output there). ``capture`` points both descriptors at the run's log file for
the whole Ray session and keeps a handle on the real terminal, where ``say`` writes our own lines
(also copied into the log, so the log is the complete record). On a terminal, ``progress`` lines
(steps within an epoch) overwrite each other and end as the epoch's summary line; without one
(a pipe, a file, a Ray job's log) only the summary lines are written. ``--verbose`` turns the
capture off: everything goes to the terminal, as Ray prints it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO


@dataclass
class Console:
    terminal: TextIO
    tty: bool
    log_path: str = ""
    _open_progress: bool = False

    def say(self, line: str) -> None:
        """A line for people: to the terminal, and to the log when there is one."""
        self._write(("\r\x1b[K" if self._open_progress else "") + line + "\n")
        self._open_progress = False
        if self.log_path:
            sys.stderr.write(line + "\n")  # fd 2 is the log file while capturing
            sys.stderr.flush()

    def progress(self, line: str) -> None:
        """A transient line (steps within an epoch): shown on a terminal only, overwritten by the next."""
        if self.tty:
            self._write("\r\x1b[K" + line)
            self._open_progress = True

    def _write(self, text: str) -> None:
        try:
            self.terminal.write(text)
            self.terminal.flush()
        except (OSError, ValueError):  # the terminal went away: the log still has everything
            pass


_plain = Console(sys.stderr, tty=False)


def current() -> Console:
    """The console of the command running in this process (stderr when nothing is captured)."""
    return _active[-1] if _active else _plain


_active: list[Console] = []


@contextmanager
def capture(log_path: str, verbose: bool = False) -> Iterator[Console]:
    """Send fds 1 and 2 to ``log_path`` (appending) and yield a Console on the real stderr."""
    if verbose:
        con = Console(sys.stderr, tty=False)
        _active.append(con)
        try:
            yield con
        finally:
            _active.pop()
        return
    os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    terminal = os.fdopen(os.dup(saved_err), "w")
    con = Console(terminal, tty=os.isatty(saved_err), log_path=log_path)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    _active.append(con)
    try:
        yield con
    finally:
        _active.pop()
        if con._open_progress:
            con._write("\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        terminal.close()
