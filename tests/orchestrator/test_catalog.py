"""orchestrator.data.catalog: one table of data sources, in step with the config's own list; the paths
each needs, checked before Ray starts; and the pipeline's split, on rows loaded through the table
(in-memory sources: no Ray needed)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from orchestrator import storage
from orchestrator.data import catalog
from orchestrator.data.prepare import split
from orchestrator.errors import UserError
from workloads.config import ConfigError, DataConfig, Source

DATA_SOURCES = get_args(Source)


def test_the_table_names_the_sources_the_config_accepts() -> None:
    assert sorted(catalog.SOURCES) == sorted(DATA_SOURCES)


@pytest.mark.parametrize("name", DATA_SOURCES)
def test_the_paths_a_source_needs_are_the_ones_the_config_requires(name: str) -> None:
    needed = {need.field for need in catalog.SOURCES[name].paths}
    for field in ("root", "uri", "manifest"):
        # data.manifest is refused by the other sources (test_manifest.py): filled in for its own only
        filled = {f: "somewhere" for f in ("root", "uri", "manifest")
                  if f != field and (f != "manifest" or name == "manifest")}
        if field in needed:
            with pytest.raises(ConfigError, match=rf"^data\.{field} must be set"):
                DataConfig(source=name, **filled)
        else:
            DataConfig(source=name, **filled)


@pytest.mark.parametrize(("name", "field", "expected"), [
    ("cifar10", "root", "data.root: no such folder '{p}' for cifar10; point data.root at the dataset's folder"),
    ("stl10", "root", "data.root: no such folder '{p}' for stl10;"),
    ("imagefolder", "root", "data.root: no such folder '{p}'; an ImageFolder tree is root/<class>/<image>"),
    ("parquet", "uri", "data.uri: '{p}' does not exist; give a file, a folder or an s3:// / gs:// URI"),
    ("images", "uri", "data.uri: '{p}' does not exist;"),
    ("manifest", "manifest", "data.manifest: no such file '{p}'; give a CSV (.csv) or Parquet file with a 'path' "
                             "column"),
])
def test_a_missing_local_path_is_one_line_naming_the_field(tmp_path: Path, name: str, field: str,
                                                            expected: str) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(UserError) as info:
        catalog.check_paths(DataConfig(source=name, **{field: missing}))
    assert str(info.value).startswith(expected.format(p=missing))


def test_what_check_paths_lets_through_and_which_uris_it_asks_the_store_about(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(storage, "check_remote", lambda field, uri: asked.append((field, uri)))
    (tmp_path / "f.parquet").write_bytes(b"")
    catalog.check_paths(DataConfig(source="digits"))
    catalog.check_paths(DataConfig(source="cifar10", root=str(tmp_path / "new"), download=True))  # fetched there
    catalog.check_paths(DataConfig(source="imagefolder", root="s3://bucket/tree", uri="s3://unused/x",
                                   eval_root="s3://bucket/val"))
    catalog.check_paths(DataConfig(source="parquet", uri=str(tmp_path / "f.parquet")))
    catalog.check_paths(DataConfig(source="images", uri="gs://bucket/photos"))
    assert asked == [("data.eval_root", "s3://bucket/val"), ("data.root", "s3://bucket/tree"),
                     ("data.uri", "gs://bucket/photos")]


def test_a_torchvision_root_must_be_a_local_folder() -> None:
    with pytest.raises(UserError, match=r"^data\.root: no such folder 's3://b/cifar' for cifar10"):
        catalog.check_paths(DataConfig(source="cifar10", root="s3://b/cifar"))


def test_a_missing_eval_root_is_named(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    with pytest.raises(UserError, match=r"^data\.eval_root: no such folder"):
        catalog.check_paths(DataConfig(source="imagefolder", root=str(tmp_path / "tree"),
                                       eval_root=str(tmp_path / "val")))


@pytest.mark.parametrize(("settings", "evaluates"), [
    ({"source": "digits"}, True),
    ({"source": "digits", "holdout_fraction": 0.0}, False),
    ({"source": "synthetic"}, True),
    ({"source": "cifar10", "root": "r", "holdout_fraction": 0.0}, True),  # its own test split
    ({"source": "mnist", "root": "r"}, True),
    ({"source": "stl10", "root": "r"}, True),
    ({"source": "stl10", "root": "r", "split": "unlabeled"}, False),
    ({"source": "imagefolder", "root": "r"}, True),
    ({"source": "imagefolder", "root": "r", "holdout_fraction": 0.0}, False),
    ({"source": "parquet", "uri": "u"}, True),
    ({"source": "parquet", "uri": "u", "label_column": ""}, False),
    ({"source": "images", "uri": "u"}, False),
    ({"source": "manifest", "manifest": "m.csv"}, True),
    ({"source": "manifest", "manifest": "m.csv", "holdout_fraction": 0.0}, False),
])
def test_whether_runs_evaluate_on_held_out_labels(settings: dict[str, object], evaluates: bool) -> None:
    assert catalog.evaluates_on_labels(DataConfig(**settings)) is evaluates  # type: ignore[arg-type]


def test_the_split_holds_out_a_stratified_fraction_and_keeps_row_ids() -> None:
    cfg = DataConfig(source="synthetic", num_samples=64, num_classes=4, image_size=8, holdout_fraction=0.25)
    rows = catalog.source("synthetic").load(cfg, 3, "")
    assert rows.images is not None and rows.images.shape == (64, 8, 8, 3) and rows.num_classes == 4
    train, test = split(rows, cfg, np.random.default_rng(3))
    assert test is not None
    assert np.bincount(test.labels, minlength=4).tolist() == [round(0.25 * k) for k in np.bincount(rows.labels)]
    assert sorted([*train.ids.tolist(), *test.ids.tolist()]) == list(range(64))  # every row once, by its id
    assert train.images is not None and np.array_equal(train.images, rows.images[train.ids])
    assert np.array_equal(train.labels, rows.labels[train.ids])


def test_nothing_is_held_out_without_labels_or_a_fraction() -> None:
    cfg = DataConfig(source="digits", image_size=8, holdout_fraction=0.0)
    rows = catalog.source("digits").load(cfg, 0, "")
    train, test = split(rows, cfg, np.random.default_rng(0))
    assert test is None and train is rows
