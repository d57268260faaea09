"""Fault injection for the reliability tests, off unless ``SIMCLR_FAULTS`` is set.

``SIMCLR_FAULTS="nan_loss@2.3,die_in_checkpoint@2"`` makes the loss NaN at epoch 2, step 3, and
kills the worker process while it writes the checkpoint of epoch 2. Each fault fires once per
marker file under ``SIMCLR_FAULTS_DIR`` (when set), so a restarted worker does not fire it again.
The tests use this to exercise the real recovery paths without mocks; users never need it.
"""

from __future__ import annotations

import os

ENV = "SIMCLR_FAULTS"


def fires(name: str, *where: int) -> bool:
    """True when fault ``name`` is configured at this (epoch[, step]) and has not fired yet."""
    spec = os.environ.get(ENV, "")
    if not spec:
        return False
    wanted = f"{name}@" + ".".join(str(w) for w in where)
    if wanted not in {s.strip() for s in spec.split(",")}:
        return False
    marker_dir = os.environ.get(ENV + "_DIR", "")
    if marker_dir:
        marker = os.path.join(marker_dir, wanted)
        if os.path.exists(marker):
            return False
        os.makedirs(marker_dir, exist_ok=True)
        with open(marker, "w"):
            pass
    return True
