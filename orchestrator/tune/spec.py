"""The sweep's persistent description: ``simclr_sweep.json`` (what ``--resume`` needs) and the base config
beside it, in the Tune experiment folder (local or an object-store URI)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from orchestrator import storage
from orchestrator.storage import join
from orchestrator.tune.space import Dimension, parse_dimension

SPEC_FILE = "simclr_sweep.json"  # in the Tune experiment folder: what --resume needs to rebuild the trainable

BASE_CONFIG_FILE = "base_config.yaml"  # beside it: the config every trial starts from, for `simclr train --config`


@dataclass
class SweepSpec:
    """Everything needed to start, resume and report a sweep; saved as JSON in its Tune folder."""

    name: str
    storage: str  # storage root; the Tune experiment is <storage>/<name>
    base: dict[str, Any]  # the trials' base Config (absolute paths, derived cpus_per_worker)
    user_base: dict[str, Any]  # the config as the user gave it (for the printed train command)
    search: dict[str, str]  # key -> expression
    search_alg: str
    scheduler: str
    num_samples: int
    metric: str
    mode: str
    grace_period: int
    reduction_factor: float
    resources: dict[str, Any]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str = ""
    share_data: bool = True  # prepare (read, decode) the data once for every trial; see trial.shared_data

    @property
    def path(self) -> str:
        return join(self.storage, self.name)

    @property
    def trials_storage(self) -> str:
        return join(self.path, "trials")

    @property
    def dims(self) -> dict[str, Dimension]:
        return {k: parse_dimension(k, v) for k, v in self.search.items()}

    @property
    def epochs(self) -> int:
        return int(self.base["train"]["epochs"])


def save_spec(spec: SweepSpec) -> None:
    """The spec (for --resume) and the user's base config (for the printed train command)."""
    storage.write_bytes(join(spec.path, SPEC_FILE), json.dumps(asdict(spec), indent=1, sort_keys=True).encode())
    storage.write_bytes(join(spec.path, BASE_CONFIG_FILE), yaml.safe_dump(spec.user_base, sort_keys=False).encode())


def load_spec(path: str) -> SweepSpec | None:
    data = storage.read_bytes(join(path, SPEC_FILE))
    return None if data is None else SweepSpec(**json.loads(data.decode()))

