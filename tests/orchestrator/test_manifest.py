"""Manifests (orchestrator/data/manifest.py): ``data.source=manifest`` reads a CSV or Parquet file of paths
and labels; a folder a run lists is kept as a manifest in the run's folder and read from there after.
No Ray: a source's rows and listings are loaded without it (the stream tests read them through Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import storage
from orchestrator.data import catalog, manifest, sources
from orchestrator.data.prepare import split
from orchestrator.data.rows import Rows
from orchestrator.data.sources import FileListing
from orchestrator.errors import UserError
from workloads.config import ConfigError, DataConfig


def tree(root: Path, files: dict[str, int]) -> Path:
    """Empty image files (listing does not read them): ``{"cat/a.jpg": 1, ...}``."""
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    return root


def load(cfg: DataConfig, listings: str = "") -> Rows:
    return catalog.source(cfg.source).load(cfg, 0, listings)


def test_a_csv_of_relative_paths_and_class_names_reads_under_data_root(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path,label\ndog/1.jpg,dog\ncat/2.jpg,cat\nbird/3.jpg,\ndog/4.jpg,dog\n")
    rows = load(DataConfig(source="manifest", manifest=str(tmp_path / "m.csv"), root=str(tmp_path / "photos")))
    assert rows.paths == tuple(str(tmp_path / "photos" / p) for p in ("dog/1.jpg", "cat/2.jpg", "bird/3.jpg",
                                                                       "dog/4.jpg"))
    assert rows.classes == ("cat", "dog") and rows.num_classes == 2  # names numbered in sorted order
    assert rows.labels.tolist() == [1, 0, -1, 1]  # an empty label: unlabelled
    assert rows.ids.tolist() == [0, 1, 2, 3]


def test_a_parquet_of_absolute_paths_and_integer_labels_needs_no_root(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    pq.write_table(pa.table({"path": paths, "label": pa.array([2, None, 0], pa.int64())}), tmp_path / "m.parquet")
    rows = load(DataConfig(source="manifest", manifest=str(tmp_path / "m.parquet")))
    assert rows.paths == tuple(paths)
    assert rows.labels.tolist() == [2, -1, 0] and rows.num_classes == 3 and rows.classes == ()  # label i: class i


def test_a_manifest_without_labels_is_unlabelled(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("path\na.jpg\nb.jpg\n")
    rows = load(DataConfig(source="manifest", manifest=str(tmp_path / "m.csv"), root=f"file://{tmp_path}/photos"))
    assert rows.paths == (f"{tmp_path}/photos/a.jpg", f"{tmp_path}/photos/b.jpg")  # within the root's filesystem
    assert not rows.labelled and rows.num_classes == 0


def test_uris_in_a_manifest_are_read_as_they_are(tmp_path: Path) -> None:
    fs, inner = storage.resolve([f"file://{tmp_path}/x/1.jpg", "rel/2.jpg"], f"file://{tmp_path}/root",
                                "data.manifest")
    assert inner == [f"{tmp_path}/x/1.jpg", f"{tmp_path}/root/rel/2.jpg"] and fs.type_name == "local"


@pytest.mark.parametrize(("text", "root", "expected"), [
    ("file,label\na.jpg,1\n", "r", "data.manifest: '{m}' has no 'path' column (columns: file, label); give a CSV"),
    ("path\na.jpg\n", "", "data.root: data.manifest's paths are relative (e.g. 'a.jpg'); set data.root"),
    ("path\n", "r", "data.manifest: '{m}' lists no images;"),
    ("path,label\na.jpg,-3\n", "r", "data.manifest: '{m}' has negative labels"),
    ("path,label\na.jpg,1.5\n", "r", "data.manifest: '{m}''s 'label' column is double; give integers or class names"),
    ("path\n/local/a.jpg\ns3://b/c.jpg\n", "", "data.manifest: 's3://b/c.jpg' is not on the same store as "
                                              "'/local/a.jpg'"),
])
def test_a_bad_manifest_is_one_line_naming_the_field_and_the_fix(tmp_path: Path, text: str, root: str,
                                                                  expected: str) -> None:
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(UserError) as info:
        load(DataConfig(source="manifest", manifest=str(tmp_path / "m.csv"), root=root))
    assert str(info.value).startswith(expected.format(m=tmp_path / "m.csv")) and "\n" not in str(info.value)


def test_a_file_that_is_not_parquet_says_how_it_was_read(tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("path\na.jpg\n")
    with pytest.raises(UserError, match=r"^data\.manifest: cannot read '.*m\.txt' as Parquet \(a name not ending "
                                        r"in \.csv is read as Parquet\)"):
        load(DataConfig(source="manifest", manifest=str(tmp_path / "m.txt"), root="r"))


def test_the_config_asks_for_the_manifest_and_refuses_it_for_other_sources() -> None:
    with pytest.raises(ConfigError, match=r"^data\.manifest must be set for source 'manifest'"):
        DataConfig(source="manifest")
    with pytest.raises(ConfigError, match=r"^data\.manifest must be empty unless data\.source=manifest"):
        DataConfig(source="imagefolder", root="r", manifest="m.csv")
    DataConfig(source="manifest", manifest="m.csv", eval_root="val")  # a labelled tree to evaluate on


# --- a run's listings, kept as manifests ------------------------------------------------------------------


class Counted:
    """A listing function that counts its calls."""

    def __init__(self, listing: FileListing) -> None:
        self.listing, self.calls = listing, 0

    def __call__(self) -> FileListing:
        self.calls += 1
        return self.listing


def test_a_listing_is_kept_once_and_read_back_the_same_without_listing(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree", {"b/2.jpg": 1, "a/1.jpg": 0, "b/3.png": 1})
    lister = Counted(sources.list_image_folder(str(root)))
    run = str(tmp_path / "runs" / "r1")
    first = manifest.listed(lister, str(root), "data.root", run)
    again = manifest.listed(lister, str(root), "data.root", run)
    assert lister.calls == 1
    assert again.paths == first.paths and again.labels == first.labels and again.classes == first.classes
    kept = manifest.kept_path(run, "data.root", str(root))
    assert kept.startswith(f"{run}/manifests/data.root-") and Path(kept).is_file()
    # what is kept is a manifest as users write them: paths relative to the folder listed, and labels
    user = manifest.read(kept, str(root))
    assert user.paths == first.paths and user.labels == first.labels
    assert pq.read_table(kept).column("path").to_pylist() == ["a/1.jpg", "b/2.jpg", "b/3.png"]
    # another folder, or no run folder: listed
    manifest.listed(lister, str(tmp_path / "other"), "data.root", run)
    manifest.listed(lister, str(root), "data.root", "")
    assert lister.calls == 3


def test_a_resumed_run_does_not_list_its_folders_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's load of an ImageFolder source and of data.eval_root, twice with the same run folder: the
    second lists nothing, and a file added in between is not seen (the run keeps its rows)."""
    root = tree(tmp_path / "train", {f"c{k}/{i}.jpg": k for k in range(2) for i in range(3)})
    val = tree(tmp_path / "val", {"c0/v.jpg": 0, "c1/w.jpg": 1})
    listed: list[str] = []
    real = sources.list_image_folder

    def counting(where: str, field: str = "data.root") -> FileListing:
        listed.append(field)
        return real(where, field)

    monkeypatch.setattr(sources, "list_image_folder", counting)
    cfg = DataConfig(source="imagefolder", root=str(root), eval_root=str(val), holdout_fraction=0.0)
    run = str(tmp_path / "runs" / "r")
    rng = np.random.default_rng(0)
    first = load(cfg, run)
    _, test = split(first, cfg, rng, run)
    assert listed == ["data.root", "data.eval_root"]
    (root / "c1" / "new.jpg").write_bytes(b"")
    resumed = load(cfg, run)
    _, resumed_test = split(resumed, cfg, rng, run)
    assert listed == ["data.root", "data.eval_root"]  # nothing listed again
    assert resumed.paths == first.paths and len(resumed) == 6
    assert test is not None and resumed_test is not None and resumed_test.paths == test.paths
    assert load(cfg).paths != first.paths  # without the run's folder the new file is listed


def test_a_kept_listing_that_cannot_be_read_is_listed_again(tmp_path: Path) -> None:
    root = tree(tmp_path / "tree", {"a/1.jpg": 0})
    lister = Counted(sources.list_image_folder(str(root)))
    run = str(tmp_path / "run")
    Path(manifest.kept_path(run, "data.root", str(root))).parent.mkdir(parents=True)
    Path(manifest.kept_path(run, "data.root", str(root))).write_bytes(b"PAR1 half-written")
    assert manifest.listed(lister, str(root), "data.root", run).paths == lister.listing.paths
    assert lister.calls == 1
    manifest.listed(lister, str(root), "data.root", run)  # rewritten: read back now
    assert lister.calls == 1
