"""Ray Data preparation: read -> decode (once, cached) -> the row store the training stream draws from.

The decoded images are materialised in the object store when they fit (half of it), so every epoch
pays only for augmentation; otherwise image files are read and decoded again in each epoch's tasks
(Parquet keeps its encoded bytes in the store). Decoding keeps the whole image, aspect ratio and
all (``data.center_square`` keeps only the centre square), so crops are drawn from all of it. The
per-epoch order and the views are ``orchestrator.data.stream``'s. The labelled evaluation sets (the kNN
bank and its queries) are class-balanced samples, decoded to centre squares, handed whole to every
train worker; only rank 0 reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data
import torch
from ray.data.extensions import ArrowTensorArray

from orchestrator.data import sources
from orchestrator.data.decode import decode_stage, materialize
from orchestrator.data.evalsets import (
    Files,
    balanced_order,
    eval_root_files,
    eval_sets,
    read_labelled,
    stratified_holdout,
)
from orchestrator.data.stream import RowStore
from orchestrator.errors import UserError
from workloads.config import DataConfig
from workloads.method import MEAN, STD, normalize

log = logging.getLogger(__name__)

__all__ = ["MEAN", "STD", "PreparedData", "normalize", "prepare", "to_tensor_images"]
# Bytes of a decoded image relative to its centre square: photos are mostly 4:3 or 3:4.
_WHOLE_IMAGE_AREA = 4 / 3


@dataclass
class PreparedData:
    """What the driver hands to Ray Train, plus facts the run logs."""

    train: RowStore | None  # the training rows (None when only evaluation sets were asked for)
    eval_bank: ray.data.Dataset | None  # labelled images for the kNN bank / linear-probe train split
    eval_test: ray.data.Dataset | None  # labelled queries: held-out images, a test split or data.eval_root
    num_train: int
    num_classes: int  # 0 when there are no labels
    bad_images: int  # images skipped under data.bad_images=skip (-1: not counted, decode not cached)


def prepare(cfg: DataConfig, seed: int, object_store_budget: float | None = None, train: bool = True
            ) -> PreparedData:
    """Read the configured source into the training row store and the evaluation sets."""
    size = cfg.stored_size
    with _ordered():
        if cfg.source in ("digits", "synthetic", *sources.TORCHVISION_SOURCES):
            return _prepare_arrays(cfg, _load_arrays(cfg, seed), size, seed, train)
        if cfg.source == "parquet":
            return _prepare_parquet(cfg, size, seed, object_store_budget, train)
        return _prepare_listing(cfg, size, seed, object_store_budget, train)


@contextmanager
def _ordered() -> Iterator[None]:
    """Ray Data keeps the source's order while preparing: row positions must not depend on which task
    finished first (they feed the seeded per-epoch order)."""
    options = ray.data.DataContext.get_current().execution_options
    before = options.preserve_order
    options.preserve_order = True
    try:
        yield
    finally:
        options.preserve_order = before


def _load_arrays(cfg: DataConfig, seed: int) -> sources.ArraySource:
    if cfg.source == "digits":
        return sources.load_digits()
    if cfg.source == "synthetic":
        return sources.synthetic(cfg.num_samples, cfg.num_classes, cfg.stored_size, seed)
    return sources.load_torchvision(cfg.source, cfg.root, cfg.split, cfg.download)


def _resize_square(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, size, size, 3): shorter side to ``size``, centre crop (as decode)."""
    _, h, w, _ = images.shape
    if h == w == size:
        return images
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()  # N x 3 x H x W
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# --- in-memory sources -------------------------------------------------------------------------------


def _table(images: np.ndarray, labels: np.ndarray, row_ids: np.ndarray | None = None) -> pa.Table:
    columns = {"image": ArrowTensorArray.from_numpy(np.ascontiguousarray(images)), "label": pa.array(labels)}
    if row_ids is not None:
        columns["row_id"] = pa.array(row_ids)
    return pa.table(columns)


def _labelled_set(images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator) -> ray.data.Dataset:
    pick = balanced_order(labels, rng)[:n]
    return ray.data.from_arrow(_table(images[pick], labels[pick]))


def _prepare_arrays(cfg: DataConfig, src: sources.ArraySource, size: int, seed: int, with_train: bool
                    ) -> PreparedData:
    rng = np.random.default_rng(seed)
    images, labels = _resize_square(src.train.images, size), src.train.labels
    row_ids = np.arange(len(labels))
    test: sources.ArraySplit | None = None
    if src.test is not None:
        test = sources.ArraySplit(_resize_square(src.test.images, size), src.test.labels)
    elif cfg.holdout_fraction > 0 and (labels >= 0).any():
        held = stratified_holdout(labels, cfg.holdout_fraction, rng)
        test = sources.ArraySplit(images[held], labels[held])
        images, labels, row_ids = images[~held], labels[~held], row_ids[~held]
    if len(labels) < 2:
        raise UserError(f"data: only {len(labels)} training images after the held-out split; need at least 2")
    has_labels = bool((labels >= 0).any())
    bank = test_ds = None
    if has_labels and test is not None:
        bank = _labelled_set(images, labels, cfg.eval_bank_size, rng)
        test_ds = _labelled_set(test.images, test.labels, cfg.eval_test_size, rng)
    store = None
    if with_train:
        parts = [slice(i, i + cfg.augment_batch_size) for i in range(0, len(labels), cfg.augment_batch_size)]
        blocks = [(ray.put(_table(images[p], labels[p], row_ids[p])), len(labels[p])) for p in parts]
        store = RowStore.from_blocks(blocks, row_ids)
    return PreparedData(store, bank, test_ds, len(labels), src.num_classes if has_labels else 0, 0)


# --- file sources ------------------------------------------------------------------------------------


@ray.remote(num_cpus=0.1)
def _rows_of(table: pa.Table, column: str) -> np.ndarray:
    """A block's ``column`` (its row ids), read where the block is."""
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.int64)


def _block_store(ds: ray.data.Dataset, encoded: bool, policy: str, ids_column: str = "") -> RowStore:
    """A materialised dataset's blocks as a row store; row ids from ``ids_column``, else positions."""
    refs = ds.to_arrow_refs()
    # Never in the caller's placement group: a Tune trial that prepares its own data (a searched data.*
    # key, --prepare-per-trial) runs in one of 0.1 CPU, which its own process already holds, so a task
    # captured there would never start (Tune refuses it: "No trial resources are available"). Ray Data's
    # own tasks are scheduled SPREAD/DEFAULT, outside it, as this one is now.
    rows_of = _rows_of.options(scheduling_strategy="DEFAULT")
    ids = ray.get([rows_of.remote(ref, ids_column or next(iter(ds.schema().names))) for ref in refs])
    blocks = [(ref, len(i)) for ref, i in zip(refs, ids, strict=True)]
    row_ids = np.concatenate(ids) if ids_column else np.arange(sum(n for _, n in blocks))
    return RowStore.from_blocks(blocks, row_ids, encoded=encoded, bad_images=policy)


def _fits(cfg: DataConfig, num_rows: int, size: int, budget: float | None) -> bool:
    area = 1.0 if cfg.center_square else _WHOLE_IMAGE_AREA
    fits = budget is None or num_rows * size * size * 3 * area < 0.5 * budget
    if cfg.cache_decoded and not fits:
        log.warning("decoded images (%d, shorter side %d px) do not fit in half the object store; "
                    "decoding each epoch", num_rows, size)
    return cfg.cache_decoded and fits


def _prepare_listing(cfg: DataConfig, size: int, seed: int, budget: float | None, with_train: bool
                     ) -> PreparedData:
    """ImageFolder trees and image files: split and sample on the file listing, decode once."""
    listing = (sources.list_image_folder(cfg.root) if cfg.source == "imagefolder"
               else sources.list_image_files(cfg.uri))
    fs = listing.filesystem
    paths, labels = listing.paths, np.asarray(listing.labels, dtype=np.int64)
    row_ids = np.arange(len(paths))
    test: Files | None = None
    num_classes = len(listing.classes)
    if cfg.eval_root:
        test = eval_root_files(cfg, listing.classes)
        num_classes = num_classes or int(test[1].max()) + 1
    elif num_classes and cfg.holdout_fraction > 0:
        held = stratified_holdout(labels, cfg.holdout_fraction, np.random.default_rng(seed))
        test = ([p for p, h in zip(paths, held, strict=True) if h], labels[held], fs)
        paths, labels, row_ids = [p for p, h in zip(paths, held, strict=True) if not h], labels[~held], row_ids[~held]
    store, bad = None, 0
    if with_train:
        store, bad = _listing_store(cfg, size, budget, paths, labels, row_ids, fs)
    bank, queries = eval_sets(cfg, size, seed, (paths, labels, fs), test)
    return PreparedData(store, bank, queries, store.num_rows if store else len(paths),
                        num_classes if bank is not None else 0, bad)


def _listing_store(cfg: DataConfig, size: int, budget: float | None, paths: list[str], labels: np.ndarray,
                   row_ids: np.ndarray, fs: pafs.FileSystem) -> tuple[RowStore, int]:
    """The training files decoded once into the object store (a bad file under ``fail`` stops here,
    before training), or, when they do not fit, the files themselves; and the number skipped."""
    if len(paths) < 2:
        raise UserError(f"data: only {len(paths)} training images in {cfg.uri or cfg.root!r}; need at least 2")
    if not _fits(cfg, len(paths), size, budget):
        return RowStore.from_files(paths, row_ids, fs, cfg.bad_images), -1
    row_of = {p: (i, label) for p, i, label in zip(paths, row_ids.tolist(), labels.tolist(), strict=True)}
    raw = ray.data.read_binary_files(paths, filesystem=fs, include_paths=True).map_batches(
        lambda b: {"bytes": b["bytes"], "path": b["path"],
                   "row_id": np.asarray([row_of[p][0] for p in b["path"]], dtype=np.int64),
                   "label": np.asarray([row_of[p][1] for p in b["path"]], dtype=np.int64)})
    decoded = materialize(decode_stage(raw, cfg, size, "path", cfg.center_square))
    store = _block_store(decoded, encoded=False, policy=cfg.bad_images, ids_column="row_id")
    bad = len(paths) - store.num_rows
    if bad:
        log.warning("skipped %d unreadable images of %d (data.bad_images=skip)", bad, len(paths))
    if store.num_rows < 2:
        raise UserError(f"data: only {store.num_rows} readable images in {cfg.uri or cfg.root!r}; need at least 2")
    return store, bad


def _read_parquet(cfg: DataConfig) -> tuple[ray.data.Dataset, int]:
    """The Parquet source as ("bytes", "label") rows, and its number of classes (0: no labels)."""
    fs, path = sources.parquet_location(cfg.uri)
    columns = [cfg.image_column] + ([cfg.label_column] if cfg.label_column else [])
    try:
        raw = ray.data.read_parquet(path, filesystem=fs)
        schema_names = raw.schema().names
    except Exception as err:  # pyarrow raises several types for a missing column or a bad file
        raise UserError(f"data.uri: cannot read Parquet {cfg.uri!r} with columns {columns}: {err}") from err
    missing = [c for c in columns if c not in schema_names]
    if missing:
        raise UserError(f"data.image_column/label_column: {missing} not in {cfg.uri!r} (columns: {schema_names})")
    raw = raw.select_columns(columns).rename_columns({cfg.image_column: "bytes"})
    if not cfg.label_column:
        return raw.add_column("label", lambda df: np.full(len(df), -1, dtype=np.int64), batch_format="pandas"), 0
    raw = raw.rename_columns({cfg.label_column: "label"})
    labels = raw.select_columns(["label"]).to_pandas()["label"]
    return raw, int(labels.max()) + 1 if len(labels) else 0


def _prepare_parquet(cfg: DataConfig, size: int, seed: int, budget: float | None, with_train: bool
                     ) -> PreparedData:
    raw, num_classes = _read_parquet(cfg)
    num_listed = raw.count()
    train_raw, test_raw = raw, None
    if num_classes and cfg.holdout_fraction > 0 and not cfg.eval_root:
        train_raw, test_raw = raw.train_test_split(test_size=cfg.holdout_fraction, shuffle=True, seed=seed)
        train_raw, test_raw = train_raw.materialize(), test_raw.materialize()
    bank = queries = None
    if cfg.eval_root:
        paths, labels, fs = eval_root_files(cfg, [])  # Parquet labels are numbers: class folder i is label i
        rng = np.random.default_rng(seed)
        pick = balanced_order(labels, rng)[:cfg.eval_test_size]
        queries = read_labelled([paths[i] for i in pick], labels[pick], fs, cfg, size)
        num_classes = max(num_classes, int(labels.max()) + 1)
    elif test_raw is not None:
        queries = materialize(decode_stage(test_raw.limit(cfg.eval_test_size), cfg, size, "row", True))
    if num_classes and queries is not None:
        fraction = min(1.0, 2.0 * cfg.eval_bank_size / max(1, num_listed))
        sample = train_raw.filter(lambda r: r["label"] >= 0).random_sample(fraction, seed=seed)
        bank = materialize(decode_stage(sample.limit(cfg.eval_bank_size), cfg, size, "row", True))
    else:
        num_classes = 0
    if not with_train:
        return PreparedData(None, bank, queries, train_raw.count(), num_classes, 0)
    if _fits(cfg, num_listed, size, budget):
        decoded = materialize(decode_stage(train_raw, cfg, size, "row", cfg.center_square))
        store = _block_store(decoded, encoded=False, policy=cfg.bad_images)
        bad = train_raw.count() - store.num_rows
    else:  # encoded bytes in the object store (spilled to disk by Ray if need be); decoded each epoch
        store = _block_store(train_raw.select_columns(["bytes"]).materialize(), encoded=True, policy=cfg.bad_images)
        bad = -1
    if bad > 0:
        log.warning("skipped %d unreadable images of %d (data.bad_images=skip)", bad, num_listed)
    if store.num_rows < 2:
        raise UserError(f"data: only {store.num_rows} readable images in {cfg.uri!r}; need at least 2")
    return PreparedData(store, bank, queries, store.num_rows, num_classes, bad)


def to_tensor_images(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 numpy -> (N, 3, S, S) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
