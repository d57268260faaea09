"""Here so that pytest puts tests/ on sys.path: the test packages import the shared helpers
(simclr_testing.py, photos.py) by name. The settings live in simclr_testing.py, a module name of its own
(`from conftest import ...` would be ambiguous with tests/cluster/conftest.py).

Also: the test process ends without the interpreter's finalisation, once pytest has its result.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_RESULT = pytest.StashKey[int]()


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
