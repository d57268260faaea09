"""Tests for orchestrator.data: ``prepare`` through Ray Data for each kind of source, the per-epoch
augmentation stage, and the bad-image policy (skip and count, or fail before training).

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
import pyarrow.parquet as pq
import pytest
import ray
import ray.data
from PIL import Image

from orchestrator.data import PreparedData, augment_batch, augmented, prepare
from orchestrator.errors import BadImageError, UserError
from workloads.config import AugConfig, DataConfig

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


def rows(ds: ray.data.Dataset | None) -> dict[str, np.ndarray]:
    """All of a small dataset as one numpy batch."""
    assert ds is not None
    return ds.take_batch(batch_size=100_000, batch_format="numpy")


def assert_colour_matches_label(batch: dict[str, np.ndarray], size: int) -> None:
    """Decoded to (size, size, 3) uint8, and each image's colour is its label's (JPEG: roughly)."""
    images, labels = batch["image"], batch["label"]
    assert images.shape[1:] == (size, size, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    mean_rgb = images.reshape(len(images), -1, 3).mean(axis=1)
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
    return p.train.count(), rows(p.eval_bank)["label"].size, rows(p.eval_test)["label"].size


# ----------------------------------------------------------------------------- in-memory sources


@pytest.mark.usefixtures("ray_local")
def test_digits_holdout_sizes_add_up_and_eval_sets_are_labelled() -> None:
    p = prepare(DataConfig(source="digits", image_size=16, holdout_fraction=0.2), seed=0)
    n_train, n_bank, n_test = split_sizes(p)
    assert n_test == round(0.2 * 1797)
    assert n_train == p.num_train == 1797 - n_test
    assert n_bank == n_train  # eval_bank_size (10,000) exceeds the train split
    assert p.num_classes == 10 and p.bad_images == 0
    train = rows(p.train)
    assert train["image"].shape == (n_train, 16, 16, 3) and train["image"].dtype == np.uint8
    for ds in (p.eval_bank, p.eval_test):
        labels = rows(ds)["label"]
        assert labels.min() >= 0 and labels.max() <= 9


@pytest.mark.usefixtures("ray_local")
def test_eval_sets_are_capped_at_their_configured_sizes() -> None:
    cfg = DataConfig(source="digits", image_size=8, holdout_fraction=0.2, eval_bank_size=100, eval_test_size=50)
    n_train, n_bank, n_test = split_sizes(prepare(cfg, seed=0))
    assert (n_train, n_bank, n_test) == (1797 - 359, 100, 50)


@pytest.mark.usefixtures("ray_local")
def test_synthetic_holds_out_labelled_images() -> None:
    cfg = DataConfig(source="synthetic", num_samples=64, num_classes=4, image_size=8, holdout_fraction=0.25)
    p = prepare(cfg, seed=3)
    n_train, n_bank, n_test = split_sizes(p)
    assert (n_train, n_bank, n_test) == (48, 48, 16)
    assert p.num_classes == 4
    assert set(rows(p.train)["label"].tolist()) <= set(range(4))


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


@pytest.mark.usefixtures("ray_local")
def test_image_files_by_uri_decode_with_unknown_labels(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=2)
    p = prepare(DataConfig(source="images", uri=f"file://{tmp_path}", decode_size=12, image_size=8), seed=0)
    assert p.num_train == 6 and p.num_classes == 0
    assert p.eval_bank is None and p.eval_test is None
    train = rows(p.train)
    assert train["image"].shape == (6, 12, 12, 3)
    np.testing.assert_array_equal(train["label"], [-1] * 6)


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


# ----------------------------------------------------------------------------- bad images


@pytest.mark.usefixtures("ray_local")
def test_image_folder_bad_files_are_skipped_and_counted(tmp_path: Path) -> None:
    write_image_folder(tmp_path, per_class=2, bad=bad_files())
    cfg = DataConfig(source="imagefolder", root=str(tmp_path), image_size=8, holdout_fraction=0.0,
                     bad_images="skip")
    p = prepare(cfg, seed=0)
    assert p.bad_images == 4
    assert p.num_train == 6
    assert_colour_matches_label(rows(p.train), 8)


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


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("kind", ["truncated", "zero_byte", "text"])
def test_each_kind_of_bad_file_fails_under_fail(tmp_path: Path, kind: str) -> None:
    bad = {name: data for name, data in bad_files().items() if kind in name}
    write_image_folder(tmp_path, per_class=1, bad=bad)
    cfg = DataConfig(source="imagefolder", root=str(tmp_path), image_size=8, bad_images="fail")
    with pytest.raises(BadImageError) as info:
        prepare(cfg, seed=0)
    assert str(info.value).startswith(f"unreadable image {tmp_path / 'c0' / next(iter(bad))}: ")


@pytest.mark.usefixtures("ray_local")
def test_parquet_without_label_column_skips_and_counts_bad_rows(tmp_path: Path) -> None:
    """No label column: labels are -1 and there is nothing to evaluate on; bad rows are counted.
    (Labels staying aligned with their images after a skip is checked on the ImageFolder above.)"""
    path = tmp_path / "images.parquet"
    write_parquet(path, 5, bad=[*bad_files().values(), None], label=False)
    p = prepare(DataConfig(source="parquet", uri=str(path), image_column="png", label_column="", image_size=8), 0)
    assert (p.num_train, p.bad_images, p.num_classes, p.eval_bank, p.eval_test) == (5, 5, 0, None, None)
    train = rows(p.train)
    assert train["image"].shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(train["label"], [-1] * 5)
    colours = train["image"].reshape(5, -1, 3).mean(axis=1).argmax(axis=1)
    np.testing.assert_array_equal(np.bincount(colours, minlength=3), [2, 2, 1])  # rows 0..4 are classes 0,1,2,0,1


@pytest.mark.usefixtures("ray_local")
def test_parquet_bad_row_under_fail_raises_bad_image_error(tmp_path: Path) -> None:
    path = tmp_path / "images.parquet"
    write_parquet(path, 4, bad=[b"not an image"], label=False)
    cfg = DataConfig(source="parquet", uri=str(path), image_column="png", label_column="", image_size=8,
                     bad_images="fail")
    with pytest.raises(BadImageError, match=r"^unreadable image row 4: .*data\.bad_images=skip"):
        prepare(cfg, seed=0)


# ----------------------------------------------------------------------------- augmentation


def gradient_image(size: int) -> np.ndarray:
    """An asymmetric colour gradient: every crop, flip or jitter changes some pixel."""
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 255 // size, y * 255 // size, (x * y) % 256], axis=-1).astype(np.uint8)


def test_augment_batch_gives_two_uint8_views_and_new_ones_each_call() -> None:
    images = np.repeat(gradient_image(16)[None], 4, axis=0)
    aug = AugConfig().__dict__
    a = augment_batch({"image": images}, aug, image_size=8)
    b = augment_batch({"image": images}, aug, image_size=8)
    for out in (a, b):
        assert set(out) == {"view0", "view1"}
        assert out["view0"].shape == out["view1"].shape == (4, 3, 8, 8)
        assert out["view0"].dtype == np.uint8
    assert not np.array_equal(a["view0"], b["view0"])
    assert not np.array_equal(a["view0"], a["view1"])
    assert not np.array_equal(a["view0"][0], a["view0"][1])  # per-image parameters


@pytest.mark.usefixtures("ray_local")
def test_augmented_views_differ_between_epochs_and_between_tasks() -> None:
    """All images are the same, so any repeat of a view could only come from repeated randomness
    (e.g. fresh Ray workers starting from torch's fixed default seed)."""
    n, batch = 64, 16
    images = np.repeat(gradient_image(16)[None], n, axis=0)
    ds = ray.data.from_numpy(np.split(images, n // batch)).rename_columns({"data": "image"})  # one block per batch
    cfg = DataConfig(source="synthetic", image_size=8, decode_size=16, augment_batch_size=batch)
    stage = augmented(ds, AugConfig(), cfg)

    def epoch() -> list[np.ndarray]:
        out = list(stage.iter_batches(batch_size=None, batch_format="numpy"))
        for b in out:
            assert b["view0"].shape == b["view1"].shape == (batch, 3, 8, 8)
            assert b["view0"].dtype == b["view1"].dtype == np.uint8
        assert sum(len(b["view0"]) for b in out) == n
        return [b["view0"] for b in out]

    first, second = epoch(), epoch()
    assert len(first) >= 2
    for i, a in enumerate(first):
        for b in first[i + 1:]:
            assert not np.array_equal(a, b)  # tasks within one epoch
        for b in second:
            assert not np.array_equal(a, b)  # the same images in the next epoch
