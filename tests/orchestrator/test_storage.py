"""orchestrator.storage: the one place that tells a local path from a URI and reaches either.

Local paths and ``file://`` URIs stand in for buckets here (the same pyarrow calls; s3:// through a real
S3 endpoint is tests/cluster's).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from orchestrator import storage
from orchestrator.errors import UserError


@pytest.mark.parametrize(("path", "uri"), [
    ("s3://bucket/runs", True), ("gs://b/x", True), ("file:///tmp/x", True), ("http://127.0.0.1:8265", True),
    ("/tmp/runs", False), ("runs", False), ("./a:b", False), ("", False),
])
def test_a_uri_is_what_has_a_scheme(path: str, uri: bool) -> None:
    assert storage.is_uri(path) is uri


def test_absolute_keeps_uris_and_anchors_local_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("s3://b/runs/") == "s3://b/runs/"
    assert storage.absolute("runs") == str(tmp_path / "runs")
    assert storage.absolute(str(tmp_path)) == str(tmp_path)


def test_join_uses_slashes_for_uris_and_the_os_for_paths() -> None:
    assert storage.join("s3://b/runs/", "name", "logs") == "s3://b/runs/name/logs"
    assert storage.join("s3://b", "x") == "s3://b/x"
    assert storage.join("/tmp/runs", "name") == os.path.join("/tmp/runs", "name")


def test_filesystem_of_a_local_path_takes_any_character(tmp_path: Path) -> None:
    odd = tmp_path / "a b#c%20d"  # a file:// URI of it would need escaping
    fs, inner = storage.filesystem(str(odd))
    assert isinstance(fs, pafs.LocalFileSystem) and inner == str(odd)


def test_filesystem_of_a_file_uri_and_of_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs, inner = storage.filesystem(f"file://{tmp_path}/x")
    assert isinstance(fs, pafs.LocalFileSystem) and inner == f"{tmp_path}/x"
    monkeypatch.chdir(tmp_path)
    assert storage.filesystem("rel")[1] == str(tmp_path / "rel")


def test_a_uri_pyarrow_cannot_open_is_a_user_error_naming_the_field() -> None:
    with pytest.raises(UserError, match=r"^data\.uri: cannot open 'nosuchscheme://x/y'"):
        storage.filesystem("nosuchscheme://x/y", "data.uri")
    with pytest.raises(ValueError):  # without a field: pyarrow's own error
        storage.filesystem("nosuchscheme://x/y")


def test_missing_locally_probes_local_paths_only(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert storage.missing_locally(str(tmp_path / "nope"))
    assert not storage.missing_locally(str(tmp_path / "f"))
    assert storage.missing_locally(str(tmp_path / "f"), folder=True)
    assert not storage.missing_locally(str(tmp_path), folder=True)
    assert not storage.missing_locally("s3://no-such-bucket/x", folder=True)  # its reader checks it


@pytest.mark.parametrize("as_uri", [False, True])
def test_write_read_kind_and_listing_round_trip(tmp_path: Path, as_uri: bool) -> None:
    base = f"file://{tmp_path}" if as_uri else str(tmp_path)
    target = storage.join(base, "sweep", "spec.json")
    assert storage.read_bytes(target) is None
    assert storage.listing(storage.join(base, "sweep")) == []  # a folder not made yet: no entries
    storage.write_bytes(target, b'{"a": 1}')  # makes the folder
    assert storage.read_bytes(target) == b'{"a": 1}'
    assert (tmp_path / "sweep" / "spec.json").read_bytes() == b'{"a": 1}'
    assert storage.kind(target) == pafs.FileType.File
    assert storage.kind(storage.join(base, "sweep")) == pafs.FileType.Directory
    assert storage.kind(storage.join(base, "nope")) == pafs.FileType.NotFound
    assert [e.base_name for e in storage.listing(storage.join(base, "sweep"))] == ["spec.json"]


def test_check_writable_creates_the_folder_and_leaves_nothing_behind(tmp_path: Path) -> None:
    storage.check_writable(str(tmp_path / "runs" / "deep"), "train.storage_path")
    assert list((tmp_path / "runs" / "deep").iterdir()) == []


def test_an_unwritable_place_is_one_line_naming_the_field_without_its_secret(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the folder would go")
    with pytest.raises(UserError) as info:
        storage.check_writable(str(blocker / "runs"), "train.storage_path")
    message = str(info.value)
    assert message.startswith(f"train.storage_path: cannot write to {blocker / 'runs'} (")
    assert message.endswith("; choose a writable folder or bucket") and "\n" not in message
    with pytest.raises(UserError) as info:
        storage.check_writable("nosuchscheme://KEY:s3cr3t@bucket/runs", "train.storage_path")
    assert "s3cr3t" not in str(info.value)
