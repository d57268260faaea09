"""Bad input and faults on the cluster's real parts, refused before Ray starts: a bucket on the S3 test
endpoint and the MLflow server on PostgreSQL (tests/services.py). Each case runs the CLI's own entry point
in this process, with the endpoint and credentials in its environment as a user's shell has them.

Trainings through these parts are in test_train_e2e.py (data in a bucket, the tracking server),
test_reliability.py (checkpoints in a bucket, resume, the endpoint going away) and tests/cluster (submit).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from photos import class_ordered_parquet, image_folder
from services import S3, TrackingServer
from test_export import write_checkpoint

from cluster.services import free_port
from orchestrator.cli import main
from workloads.config import Config

pytestmark = pytest.mark.slow  # every test here talks to the session's servers

BASE = ["train", "--num-cpus", "2", "--object-store-mb", "300", "--epochs", "1"]


@pytest.fixture
def in_bucket(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A bucket with a class-folder tree of JPEG photos (``/tree``) and Parquet of them (``/photos.parquet``);
    this process set up as a client of the endpoint (the variables pyarrow reads), with no tracking or Ray
    settings of its own."""
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    bucket = s3.bucket()
    s3.upload(image_folder(tmp_path / "tree", 2, 3), f"{bucket}/tree")
    s3.upload(class_ordered_parquet(tmp_path / "photos.parquet", 2, 3), f"{bucket}/photos.parquet")
    yield bucket


def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line of a refused ``simclr train``; nothing started (no Ray, no MLflow store)."""
    code = main([*BASE, *args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err[-3000:]
    assert lines[0].startswith("simclr: error: "), err
    assert not ray.is_initialized()
    assert not Path("mlflow.db").exists()
    return lines[0]


def imagefolder(root: str) -> list[str]:
    return ["--set", "data.source=imagefolder", "--set", f"data.root={root}"]


def parquet(uri: str) -> list[str]:
    return ["--set", "data.source=parquet", "--set", f"data.uri={uri}"]


def test_a_missing_bucket_or_prefix_says_so_naming_the_field(
        in_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(imagefolder("s3://no-such-bucket-7f3a/tree"), capsys)
    assert "data.root: the bucket 'no-such-bucket-7f3a' of s3://no-such-bucket-7f3a/tree does not exist" in line
    assert "class folders" not in line  # not a message about the folder's layout
    line = refused(parquet(f"{in_bucket}/no-such.parquet"), capsys)
    assert f"data.uri: nothing at {in_bucket}/no-such.parquet" in line and "'no-such.parquet'" in line
    line = refused(["--set", "data.source=images", "--set", f"data.uri={in_bucket}/no-such-prefix/"], capsys)
    assert line.startswith(f"simclr: error: data.uri: nothing at {in_bucket}/no-such-prefix")
    line = refused([*imagefolder(f"{in_bucket}/tree"), "--set", f"data.eval_root={in_bucket}/val"], capsys)
    assert "data.eval_root: nothing at" in line
    line = refused(["--set", "train.storage_path=s3://no-such-bucket-7f3a/runs"], capsys)
    assert line.startswith("simclr: error: train.storage_path: cannot write to s3://no-such-bucket-7f3a/runs")


def test_refused_credentials_and_an_endpoint_that_does_not_answer_are_one_line(
        in_bucket: str, s3: S3, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with s3.refusing_credentials():
        line = refused(parquet(f"{in_bucket}/photos.parquet"), capsys)
        assert f"data.uri: cannot read {in_bucket}/photos.parquet" in line and "ACCESS_DENIED" in line
        assert "AWS_ACCESS_KEY_ID" in line  # what to check
        line = refused(["--set", f"train.storage_path={in_bucket}/runs"], capsys)
        assert f"train.storage_path: cannot write to {in_bucket}/runs" in line and "ACCESS_DENIED" in line
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    line = refused(imagefolder(f"{in_bucket}/tree"), capsys)
    assert f"data.root: cannot read {in_bucket}/tree" in line and "AWS_ENDPOINT_URL" in line
    assert s3.server.secret not in line


def test_a_tracking_server_whose_database_is_down_is_one_line_before_ray_starts(
        in_bucket: str, tracking_server: TrackingServer, capsys: pytest.CaptureFixture[str]) -> None:
    MlflowClient(tracking_uri=tracking_server.uri).search_experiments()  # a server in use, then its database stops
    with tracking_server.database_down():
        line = refused(["--tracking-uri", tracking_server.uri, *imagefolder(f"{in_bucket}/tree")], capsys)
    assert line.startswith(f"simclr: error: tracking.uri: the MLflow server at {tracking_server.uri} answers 5")
    assert "database" in line


def test_export_reads_a_checkpoint_in_a_bucket(in_bucket: str, s3: S3, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`simclr export s3://…/checkpoint_…`: the backbone of a checkpoint kept in a bucket, as torchvision loads it."""
    import torchvision

    model = write_checkpoint(tmp_path / "ckpt", Config().replace({"model.arch": "resnet18", "model.cifar_stem": False}))
    checkpoint = s3.upload(tmp_path / "ckpt", f"{in_bucket}/runs/r/checkpoint_epoch_00001")
    assert main(["export", checkpoint, "-o", str(tmp_path / "r18.pt")]) == 0, capsys.readouterr().err
    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(tmp_path / "r18.pt"), strict=True)
    net.fc = torch.nn.Identity()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net.eval()(images), model.eval().get_submodule("encoder")(images), atol=1e-5)
    assert main(["export", f"{in_bucket}/runs/r/checkpoint_epoch_00009", "-o", str(tmp_path / "x.pt")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"simclr: error: checkpoint: cannot read state.pt of {in_bucket}/runs/r/checkpoint_epoch")
