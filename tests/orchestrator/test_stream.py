"""The training stream on data shaped like users': class-sorted folders and Parquet of JPEG
photos. Batches are read exactly as the trainer reads them: ``prepare`` -> ``train_stream`` ->
``iter_torch_batches`` with the epoch set on the clock, in order (the trainer's ingest option).

One small local Ray for the module: 2 CPUs and a 300 MiB object store.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import ray.data
import torch
from photos import class_ordered_parquet, image_folder
from PIL import Image

from orchestrator.data import sources
from orchestrator.data.prepare import prepare
from orchestrator.data.stream import (
    ROW_ID,
    EpochClock,
    RowStore,
    StoreIndex,
    chunk_positions,
    epoch_order,
    first_views,
    shuffled,
    train_stream,
)
from workloads.augment.views import finish_views
from workloads.config import Config

CLASSES, PER_CLASS, BATCH = 10, 100, 64


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False)
    options = ray.data.DataContext.get_current().execution_options
    options.preserve_order = True  # as the trainer's ingest of the stream
    try:
        yield
    finally:
        options.preserve_order = False
        ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("imagefolder"), CLASSES, PER_CLASS)


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class-sorted too, for the tests that prepare it several times."""
    return image_folder(tmp_path_factory.mktemp("small"), CLASSES, 20, seed=2)


def config(**data: Any) -> Config:
    seed = data.pop("seed", 0)
    return Config().replace({"data.image_size": 16, "data.decode_size": 16, "data.holdout_fraction": 0.0,
                             "data.augment_batch_size": BATCH, "train.seed": seed,
                             **{f"data.{k}": v for k, v in data.items()}})


def epoch_batches(cfg: Config, store: RowStore, epoch: int, clock: Any = None, batch: int = BATCH
                  ) -> list[dict[str, np.ndarray]]:
    """One epoch of the stream in the trainer's batches (drop_last), rows and views."""
    clock = clock or EpochClock.remote()  # type: ignore[attr-defined]
    ray.get(clock.set.remote(epoch))
    ds = train_stream(store, cfg, clock)
    return [{k: v.numpy() for k, v in b.items()}
            for b in ds.iter_torch_batches(batch_size=batch, drop_last=True)]


def expected_distinct_classes(class_sizes: list[int], batch: int) -> float:
    """E[#classes in a uniformly random batch] = Σ_c 1 − C(N − n_c, b) / C(N, b)."""
    n = sum(class_sizes)
    return sum(1 - math.comb(n - k, batch) / math.comb(n, batch) for k in class_sizes)


def assert_batches_mix_classes_like_uniform_ones(batches: list[dict[str, np.ndarray]], labels: np.ndarray) -> None:
    distinct = [len(np.unique(labels[b[ROW_ID]])) for b in batches]
    expected = expected_distinct_classes([PER_CLASS] * CLASSES, BATCH)  # ≈ 9.99
    assert abs(np.mean(distinct) - expected) <= 0.1 * expected, (np.mean(distinct), expected)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_class_sorted_image_folder_batches_mix_classes_like_uniform_batches_and_epochs_differ(folder: Path) -> None:
    cfg = config(source="imagefolder", root=str(folder))
    data = prepare(cfg.data, seed=0)
    assert data.train is not None and data.num_train == CLASSES * PER_CLASS
    labels = np.asarray(sources.list_image_folder(str(folder)).labels)  # row id = listing position
    first, second = epoch_batches(cfg, data.train, 1), epoch_batches(cfg, data.train, 2)
    assert len(first) == len(second) == CLASSES * PER_CLASS // BATCH
    for batches in (first, second):
        assert_batches_mix_classes_like_uniform_ones(batches, labels)
        rows = np.concatenate([b[ROW_ID] for b in batches])
        assert len(np.unique(rows)) == len(rows)  # each row at most once an epoch
    assert {frozenset(b[ROW_ID].tolist()) for b in first}.isdisjoint({frozenset(b[ROW_ID].tolist()) for b in second})


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_class_ordered_parquet_batches_mix_classes_like_uniform_batches(tmp_path: Path) -> None:
    path = class_ordered_parquet(tmp_path / "photos.parquet", CLASSES, PER_CLASS)
    cfg = config(source="parquet", uri=str(path))
    data = prepare(cfg.data, seed=0)
    assert data.train is not None
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)  # row id = position in the file
    assert_batches_mix_classes_like_uniform_ones(epoch_batches(cfg, data.train, 1), labels)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_same_seed_gives_the_same_first_batch_bit_for_bit_and_another_seed_does_not(small_folder: Path) -> None:
    runs = []
    for seed in (7, 7, 8):
        cfg = config(source="imagefolder", root=str(small_folder), seed=seed)
        data = prepare(cfg.data, seed=seed)  # a new run: its own preparation, clock and stream
        assert data.train is not None
        runs.append(epoch_batches(cfg, data.train, 1)[0])
    same, again, other = runs
    for column in ("view0", "view1", ROW_ID):
        assert np.array_equal(same[column], again[column])
    assert not np.array_equal(same[ROW_ID], other[ROW_ID])
    assert not np.array_equal(same["view0"], other["view0"])


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("device", ["data", "train"])
def test_the_views_picture_shows_the_rows_and_views_the_stream_gives_first(small_folder: Path, device: str) -> None:
    """The driver draws the run's picture of augmented views itself (no Ray Data execution for 16 images):
    the same rows and the same views as the first rows of the stream before training (epoch 0), for
    views made whole on the data workers and for crops finished on the training device."""
    cfg = config(source="imagefolder", root=str(small_folder), seed=3).replace({"aug.device": device})
    data = prepare(cfg.data, seed=3)
    assert data.train is not None
    streamed = epoch_batches(cfg, data.train, 0, batch=16)[0]
    drawn = first_views(data.train, cfg, 16)
    assert set(drawn) == set(streamed)
    for column in drawn:
        assert np.array_equal(drawn[column], streamed[column]), column
    views = finish_views({k: torch.as_tensor(v) for k, v in drawn.items() if k != ROW_ID}, cfg)
    assert views["view0"].shape == (16, 3, 16, 16) and views["view0"].dtype == torch.uint8


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_resumed_run_streams_the_same_epoch_2_as_an_uninterrupted_run(
        small_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """... and the resumed driver reads the listing the run kept in its folder instead of listing again."""
    listed: list[str] = []
    real = sources.list_image_folder
    monkeypatch.setattr(sources, "list_image_folder", lambda *a, **k: listed.append("list") or real(*a, **k))
    cfg = config(source="imagefolder", root=str(small_folder), seed=3)
    run = str(tmp_path / "runs" / "r")
    data = prepare(cfg.data, seed=3, listings=run)
    assert data.train is not None and listed == ["list"]
    clock = EpochClock.remote()  # type: ignore[attr-defined]
    epoch_batches(cfg, data.train, 1, clock)
    uninterrupted = epoch_batches(cfg, data.train, 2, clock)  # the same pipeline, its second epoch
    resumed_data = prepare(cfg.data, seed=3, listings=run)  # stopped after epoch 1; the new driver starts at epoch 2
    assert resumed_data.train is not None and listed == ["list"]  # not listed again
    resumed = epoch_batches(cfg, resumed_data.train, 2)
    assert len(resumed) == len(uninterrupted)
    for a, b in zip(uninterrupted, resumed, strict=True):
        for column in ("view0", "view1", ROW_ID):
            assert np.array_equal(a[column], b[column])


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_decoding_every_epoch_streams_the_same_rows_and_views_as_the_cache(small_folder: Path) -> None:
    """data.cache_decoded=false reads and decodes the files in the stream's tasks: same sequence.

    Decoded in the stream, a photo is not resized (the crops are drawn from the whole photo), so at a
    decode size equal to the photos' own shorter side (24) the cache holds the same pixels and the two
    give the same views bit for bit."""
    cached_cfg = config(source="imagefolder", root=str(small_folder), decode_size=24)
    files_cfg = config(source="imagefolder", root=str(small_folder), decode_size=24, cache_decoded=False)
    cached, files = prepare(cached_cfg.data, seed=0), prepare(files_cfg.data, seed=0)
    assert cached.train is not None and files.train is not None
    assert cached.train.blocks and not files.train.blocks
    a, b = epoch_batches(cached_cfg, cached.train, 4), epoch_batches(files_cfg, files.train, 4)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x[ROW_ID], y[ROW_ID]) and np.array_equal(x["view0"], y["view0"])


def banded_photo(path: Path) -> None:
    """A 4:3 image: blue centre square, red in the bands outside it (48 x 64: bands 8 px wide)."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :, 2] = 255
    image[:, :8] = image[:, 56:] = (255, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("center_square", [False, True])
def test_crops_cover_the_sides_of_a_4_3_photo_unless_center_square(tmp_path: Path, center_square: bool) -> None:
    for i in range(12):
        banded_photo(tmp_path / "a" / f"{i}.png")
    cfg = config(source="imagefolder", root=str(tmp_path), center_square=center_square, decode_size=48,
                 augment_batch_size=4).replace({"aug.jitter_p": 0.0, "aug.gray_p": 0.0})
    data = prepare(cfg.data, seed=0)
    assert data.train is not None
    views = np.concatenate([b[name] for epoch in range(1, 9) for b in epoch_batches(cfg, data.train, epoch, batch=4)
                            for name in ("view0", "view1")])  # 192 views
    red = (views[:, 0].astype(int) - views[:, 2].astype(int) > 128).reshape(len(views), -1).any(axis=1)
    if center_square:
        assert not red.any()
    else:
        assert red.mean() > 0.2  # crops reach outside the centre square


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_eval_root_gives_a_class_sorted_source_a_kNN_bank_and_queries_of_every_class(
        folder: Path, tmp_path: Path) -> None:
    val = image_folder(tmp_path / "val", CLASSES, 10, seed=1)
    cfg = config(source="imagefolder", root=str(folder), eval_root=str(val)).replace(
        {"data.eval_bank_size": 50, "data.eval_test_size": 30})
    data = prepare(cfg.data, seed=0)
    assert data.num_classes == CLASSES and data.eval_bank is not None and data.eval_test is not None
    bank, queries = (ds.take_batch(10_000, batch_format="numpy") for ds in (data.eval_bank, data.eval_test))
    assert np.bincount(bank["label"], minlength=CLASSES).tolist() == [5] * CLASSES  # balanced, every class
    assert np.bincount(queries["label"], minlength=CLASSES).tolist() == [3] * CLASSES
    assert bank["image"].shape[1:] == queries["image"].shape[1:] == (16, 16, 3)  # centre squares
    assert data.train is not None and data.num_train == CLASSES * PER_CLASS  # nothing held out of training


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_colour_stage_on_the_training_device_gives_the_data_workers_views_bit_for_bit(small_folder: Path) -> None:
    """aug.device=train: the stream carries uint8 crops and a few small parameter columns; the trainer's
    ``finish_views`` turns them into exactly the views that aug.device=data streams."""
    streams = {}
    for device in ("data", "train"):
        cfg = config(source="imagefolder", root=str(small_folder), seed=3).replace({"aug.device": device,
                                                                                    "aug.blur_p": 0.5})
        data = prepare(cfg.data, seed=3)
        assert data.train is not None
        streams[device] = (cfg, epoch_batches(cfg, data.train, 1))
    (_, on_data), (cfg, on_device) = streams["data"], streams["train"]
    assert set(on_data[0]) == {"view0", "view1", ROW_ID}
    assert {"view0__flip", "view0__order", "view1__sigma"} <= set(on_device[0])
    assert on_device[0]["view0__order"].dtype == np.int8 and on_device[0]["view0"].dtype == np.uint8
    for plain, split in zip(on_data, on_device, strict=True):
        finished = finish_views({k: torch.from_numpy(v) for k, v in split.items()}, cfg)
        assert set(finished) == {"view0", "view1", ROW_ID}
        for column in ("view0", "view1", ROW_ID):
            assert np.array_equal(plain[column], finished[column].numpy())


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_multi_crop_views_of_two_sizes_arrive_through_the_stream_and_feed_swav(small_folder: Path) -> None:
    """Multi-crop (workloads/augment/multicrop.py): large and small crops travel as separate columns of one row;
    ``iter_torch_batches`` delivers each at its own size, and SwAV's loss normalises and consumes them."""
    from contextlib import nullcontext

    import torch

    from workloads.method import Net, normalize
    from workloads.methods import method

    cfg = config(source="imagefolder", root=str(small_folder)).replace(
        {"method": "swav", "multicrop.small_crops": 3, "multicrop.small_size": 8, "model.widths": [8, 16],
         "model.blocks": [1, 1], "swav.num_prototypes": 10})
    data = prepare(cfg.data, seed=0)
    assert data.train is not None
    batches = epoch_batches(cfg, data.train, 1, batch=16)
    assert len(batches) == CLASSES * 20 // 16
    shapes = {name: v.shape for name, v in batches[0].items() if name != ROW_ID}
    assert shapes == {"view0": (16, 3, 16, 16), "view1": (16, 3, 16, 16), "small0": (16, 3, 8, 8),
                      "small1": (16, 3, 8, 8), "small2": (16, 3, 8, 8)}
    assert all(v.dtype == np.uint8 for name, v in batches[0].items() if name != ROW_ID)
    swav = method("swav")
    model = swav.build_model(cfg)
    batch = {k: torch.from_numpy(v) for k, v in batches[0].items() if k != ROW_ID}
    loss = swav.loss(Net(forward=model, core=model, image=normalize, autocast=nullcontext),
                     batch, cfg)
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("ragged", [False, True])
def test_tensor_rows_are_the_rows_asked_for_as_views_of_the_block_across_chunks(ragged: bool) -> None:
    """The cached blocks' images reach the crops as views of the block (no copy of the pixels), the
    right rows in the order asked for, whichever chunk of the column holds them."""
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    from orchestrator.data.stream import _tensor_rows

    rng = np.random.default_rng(0)
    shapes = [(6, 5 + i % 3 if ragged else 5, 3) for i in range(9)]
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in shapes]

    def chunk(part: list[np.ndarray]) -> pa.Array:
        if not ragged:
            return ArrowTensorArray.from_numpy(np.stack(part))
        column = np.empty(len(part), dtype=object)  # ragged: what decode_batch hands Ray Data
        column[:] = part
        return ArrowTensorArray.from_numpy(column)

    column = pa.chunked_array([chunk(images[:4]), chunk(images[4:])])
    rows = np.asarray([7, 0, 3, 4, 8, 2])  # 3 of the first chunk's 4 rows (converted whole), 3 of 5 (whole)
    out = _tensor_rows(column, rows)
    for got, r in zip(out, rows.tolist(), strict=True):
        assert np.array_equal(got, images[r])
    rows = np.asarray([8, 1])  # one row of each chunk: the second (1 of 5 rows) through a one-row slice
    out = _tensor_rows(column, rows)
    for got, r in zip(out, rows.tolist(), strict=True):
        assert np.array_equal(got, images[r])
        k, j = (0, r) if r < 4 else (1, r - 4)
        assert np.shares_memory(got, column.chunk(k).to_numpy()[j])  # a view, not a copy


# --- each task's own chunk of the epoch's order (no Ray) ---------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_an_epochs_order_is_a_permutation_and_any_chunk_of_it_is_computed_alone(n: int) -> None:
    full = shuffled(np.arange(n), n, seed=3, epoch=2)
    assert np.array_equal(np.sort(full), np.arange(n))
    start, stop = n // 3, n // 3 + 5
    assert np.array_equal(shuffled(np.arange(start, min(stop, n)), n, 3, 2), full[start:stop])
    index = StoreIndex(np.arange(10, 10 + n), np.zeros(1, np.int64), np.arange(n)[::-1].copy(), None)
    order = epoch_order(index, 3, 2)
    assert np.array_equal(order, index.canonical[full])
    assert np.array_equal(chunk_positions(index, 3, 2, start, stop), order[start:stop])
    assert np.array_equal(chunk_positions(index, 3, 2, start, stop, shuffle=False), index.canonical[start:stop])


def test_epochs_and_seeds_draw_other_orders_whose_chunks_mix_a_class_sorted_source() -> None:
    n = 10_000
    orders = [shuffled(np.arange(n), n, seed, epoch) for seed, epoch in ((0, 1), (0, 2), (1, 1))]
    for a in orders:
        for b in orders:
            assert a is b or (a != b).mean() > 0.99
    labels = np.arange(n) // 100  # 100 classes of 100, in class order
    for order in orders:
        per_chunk = [np.bincount(labels[order[i:i + 256]], minlength=100) for i in range(0, n - 255, 256)]
        assert max(c.max() for c in per_chunk) <= 12  # ~2.6 of each class per chunk expected, none piled up
        assert abs(np.corrcoef(np.arange(n), order)[0, 1]) < 0.05
