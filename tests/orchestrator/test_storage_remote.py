"""The wording of a missing object-store location: the bucket, or the prefix in it, named as such.

On a filesystem laid out as a store is (the first path component is the bucket); the same code runs
against the S3 test endpoint in test_object_store.py.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from orchestrator import storage
from orchestrator.storage import missing_remote as missing
from orchestrator.train.checkpoint import checkpoint_uri


def store(tmp_path: Path) -> pafs.FileSystem:
    (tmp_path / "photos" / "train" / "a").mkdir(parents=True)
    return pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())


def test_a_missing_bucket_is_named_as_the_bucket(tmp_path: Path) -> None:
    err = missing("data.root", "s3://nope/train", store(tmp_path), "nope/train")
    assert str(err).startswith("data.root: the bucket 'nope' of s3://nope/train does not exist")


def test_a_missing_prefix_names_the_bucket_and_the_prefix(tmp_path: Path) -> None:
    err = missing("data.uri", "s3://photos/val", store(tmp_path), "photos/val")
    assert str(err).startswith("data.uri: nothing at s3://photos/val: bucket 'photos' has no object or prefix 'val'")


def test_credentials_in_the_uri_are_not_repeated(tmp_path: Path) -> None:
    err = missing("data.uri", "s3://AKIA:s3cr3t@nope/x", store(tmp_path), "nope/x")
    assert "s3cr3t" not in str(err) and "s3://***@nope/x" in str(err)


def test_a_checkpoint_in_a_bucket_is_named_by_its_uri() -> None:
    from ray.train import Checkpoint  # Ray keeps a checkpoint's path inside its filesystem, without the scheme

    in_bucket = Checkpoint("b/runs/r/checkpoint_epoch_00002", filesystem=pafs.LocalFileSystem())
    assert checkpoint_uri("s3://b/runs", in_bucket) == "s3://b/runs/r/checkpoint_epoch_00002"
    local = Checkpoint("/data/runs/r/checkpoint_epoch_00002", filesystem=pafs.LocalFileSystem())
    assert checkpoint_uri("/data/runs", local) == "/data/runs/r/checkpoint_epoch_00002"


def test_the_storage_keeps_its_retries_when_pickled_to_rays_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train pickles train.storage_path's filesystem to its controller and workers; each request of
    the copy that meets an unreachable endpoint is tried STORAGE_ATTEMPTS times, not pyarrow's default."""
    import pickle
    import socket
    import threading

    endpoint = socket.socket()  # accepts and drops every connection: an S3 endpoint that does not answer
    endpoint.bind(("127.0.0.1", 0))
    endpoint.listen(64)
    tries = []

    def drop() -> None:
        while True:
            try:
                conn, _ = endpoint.accept()
            except OSError:  # the test closed the endpoint
                return
            tries.append(1)
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{endpoint.getsockname()[1]}", "AWS_REGION": "us-east-1",
                       "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(storage, "STORAGE_ATTEMPTS", 4)
    fs, path = storage.patient_filesystem("s3://bucket/runs")
    copy = pickle.loads(pickle.dumps(fs))
    with pytest.raises(OSError, match="NETWORK_CONNECTION"), copy.open_input_stream(f"{path}/state.pt"):
        pass
    assert len(tries) == 4
    endpoint.close()
