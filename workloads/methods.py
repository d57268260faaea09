"""The methods the orchestrator can train: a plain dict, name -> workload (see workloads/method.py)."""

from __future__ import annotations

from workloads.config import ConfigError
from workloads.mae.method import MAE, Inpaint
from workloads.method import Method
from workloads.moco.method import MoCo
from workloads.simclr.method import SimCLR

METHODS: dict[str, Method] = {
    "simclr": SimCLR(),
    "moco": MoCo(),
    "mae": MAE(),
    "inpaint": Inpaint(),
}


def method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {name!r}")
    return METHODS[name]
