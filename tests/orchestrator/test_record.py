"""What a run records about its dataset (the sweep's trials log one dataset at the same moment), and its encoder
registered in MLflow's Model Registry."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.tracking.record import log_dataset, log_encoder_model, logged_encoder, register_encoder
from orchestrator.tracking.tags import REGISTERED_TAG
from orchestrator.tune.report import SweepOutcome, TrialSummary, register_best
from orchestrator.tune.spec import SweepSpec
from workloads.config import Config

# What MLflow's SQLite store raised for the trial that lost the race (a clean-clone CI run).
LOST_RACE = ("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, "
             "datasets.digest")


class RacingClient:
    """A real client whose first ``log_inputs`` fails as the loser of the race does; then the real one."""

    def __init__(self, client: MlflowClient, error: str) -> None:
        self.client, self.error, self.calls = client, error, 0

    def log_inputs(self, run_id: str, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise MlflowException(self.error)
        self.client.log_inputs(run_id, **kwargs)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    return MlflowClient(f"sqlite:///{Path(tmp_path_factory.mktemp('record')) / 'mlflow.db'}")


def test_a_trial_that_loses_the_dataset_race_logs_it_on_a_second_attempt(client: MlflowClient) -> None:
    exp = client.create_experiment("race")
    cfg = Config().replace({"data.source": "synthetic"})
    first, second = (client.create_run(exp).info.run_id for _ in range(2))
    log_dataset(client, first, cfg, 100, 10)  # the winner stored the dataset
    racing = RacingClient(client, LOST_RACE)
    log_dataset(racing, second, cfg, 100, 10)
    assert racing.calls == 2
    for run_id in (first, second):
        (used,) = client.get_run(run_id).inputs.dataset_inputs
        assert used.dataset.name == "synthetic"


def test_any_other_tracking_error_is_not_retried(client: MlflowClient) -> None:
    exp = client.create_experiment("other")
    run_id = client.create_run(exp).info.run_id
    racing = RacingClient(client, "RESOURCE_DOES_NOT_EXIST: run not found")
    with pytest.raises(MlflowException, match="run not found"):
        log_dataset(racing, run_id, Config(), 100, 10)
    assert racing.calls == 1


def test_six_runs_logging_one_dataset_at_once_all_record_it(tmp_path: Path) -> None:
    """The race itself, on a real SQLite store: six clients log the same dataset behind one barrier
    (without the second attempt, one to five of them failed in each of five tries)."""
    import threading

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("sweep")
    runs = [client.create_run(exp).info.run_id for _ in range(6)]
    cfg = Config().replace({"data.source": "synthetic"})
    barrier, errors = threading.Barrier(len(runs)), []

    def log(run_id: str) -> None:
        mine = MlflowClient(uri)
        barrier.wait()
        try:
            log_dataset(mine, run_id, cfg, 100, 10)
        except MlflowException as err:
            errors.append(str(err))

    threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for run_id in runs:
        (used,) = client.get_run(run_id).inputs.dataset_inputs
        assert used.dataset.name == "synthetic"


@pytest.mark.parametrize(("sets", "expected"), [
    ({"data.source": "imagefolder", "data.root": "s3://photos/train", "data.uri": "s3://elsewhere/x"},
     "s3://photos/train"),  # the tree the run reads, not an unused data.uri
    ({"data.source": "parquet", "data.uri": "s3://AKIAEXAMPLE:s3cr3t@photos/x.parquet", "data.root": "/r"},
     "s3://***@photos/x.parquet"),  # credentials in a URI never reach the record
    ({"data.source": "images", "data.uri": "gs://b/prefix/"}, "gs://b/prefix/"),
])
def test_the_dataset_input_names_where_the_run_reads_its_images(sets: dict[str, str], expected: str) -> None:
    import json

    from orchestrator.tracking.record import dataset_input

    source = json.loads(dataset_input(Config().replace(sets), 100, 10).source.to_json())
    assert source["uri"] == expected


def test_generated_data_has_no_location() -> None:
    from orchestrator.tracking.record import data_location

    assert data_location(Config().replace({"data.source": "synthetic", "data.root": "/r"})) == ""


# --- the Model Registry (tracking.register) -------------------------------------------------------------


def _finished_run(client: MlflowClient, exp: str, uri: str, with_encoder: bool) -> str:
    """A run, with its encoder logged as a finished training logs it (or without, as a stopped trial)."""
    run_id = client.create_run(exp).info.run_id
    if with_encoder:
        encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        log_encoder_model(encoder, run_id, uri, 8)
    return run_id


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[MlflowClient, str, str]:
    """A client of a fresh sqlite store, its experiment's id and the store's URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # MLflow sets it when logging a model; gone after the test
    client = MlflowClient(uri)
    return client, client.create_experiment("simclr"), uri


def test_each_registered_encoder_is_a_new_version_and_the_alias_moves_to_it(
        registry: tuple[MlflowClient, str, str]) -> None:
    client, exp, uri = registry
    first, second = (_finished_run(client, exp, uri, with_encoder=True) for _ in range(2))
    assert register_encoder(client, first, logged_encoder(client, first), "ssl-encoder", "candidate") == "ssl-encoder/1"
    assert register_encoder(client, second, logged_encoder(client, second), "ssl-encoder", "candidate") \
        == "ssl-encoder/2"
    chosen = client.get_model_version_by_alias("ssl-encoder", "candidate")
    assert int(chosen.version) == 2 and chosen.run_id == second
    assert client.get_run(first).data.tags[REGISTERED_TAG] == "ssl-encoder/1"
    assert client.get_run(second).data.tags[REGISTERED_TAG] == "ssl-encoder/2"


def test_a_sweep_registers_its_best_trials_encoder_or_says_why_not(
        tmp_path: Path, registry: tuple[MlflowClient, str, str]) -> None:
    client, exp, uri = registry
    parent = client.create_run(exp).info.run_id
    stopped = _finished_run(client, exp, uri, with_encoder=False)  # ASHA stopped it: no encoder
    finished = _finished_run(client, exp, uri, with_encoder=True)
    spec = cast(SweepSpec, SimpleNamespace(base={"tracking": {"register": "sweep-encoder", "register_alias": "best"}},
                                           parent_run_id=parent))

    def outcome(best_run: str) -> SweepOutcome:
        best = TrialSummary("t1", "sw-t1", "completed", {"loss.temperature": 0.1}, {"loss": 1.0}, run_id=best_run)
        return SweepOutcome("sw", parent, uri, exp, "loss", "min", str(tmp_path), trials=[best], best=best)

    missing = outcome(stopped)
    register_best(client, spec, missing)
    assert missing.registered == "" and "logged no encoder" in missing.notes[0]
    found = outcome(finished)
    register_best(client, spec, found)
    assert found.registered == "sweep-encoder/1" and not found.notes
    assert client.get_model_version_by_alias("sweep-encoder", "best").run_id == finished
    assert client.get_run(parent).data.tags[REGISTERED_TAG] == "sweep-encoder/1"
