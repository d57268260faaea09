"""Here so that pytest puts tests/ on sys.path: the test packages import the shared helpers
(simclr_testing.py, photos.py) by name. The settings live in simclr_testing.py, a module name of its own
(`from conftest import ...` would be ambiguous with tests/cluster/conftest.py).

Also: the tests on the session's stack run first and the stack stops after the last of them; the fast tier
guards itself (a test not marked ``slow`` may not start Ray or a program that starts
servers or trains), and the test process ends without the interpreter's finalisation, once pytest has its
result.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from services import s3, stack, stop_stack, tracking_server  # noqa: F401  (session fixtures: the cluster's parts)

# Ray Train's controller polls its workers this often (Ray's default: every 2 s): a finished or failed
# worker group is noticed within it. Set before any Ray starts, so that every Ray of the suite (the local
# ones, the session's cluster, the CLIs the tests run) inherits it; short trainings end sooner.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

_RESULT = pytest.StashKey[int]()
_LAST_STACK_TEST = pytest.StashKey[str]()

# Programs that start Ray, a server or a training: a test that runs one belongs to the slow tier. A Python
# subprocess counts too: it imports torch (seconds) to run a script, a CLI or a benchmark.
SLOW_PROGRAMS = frozenset({"simclr", "ray", "moto_server", "mlflow", "pg_ctl", "postgres", "initdb", "runuser",
                           os.path.basename(sys.executable), "python", "python3"})


class SlowTestError(RuntimeError):
    """A test outside the slow tier started Ray or a heavy program."""


def _refuse(item: pytest.Item, what: str) -> SlowTestError:
    return SlowTestError(f"{item.nodeid} {what}: mark it @pytest.mark.slow (the fast tier, pytest -m 'not slow', "
                         f"starts no Ray, server or subprocess training)")


@contextlib.contextmanager
def _fast_tier_guard(item: pytest.Item) -> Iterator[None]:
    """While a test outside the slow tier (and its fixtures) runs: ``ray.init`` and starting one of
    ``SLOW_PROGRAMS`` raise ``SlowTestError`` naming the test, so the fast tier stays fast by construction."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    real_init, real_popen_init = ray.init, subprocess.Popen.__init__

    def init(*args: Any, **kwargs: Any) -> Any:
        raise _refuse(item, "starts Ray")

    def popen_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        argv = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        program = os.path.basename(os.fsdecode(argv[0]).split()[0]) if argv else ""
        if program in SLOW_PROGRAMS:
            raise _refuse(item, f"starts {program!r}")
        real_popen_init(self, args, *rest, **kwargs)

    ray.init = init  # type: ignore[assignment]
    subprocess.Popen.__init__ = popen_init  # type: ignore[method-assign]
    try:
        yield
    finally:
        ray.init = real_init
        subprocess.Popen.__init__ = real_popen_init  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _fast_tier_guard(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _fast_tier_guard(item):
        yield


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests on the session's stack first (in their order), then the others: the stack (a two-node Ray
    cluster, PostgreSQL, an MLflow server, an S3 endpoint; about a tenth of 2 cores when idle) is stopped
    after its last test instead of idling through the rest of the suite."""
    users = [i for i in items if "stack" in getattr(i, "fixturenames", ())]
    if users:
        rest = [i for i in items if "stack" not in getattr(i, "fixturenames", ())]
        items[:] = users + rest
        config.stash[_LAST_STACK_TEST] = users[-1].nodeid


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    yield
    if item.nodeid == item.config.stash.get(_LAST_STACK_TEST, None):
        stop_stack()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_RESULT] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Exit with pytest's status now, skipping the interpreter's finalisation.

    One clean-clone run of the whole suite printed "1000 passed" and then died of a segmentation fault
    while the interpreter shut down, so ``.ci/run`` failed. The suite starts and stops many local Rays in
    this one process; what stays behind (Ray Data's prefetcher threads, which park for good once their
    iteration ends, among others) runs native code whose state ``ray.shutdown`` has torn down. The test
    results are final here, and every test already stopped the Ray and the servers it started. Only
    when pytest is the program (``python -m pytest``, ``pytest``): an ``os._exit`` inside a program that
    calls ``pytest.main`` would end that program too.
    """
    status = config.stash.get(_RESULT, None)
    entry = Path(sys.argv[0])
    if status is None or not (entry.name in ("pytest", "py.test") or entry.parent.name == "pytest"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
