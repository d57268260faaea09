"""Ray Data preparation, one pipeline for every source: load -> split -> store -> evaluation samples.

``load``: the source's rows (orchestrator/data/catalog.py says how each source loads). ``split``: the
held-out rows are the format's own test split, ``data.eval_root``, or a stratified ``holdout_fraction``
of the labelled rows. ``store``: the training rows the stream draws from: decoded images materialised
in the object store when they fit (half of it), so every epoch pays only for augmentation; otherwise
image files read and decoded again in each epoch's tasks, or (Parquet) their encoded bytes in the
store. ``eval_sets``: the kNN bank and its queries, class-balanced samples decoded to centre squares,
handed whole to every train worker (only rank 0 reads them). The store is built before the
evaluation samples are read, so that under ``data.bad_images=fail`` the file named is the first bad
training file. Decoding keeps the whole image, aspect
ratio and all (``data.center_square`` keeps only the centre square), so crops are drawn from all of it.
The per-epoch order and the views are ``orchestrator.data.stream``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from orchestrator.data import catalog
from orchestrator.data.decode import decoded
from orchestrator.data.evalsets import eval_root_rows, eval_sets, stratified_holdout
from orchestrator.data.rows import ROW_ID, Rows, table
from orchestrator.data.stream import RowStore
from orchestrator.errors import UserError
from workloads.config import DataConfig

log = logging.getLogger(__name__)

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


def prepare(cfg: DataConfig, seed: int, object_store_budget: float | None = None, train: bool = True,
            listings: str = "") -> PreparedData:
    """Read the configured source into the training row store and the evaluation sets. ``listings``: the
    run's folder, where the listings of the folders it reads are kept as manifests (orchestrator/data/
    manifest.py), so that the run resumed lists none of them again ("": list them)."""
    rng = np.random.default_rng(seed)  # draws the held-out split, then the evaluation samples
    with _ordered():
        rows = catalog.source(cfg.source).load(cfg, seed, listings)
        train_rows, test_rows = split(rows, cfg, rng, listings)
        store, bad = _store(train_rows, cfg, object_store_budget) if train else (None, 0)
        bank, queries = eval_sets(train_rows, test_rows, cfg, rng)
    labelled = train_rows.labelled or bank is not None
    num_classes = max(train_rows.num_classes, test_rows.num_classes if test_rows else 0) if labelled else 0
    return PreparedData(store, bank, queries, store.num_rows if store else len(train_rows), num_classes, bad)


@contextmanager
def _ordered() -> Iterator[None]:
    """Ray Data keeps the source's order while preparing: row positions must not depend on which task
    finished first (they feed the seeded per-epoch order), and the first unreadable file is the first."""
    options = ray.data.DataContext.get_current().execution_options
    before = options.preserve_order
    options.preserve_order = True
    try:
        yield
    finally:
        options.preserve_order = before


def split(rows: Rows, cfg: DataConfig, rng: np.random.Generator, listings: str = "") -> tuple[Rows, Rows | None]:
    """The training rows and the held-out ones (None: nothing held out)."""
    if rows.test is not None:
        return rows, rows.test
    if cfg.eval_root:
        return rows, eval_root_rows(cfg, rows.classes, listings)
    if cfg.holdout_fraction > 0 and rows.labelled:
        held = stratified_holdout(rows.labels, cfg.holdout_fraction, rng)
        return rows.take(np.flatnonzero(~held)), rows.take(np.flatnonzero(held))
    return rows, None


def _store(rows: Rows, cfg: DataConfig, budget: float | None) -> tuple[RowStore, int]:
    """The training rows as the stream reads them, and how many unreadable images were skipped (-1: not
    counted, the images are decoded in each epoch's tasks)."""
    if len(rows) < 2:
        raise UserError(f"data: only {len(rows)} training images in {rows.where!r} after the held-out split; "
                        f"need at least 2")
    if rows.images is not None:  # decoded in memory: blocks of the stream's chunk size
        return _array_store(rows, cfg.augment_batch_size), 0
    if not _fits(cfg, len(rows), budget):
        if rows.paths is not None:
            return RowStore.from_files(list(rows.paths), rows.ids, rows.filesystem, cfg.bad_images), -1
        # encoded bytes in the object store (spilled to disk by Ray if need be); decoded each epoch
        encoded = rows.dataset().select_columns(["bytes", ROW_ID]).materialize()
        return _block_store(encoded, encoded=True, policy=cfg.bad_images), -1
    store = _block_store(decoded(rows.dataset(), cfg, cfg.center_square), encoded=False, policy=cfg.bad_images)
    bad = len(rows) - store.num_rows
    if bad > 0:
        log.warning("skipped %d unreadable images of %d (data.bad_images=skip)", bad, len(rows))
    if store.num_rows < 2:
        raise UserError(f"data: only {store.num_rows} readable training images in {rows.where!r}; need at least 2")
    return store, bad


def _array_store(rows: Rows, chunk: int) -> RowStore:
    assert rows.images is not None
    parts = [slice(i, i + chunk) for i in range(0, len(rows), chunk)]
    blocks = [(ray.put(table(rows.images[p], rows.labels[p], rows.ids[p])), len(rows.ids[p])) for p in parts]
    return RowStore.from_blocks(blocks, rows.ids)


@ray.remote(num_cpus=0.1)
def _rows_of(block: pa.Table, column: str) -> np.ndarray:
    """A block's ``column`` (its row ids), read where the block is."""
    return np.asarray(block.column(column).to_numpy(zero_copy_only=False), dtype=np.int64)


def _block_store(ds: ray.data.Dataset, encoded: bool, policy: str) -> RowStore:
    """A materialised dataset's blocks as a row store, row ids from its ROW_ID column."""
    refs = ds.to_arrow_refs()
    # Never in the caller's placement group: a Tune trial that prepares its own data (a searched data.*
    # key, --prepare-per-trial) runs in one of 0.1 CPU, which its own process already holds, so a task
    # captured there would never start (Tune refuses it: "No trial resources are available"). Ray Data's
    # own tasks are scheduled SPREAD/DEFAULT, outside it, as this one is.
    rows_of = _rows_of.options(scheduling_strategy="DEFAULT")
    ids = ray.get([rows_of.remote(ref, ROW_ID) for ref in refs])
    blocks = [(ref, len(i)) for ref, i in zip(refs, ids, strict=True)]
    row_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return RowStore.from_blocks(blocks, row_ids, encoded=encoded, bad_images=policy)


def node_object_store() -> float | None:
    """The decoded cache's budget: the smallest object store among the live nodes that run tasks (bytes;
    None before Ray starts). After an epoch every such node holds a copy of every block its stream tasks
    read, in practice the whole cache (docs/BENCHMARKS.md, section 10), so the cache must fit in one
    node's store, not in the cluster's sum of them."""
    stores = [float(n["Resources"].get("object_store_memory", 0.0)) for n in ray.nodes()
              if n.get("Alive") and n["Resources"].get("CPU", 0.0) > 0]
    return min(stores) if stores else None


def _fits(cfg: DataConfig, num_rows: int, budget: float | None) -> bool:
    size = cfg.stored_size
    area = 1.0 if cfg.center_square else _WHOLE_IMAGE_AREA
    fits = budget is None or num_rows * size * size * 3 * area < 0.5 * budget
    if cfg.cache_decoded and not fits:
        log.warning("decoded images (%d, shorter side %d px) do not fit in half the object store; "
                    "decoding each epoch", num_rows, size)
    return cfg.cache_decoded and fits


def to_tensor_images(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 numpy -> (N, 3, S, S) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
