"""Tests for orchestrator.data: ``prepare`` through Ray Data for each kind of source (the training row
store and the evaluation sets), class-balanced samples, and the bad-image policy (skip and count, or
fail before training). The per-epoch stream is tests/orchestrator/test_stream.py's.

One small local Ray for the module: 2 CPUs and a 300 MiB object store.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import ray
import ray.cloudpickle
import ray.data
from PIL import Image

from orchestrator.data import sources
from orchestrator.data.evalsets import balanced_order, stratified_holdout
from orchestrator.data.prepare import PreparedData, _fits, node_object_store, prepare
from orchestrator.data.rows import FILE_ROWS_PER_BLOCK, ROW_ID, Rows
from orchestrator.data.stream import RowStore
from orchestrator.errors import BadImageError, UserError
from workloads.config import DataConfig

COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))  # class i is a solid image of COLOURS[i]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


# ----------------------------------------------------------------------------- helpers


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def solid(colour: tuple[int, int, int], h: int, w: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (h, w, 3)).copy()


def rows(ds: ray.data.Dataset | RowStore | None) -> dict[str, Any]:
    """All of a small dataset, or of a row store's blocks in position order, as one batch (images of
    different shapes as a list)."""
    assert ds is not None
    if isinstance(ds, ray.data.Dataset):
        return ds.take_batch(batch_size=100_000, batch_format="numpy")
    tables = ray.get(list(ds.blocks))
    out: dict[str, Any] = {}
    for name in tables[0].column_names:
        values = [v for t in tables for v in t.column(name).combine_chunks().to_numpy(zero_copy_only=False)]
        out[name] = values if name == "image" else np.asarray(values)
    return out


def assert_colour_matches_label(batch: dict[str, Any], size: int) -> None:
    """Decoded uint8 with the shorter side ``size``, and each image's colour is its label's (JPEG: roughly)."""
    images, labels = batch["image"], batch["label"]
    assert all(min(img.shape[:2]) == size and img.shape[2] == 3 and img.dtype == np.uint8 for img in images)
    assert labels.dtype == np.int64
    mean_rgb = np.stack([img.reshape(-1, 3).mean(axis=0) for img in images])
    np.testing.assert_array_equal(mean_rgb.argmax(axis=1), labels)


def bad_files() -> dict[str, bytes]:
    """Unreadable "images", named so that they sort in this order among the good ones."""
    png = encode(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return {
        "bad1_corrupt.png": bytes(np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8)),
        "bad2_truncated.png": png[: len(png) // 2],
        "bad3_zero_byte.jpg": b"",
        "bad4_text.png": b"this is text, not a PNG\n",
    }


def write_image_folder(root: Path, per_class: int = 4, bad: dict[str, bytes] | None = None) -> None:
    """root/<class>/<image>: PNGs and JPEGs of assorted sizes, bad files (if any) in class c0."""
    for label, colour in enumerate(COLOURS):
        folder = root / f"c{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            h, w = (12 + 2 * i, 20) if i % 2 else (20, 12 + 2 * i)
            fmt = "JPEG" if i % 2 else "PNG"
            (folder / f"img{i}.{fmt.lower()}").write_bytes(encode(solid(colour, h, w), fmt))
        (folder / "labels.txt").write_text("ignored")
    for name, data in (bad or {}).items():
        (root / "c0" / name).write_bytes(data)


def write_parquet(path: Path, n: int, bad: list[bytes | None] | None = None, label: bool = True) -> None:
    """A Parquet file with encoded images in column "png" and labels in column "cls"."""
    images: list[bytes | None] = [encode(solid(COLOURS[i % 3], 10 + i % 4, 14)) for i in range(n)]
    labels = [i % 3 for i in range(n)]
    for data in bad or []:
        images.append(data)
        labels.append(0)
    columns: dict[str, Any] = {"png": pa.array(images, pa.binary())}
    if label:
        columns["cls"] = pa.array(labels, pa.int64())
    pq.write_table(pa.table(columns), path)


def split_sizes(p: PreparedData) -> tuple[int, int, int]:
    assert p.train is not None
    return p.train.num_rows, rows(p.eval_bank)["label"].size, rows(p.eval_test)["label"].size


# ----------------------------------------------------------------------------- in-memory sources


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_digits_holdout_sizes_add_up_and_eval_sets_are_labelled() -> None:
    p = prepare(DataConfig(source="digits", image_size=16, holdout_fraction=0.2), seed=0)
    n_train, n_bank, n_test = split_sizes(p)
    assert n_test == round(0.2 * 1797)
    assert n_train == p.num_train == 1797 - n_test
    assert n_bank == n_train  # eval_bank_size (10,000) exceeds the train split
    assert p.num_classes == 10 and p.bad_images == 0
    train = rows(p.train)
    assert np.stack(train["image"]).shape == (n_train, 16, 16, 3) and train["image"][0].dtype == np.uint8
    ids = train["row_id"]
    assert len(np.unique(ids)) == n_train and ids.min() >= 0 and ids.max() < 1797  # rows of the source
    for ds in (p.eval_bank, p.eval_test):
        labels = rows(ds)["label"]
        assert labels.min() >= 0 and labels.max() <= 9


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_eval_sets_are_capped_at_their_configured_sizes() -> None:
    cfg = DataConfig(source="digits", image_size=8, holdout_fraction=0.2, eval_bank_size=100, eval_test_size=50)
    n_train, n_bank, n_test = split_sizes(prepare(cfg, seed=0))
    assert (n_train, n_bank, n_test) == (1797 - 359, 100, 50)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_synthetic_holds_out_labelled_images() -> None:
    cfg = DataConfig(source="synthetic", num_samples=64, num_classes=4, image_size=8, holdout_fraction=0.25)
    p = prepare(cfg, seed=3)
    n_train, n_bank, n_test = split_sizes(p)
    labels = sources.synthetic(64, 4, 8, seed=3).train.labels
    assert n_test == sum(round(0.25 * k) for k in np.bincount(labels))  # a quarter of each class
    assert (n_train, n_bank) == (64 - n_test, 64 - n_test)
    assert p.num_classes == 4
    assert set(rows(p.train)["label"].tolist()) <= set(range(4))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_cifar10_test_split_is_the_held_out_set(tmp_path: Path) -> None:
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()

    def batch(n: int, label: int) -> dict[bytes, Any]:
        data = np.repeat(np.asarray(COLOURS[label], np.uint8), 1024)  # planes R, G, B of one colour
        return {b"data": np.tile(data, (n, 1)), b"labels": [label] * n}

    for i in range(1, 6):
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(batch(4, i % 2)))
    (base / "test_batch").write_bytes(pickle.dumps(batch(6, 2)))
    p = prepare(DataConfig(source="cifar10", root=str(tmp_path), image_size=16, holdout_fraction=0.2), seed=0)
    assert p.num_train == 20 and p.num_classes == 10
    test = rows(p.eval_test)
    assert_colour_matches_label(test, 16)
    np.testing.assert_array_equal(test["label"], [2] * 6)
    assert_colour_matches_label(rows(p.train), 16)


# ----------------------------------------------------------------------------- file sources


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_image_folder_decodes_to_the_configured_size_with_class_labels(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    p = prepare(DataConfig(source="imagefolder", root=str(tmp_path), image_size=8, holdout_fraction=0.25), seed=0)
    assert p.num_classes == 3 and p.bad_images == 0
    n_train, n_bank, n_test = split_sizes(p)
    assert n_train == p.num_train and n_bank == n_train
    assert n_train + n_test == 12 and n_test == 3
    for ds in (p.train, p.eval_test):
        assert_colour_matches_label(rows(ds), 8)


@ray.remote(num_cpus=0.1)
class _Preparer:
    def num_train(self, cfg: DataConfig) -> int:
        return prepare(cfg, seed=0).num_train


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_image_folder_prepares_inside_a_tune_trials_placement_group(tmp_path: Path) -> None:
    """A sweep trial that prepares its own data (a searched data.* key, --prepare-per-trial) runs in
    Tune's placement group of one 0.1-CPU bundle that captures its child tasks: the preparation's tasks
    must run outside it (a task captured there never starts: the trial's own process holds the bundle)."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    write_image_folder(tmp_path)
    pg = placement_group([{"CPU": 0.1}])
    ray.get(pg.ready(), timeout=60)
    try:
        trial = _Preparer.options(scheduling_strategy=PlacementGroupSchedulingStrategy(  # type: ignore[attr-defined]
            pg, placement_group_capture_child_tasks=True)).remote()
        cfg = DataConfig(source="imagefolder", root=str(tmp_path), image_size=8, holdout_fraction=0.25)
        assert ray.get(trial.num_train.remote(cfg), timeout=120) == 9
    finally:
        remove_placement_group(pg)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_image_files_by_uri_decode_with_unknown_labels(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=2)
    p = prepare(DataConfig(source="images", uri=f"file://{tmp_path}", decode_size=12, image_size=8), seed=0)
    assert p.num_train == 6 and p.num_classes == 0
    assert p.eval_bank is None and p.eval_test is None
    train = rows(p.train)
    assert sorted(img.shape for img in train["image"]) == sorted(
        [(20, 12, 3), (12, 17, 3)] * 3)  # whole images (20 x 12 and 14 x 20), shorter side 12
    np.testing.assert_array_equal(train["label"], [-1] * 6)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_parquet_image_and_label_columns_decode_with_their_labels(tmp_path: Path) -> None:
    path = tmp_path / "images.parquet"
    write_parquet(path, 12)
    cfg = DataConfig(source="parquet", uri=str(path), image_column="png", label_column="cls", image_size=8,
                     holdout_fraction=0.25)
    p = prepare(cfg, seed=0)
    assert p.num_classes == 3 and p.bad_images == 0
    n_train, _, n_test = split_sizes(p)
    assert (n_train, n_test) == (9, 3)
    for ds in (p.train, p.eval_bank, p.eval_test):
        assert_colour_matches_label(rows(ds), 8)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize(("image_column", "label_column"), [("image", "cls"), ("png", "label")])
def test_parquet_wrong_column_is_a_user_error_naming_the_field(tmp_path: Path, image_column: str,
                                                               label_column: str) -> None:
    path = tmp_path / "images.parquet"
    write_parquet(path, 3)
    cfg = DataConfig(source="parquet", uri=str(path), image_column=image_column, label_column=label_column)
    with pytest.raises(UserError, match=r"data\.image_column/label_column") as info:
        prepare(cfg, seed=0)
    missing = image_column if image_column == "image" else label_column
    assert f"[{missing!r}] not in" in str(info.value)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_parquet_rows_keep_their_position_in_the_file_through_the_split(tmp_path: Path) -> None:
    """Parquet rows are read by Ray's row hash, which ties each to its position in the file: the held-out
    queries and the training rows are disjoint, and together the whole file, each row with its label."""
    path = tmp_path / "images.parquet"
    write_parquet(path, 30)
    cfg = DataConfig(source="parquet", uri=str(path), image_column="png", label_column="cls", image_size=8,
                     holdout_fraction=0.2, eval_test_size=100)
    p = prepare(cfg, seed=1)
    train, test = rows(p.train), rows(p.eval_test)
    assert sorted([*train["row_id"].tolist(), *test["row_id"].tolist()]) == list(range(30))
    for batch in (train, test):
        np.testing.assert_array_equal(batch["label"], batch["row_id"] % 3)  # write_parquet: row i is class i % 3
        assert_colour_matches_label(batch, 8)
    assert np.bincount(test["label"]).tolist() == [2, 2, 2]  # a stratified fifth of each class


# ----------------------------------------------------------------------------- bad images


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_image_folder_bad_files_are_skipped_and_counted(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=2, bad=bad_files())
    cfg = DataConfig(source="imagefolder", root=str(tmp_path), image_size=8, holdout_fraction=0.0,
                     bad_images="skip")
    p = prepare(cfg, seed=0)
    assert p.bad_images == 4
    assert p.num_train == 6
    assert_colour_matches_label(rows(p.train), 8)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_image_folder_bad_file_under_fail_raises_naming_the_first_bad_file(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=2, bad=bad_files())
    cfg = DataConfig(source="imagefolder", root=str(tmp_path), image_size=8, bad_images="fail")
    with pytest.raises(BadImageError) as info:
        prepare(cfg, seed=0)
    message = str(info.value)
    assert message.startswith(f"unreadable image {tmp_path / 'c0' / 'bad1_corrupt.png'}: ")
    assert "data.bad_images=skip" in message
    assert "\n" not in message  # one line for the CLI, not Ray's remote traceback


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("kind", ["truncated", "zero_byte", "text"])
def test_each_kind_of_bad_file_fails_under_fail(tmp_path: Path, kind: str) -> None:
    bad = {name: data for name, data in bad_files().items() if kind in name}
    write_image_folder(tmp_path, per_class=1, bad=bad)
    cfg = DataConfig(source="imagefolder", root=str(tmp_path), image_size=8, bad_images="fail")
    with pytest.raises(BadImageError) as info:
        prepare(cfg, seed=0)
    assert str(info.value).startswith(f"unreadable image {tmp_path / 'c0' / next(iter(bad))}: ")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_parquet_without_label_column_skips_and_counts_bad_rows(tmp_path: Path) -> None:
    """No label column: labels are -1 and there is nothing to evaluate on; bad rows are counted.
    (Labels staying aligned with their images after a skip is checked on the ImageFolder above.)"""
    path = tmp_path / "images.parquet"
    write_parquet(path, 5, bad=[*bad_files().values(), None], label=False)
    p = prepare(DataConfig(source="parquet", uri=str(path), image_column="png", label_column="", image_size=8), 0)
    assert (p.num_train, p.bad_images, p.num_classes, p.eval_bank, p.eval_test) == (5, 5, 0, None, None)
    train = rows(p.train)
    assert len(train["image"]) == 5 and all(min(img.shape[:2]) == 8 for img in train["image"])
    np.testing.assert_array_equal(train["label"], [-1] * 5)
    colours = np.stack([img.reshape(-1, 3).mean(axis=0) for img in train["image"]]).argmax(axis=1)
    np.testing.assert_array_equal(np.bincount(colours, minlength=3), [2, 2, 1])  # rows 0..4 are classes 0,1,2,0,1


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_bad_parquet_row_is_named_by_its_position_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "images.parquet"
    write_parquet(path, 70, bad=[b"not an image"], label=False)  # past the decode's first batch of 64
    cfg = DataConfig(source="parquet", uri=str(path), image_column="png", label_column="", image_size=8,
                     bad_images="fail")
    with pytest.raises(BadImageError, match=r"^unreadable image row 70: "):
        prepare(cfg, seed=0)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_parquet_bad_row_under_fail_raises_bad_image_error(tmp_path: Path) -> None:
    path = tmp_path / "images.parquet"
    write_parquet(path, 4, bad=[b"not an image"], label=False)
    cfg = DataConfig(source="parquet", uri=str(path), image_column="png", label_column="", image_size=8,
                     bad_images="fail")
    with pytest.raises(BadImageError, match=r"^unreadable image row 4: .*data\.bad_images=skip"):
        prepare(cfg, seed=0)


# ----------------------------------------------------------------------------- class-balanced samples


def test_balanced_order_prefixes_hold_every_class_of_a_class_sorted_source() -> None:
    labels = np.repeat(np.arange(5), [40, 10, 30, 30, 30])  # class-sorted, one small class
    order = balanced_order(np.concatenate([labels, [-1, -1]]), np.random.default_rng(0))
    assert len(order) == len(labels) and len(np.unique(order)) == len(labels)  # labelled rows only, once each
    assert np.bincount(labels[order[:25]], minlength=5).tolist() == [5] * 5
    counts = np.bincount(labels[order[:60]], minlength=5)
    assert counts[1] == 10 and sorted(counts[[0, 2, 3, 4]].tolist()) == [12, 12, 13, 13]  # class 1 runs out


def test_stratified_holdout_takes_the_fraction_of_each_class() -> None:
    labels = np.repeat(np.arange(3), [100, 20, 50])
    held = stratified_holdout(labels, 0.2, np.random.default_rng(1))
    assert np.bincount(labels[held], minlength=3).tolist() == [20, 4, 10]


# --- what each read task of the decode-once preparation receives (no Ray) ---------------------------------


def test_the_read_tasks_of_image_files_carry_their_own_rows_and_no_listing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The map function that reads the files pickles to the same bytes at 10 and 10,000 files: each block
    carries its own rows' paths, ids and labels, and a task reads just those (a missing file: no bytes)."""
    captured: dict[str, Any] = {}

    class Blocks:
        def __init__(self, blocks: list[pa.Table]) -> None:
            captured["blocks"] = blocks

        def map_batches(self, fn: Any, **kwargs: Any) -> Blocks:
            captured["fn"] = fn
            return self

    monkeypatch.setattr(ray.data, "from_arrow", Blocks)
    (tmp_path / "a.jpg").write_bytes(b"jpeg")
    sizes = {}
    for n in (10, 10_000):
        paths = tuple(str(tmp_path / f"{i:07d}.jpg") for i in range(n))
        Rows(np.arange(n) % 3, np.arange(n) * 2, 3, "w", paths=paths, filesystem=pafs.LocalFileSystem()).dataset()
        blocks = captured["blocks"]
        assert max(b.num_rows for b in blocks) <= FILE_ROWS_PER_BLOCK and sum(b.num_rows for b in blocks) == n
        assert blocks[-1].column(ROW_ID).to_pylist()[-1] == 2 * (n - 1)
        sizes[n] = len(ray.cloudpickle.dumps(captured["fn"]))
    assert sizes[10_000] == sizes[10]
    read = captured["fn"]({"path": np.asarray([str(tmp_path / "a.jpg"), str(tmp_path / "gone.jpg")]),
                           ROW_ID: np.asarray([4, 6]), "label": np.asarray([1, 0])})
    assert read["bytes"].tolist() == [b"jpeg", None] and read[ROW_ID].tolist() == [4, 6]


def test_the_decoded_cache_is_budgeted_by_the_smallest_node_that_runs_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """After an epoch every node holds the whole cache (docs/BENCHMARKS.md, section 10): it must fit in one
    node's object store, not in the cluster's sum."""
    mb = 2.0**20
    nodes = [{"Alive": True, "Resources": {"CPU": 3.0, "object_store_memory": 300 * mb}},
             {"Alive": True, "Resources": {"CPU": 3.0, "object_store_memory": 200 * mb}},
             {"Alive": False, "Resources": {"CPU": 3.0, "object_store_memory": 50 * mb}},  # lost
             {"Alive": True, "Resources": {"object_store_memory": 10 * mb}}]  # a head that runs no tasks
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    budget = node_object_store()
    assert budget == 200 * mb
    cfg = DataConfig(source="imagefolder", root="r", decode_size=64, center_square=True)
    rows_that_fit = int(0.5 * budget / (64 * 64 * 3))
    assert _fits(cfg, rows_that_fit - 1, budget) and not _fits(cfg, rows_that_fit + 1, budget)
    monkeypatch.setattr(ray, "nodes", lambda: [])
    assert node_object_store() is None
