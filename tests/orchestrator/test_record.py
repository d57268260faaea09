"""What a run records about its dataset: the sweep's trials log one dataset at the same moment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.tracking.record import log_dataset
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
