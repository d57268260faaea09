"""The training stream: every epoch a new global order of the rows, and views keyed by row.

Why not Ray Data's ``random_shuffle``: its seed is fixed when the plan is built, so with a seed
every epoch repeats one order, and without one no run can be reproduced or resumed onto the same
sequence; it also moves every row through an all-to-all exchange each epoch. Here, as
``DistributedSampler.set_epoch`` does for a DataLoader, the order is a permutation drawn from
(``train.seed``, epoch), and the rows are addressed by position:

- ``RowStore``: where row ``p`` lives: in a block of decoded (or encoded) images that Ray's object
  store holds once for the run, or in a file that is read and decoded again each epoch;
- ``EpochClock``: a small actor the train workers set at the start of each epoch, read by the tasks;
- ``train_stream``: ``ray.data.range(chunks)``; task ``j`` computes chunk ``j`` of the epoch's
  permutation (only those places, ``shuffled``: O(chunk) at any N), looks those rows up in the store's
  index (fetched once per worker process, zero-copy from the local object store), gathers them
  (zero-copy reads of blocks in the local object store) and returns the method's views with a
  ``RowRandom`` keyed by (seed, epoch, row id).

So a batch is a uniform sample of the whole dataset, whatever order the source lists its files in
(class folders, Parquet written class by class); two runs with one seed see the same rows, and a
resumed run continues the same sequence of epochs. Ray Train ``streaming_split``s the stream across
its workers; which worker gets which chunk follows the order they ask in.

The stream's plan (this module's ``chunk_views`` with its ``RowStore`` and ``Config``) is unpickled in Ray's
own processes that never make a view: Ray Train's controller and dataset manager, Ray Data's split
coordinator. So this module imports neither torch nor the methods at its top; the functions that make views
import them, in the tasks that run them (torch and torchvision cost seconds of each process's start).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data

from orchestrator.data import sources
from workloads.config import Config

if TYPE_CHECKING:
    import torch

    from workloads.method import Images

ROW_ID = "row_id"  # streamed beside the views: which row of the store each view is of
# image_tensor's read-only views: torch's warning that it could write to them, from this module only.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning,
                        module=__name__)
WHOLE_CHUNK_FRACTION = 4  # _tensor_rows: views of a whole chunk when at least a quarter of it is wanted


@ray.remote(num_cpus=0)
class EpochClock:
    """The epoch the train workers are in; the stream's tasks read it to draw that epoch's order."""

    def __init__(self) -> None:
        self._epoch = 0  # 0: before training (the views picture, the first batch a driver takes)

    def set(self, epoch: int) -> None:
        self._epoch = epoch

    def get(self) -> int:
        return self._epoch


@dataclass(frozen=True)
class StoreIndex:
    """Row positions -> blocks; large, so it travels once through the object store, not in every task."""

    row_ids: np.ndarray  # (N,) int64: the stable identity of the row at each position
    offsets: np.ndarray  # (blocks + 1,) int64: first position of each block (blocks kind)
    canonical: np.ndarray  # (N,) positions in row-id order: what the epoch's permutation permutes
    paths: pa.Array | None  # files kind: the path of each position


@dataclass(frozen=True)
class RowStore:
    """The training rows, addressable by position.

    ``blocks`` kind: Arrow tables in the object store with an ``image`` column (decoded uint8,
    (H, W, 3), shapes may differ) or a ``bytes`` column (encoded, decoded in the stream's task).
    ``files`` kind (``blocks`` empty): image files read and decoded in the stream's task each epoch.
    """

    num_rows: int
    index: ray.ObjectRef  # StoreIndex
    blocks: tuple[ray.ObjectRef, ...] = ()
    encoded: bool = False  # blocks hold encoded bytes
    filesystem: pafs.FileSystem | None = None  # files kind
    bad_images: str = "skip"  # policy when decoding in the stream (encoded blocks, files)

    @staticmethod
    def from_blocks(blocks: list[tuple[ray.ObjectRef, int]], row_ids: np.ndarray, encoded: bool = False,
                    bad_images: str = "skip") -> RowStore:
        counts = np.asarray([n for _, n in blocks], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if offsets[-1] != len(row_ids):
            raise ValueError(f"{offsets[-1]} rows in the blocks but {len(row_ids)} row ids")
        index = StoreIndex(row_ids.astype(np.int64), offsets, np.argsort(row_ids, kind="stable"), None)
        return RowStore(len(row_ids), ray.put(index), tuple(ref for ref, _ in blocks), encoded,
                        bad_images=bad_images)

    @staticmethod
    def from_files(paths: list[str], row_ids: np.ndarray, filesystem: pafs.FileSystem,
                   bad_images: str = "skip") -> RowStore:
        index = StoreIndex(row_ids.astype(np.int64), np.zeros(1, np.int64), np.argsort(row_ids, kind="stable"),
                           pa.array(paths))
        return RowStore(len(paths), ray.put(index), (), False, filesystem, bad_images)


def epoch_order(store_index: StoreIndex, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The positions of the rows in the order epoch ``epoch`` streams them: a permutation of the rows
    in row-id order drawn from (seed, epoch), so it does not depend on how the blocks were laid out
    (``shuffle=False``: row-id order every epoch, for measuring what the shuffle costs). The whole epoch;
    a stream task computes only its chunk's part (``chunk_positions``)."""
    return chunk_positions(store_index, seed, epoch, 0, len(store_index.row_ids), shuffle)


def chunk_positions(store_index: StoreIndex, seed: int, epoch: int, start: int, stop: int,
                    shuffle: bool = True) -> np.ndarray:
    """``epoch_order(...)[start:stop]``, computed in O(stop - start): a task draws its own chunk of the
    epoch's order without drawing the other N rows' places."""
    k = np.arange(start, min(stop, len(store_index.row_ids)), dtype=np.int64)
    if not shuffle:
        return store_index.canonical[k]
    return store_index.canonical[shuffled(k, len(store_index.row_ids), seed, epoch)]


FEISTEL_ROUNDS = 6  # balanced Feistel rounds: 4 already give a pseudo-random permutation (Luby-Rackoff)


def shuffled(k: np.ndarray, n: int, seed: int, epoch: int) -> np.ndarray:
    """π(k) for each k in ``k``, π a permutation of [0, n) drawn from (seed, epoch): a Feistel network on the
    smallest even number of bits that holds n, with splitmix64 as its round function, cycle-walked back into
    [0, n) (a value >= n goes through the network again until it lands below n; at most 4n values, so a
    few passes). Any subset of places is computed alone, in O(len(k)), with no O(n) array."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)  # bits of each half
    mask, shift = np.uint64((1 << half) - 1), np.uint64(half)
    keys = np.random.SeedSequence([seed, epoch]).generate_state(FEISTEL_ROUNDS, dtype=np.uint64)
    x = np.asarray(k, dtype=np.uint64).copy()
    todo = np.ones(len(x), dtype=bool)
    while todo.any():
        left, right = x[todo] >> shift, x[todo] & mask
        for key in keys:
            left, right = right, left ^ (_mix(right ^ key) & mask)
        x[todo] = (left << shift) | right
        todo = x >= np.uint64(n)
    return x.astype(np.int64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit over every output bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_INDEX_CACHE: OrderedDict[str, StoreIndex] = OrderedDict()


def _index(ref: ray.ObjectRef) -> StoreIndex:
    """The store's index, fetched once per Ray worker process (tasks of one run share processes)."""
    key = ref.hex()
    if key not in _INDEX_CACHE:
        _INDEX_CACHE[key] = ray.get(ref)
        while len(_INDEX_CACHE) > 2:
            _INDEX_CACHE.popitem(last=False)
    return _INDEX_CACHE[key]


def num_chunks(store: RowStore, chunk_rows: int) -> int:
    return -(-store.num_rows // chunk_rows)


def train_stream(store: RowStore, cfg: Config, clock: Any) -> ray.data.Dataset:
    """The lazy per-epoch training stream of ``cfg.method``'s views (plus ``row_id``).

    Each execution (one per epoch) reads the epoch from ``clock``; chunk ``j`` holds rows
    ``[j·c, (j+1)·c)`` of that epoch's order, c = ``data.augment_batch_size``. An unreadable file
    under ``data.bad_images=fail`` (files decoded each epoch) raises its BadImageError as itself, not
    wrapped in Ray Data's ``UserCodeException``, which keeps only its text: the run's failure names the
    file (orchestrator/errors.py finds it by its class).
    """
    chunk_rows = cfg.data.augment_batch_size
    n = num_chunks(store, chunk_rows)
    kwargs: dict[str, Any] = {}
    if cfg.data.augment_workers:
        kwargs["concurrency"] = cfg.data.augment_workers
    ds = ray.data.range(n, override_num_blocks=n).map_batches(
        partial(chunk_views, store=store, cfg=cfg, clock=clock), batch_size=1, **kwargs,
    )
    ds.context.raise_original_map_exception = True
    return ds


def chunk_views(batch: dict[str, np.ndarray], store: RowStore, cfg: Config, clock: Any,
                epoch: int | None = None) -> dict[str, np.ndarray]:
    """Ray Data UDF: chunk number(s) -> the views of that chunk's rows in the current epoch."""
    from workloads.methods import method  # in the task, not where the plan is only held (above)
    from workloads.rng import RowRandom, row_keys

    if epoch is None:
        epoch = int(ray.get(clock.get.remote()))
    index = _index(store.index)
    c = cfg.data.augment_batch_size
    positions = np.concatenate([chunk_positions(index, cfg.train.seed, epoch, j * c, (j + 1) * c, cfg.data.shuffle)
                                for j in np.asarray(batch["id"]).tolist()])
    images, keep = gather(store, index, positions, cfg.data.stored_size, cfg.data.center_square)
    ids = index.row_ids[positions[keep]]
    gen = RowRandom(row_keys(cfg.train.seed, epoch, ids))
    views = method(cfg.method).views(images, cfg, gen)
    return {**{name: v.numpy() for name, v in views.items()}, ROW_ID: ids}


def first_views(store: RowStore, cfg: Config, rows: int) -> dict[str, np.ndarray]:
    """The views of the first ``rows`` rows of epoch 0's order, made here as the stream's first task makes
    them (the same rows, the same random draws): the run's picture of its augmented views, without
    starting a Ray Data execution for it."""
    return chunk_views({"id": np.zeros(1, np.int64)}, store, cfg.replace({"data.augment_batch_size": rows}),
                       clock=None, epoch=0)


def gather(store: RowStore, index: StoreIndex, positions: np.ndarray, size: int, center_square: bool
           ) -> tuple[Images, np.ndarray]:
    """The images at ``positions`` as uint8 (B, 3, S, S) when they share a shape, else a list of
    (3, H, W); and which positions were readable (a bad file under ``data.bad_images=skip`` is not)."""
    import torch

    if store.blocks:
        arrays = _from_blocks(store, index, positions)
    else:
        assert index.paths is not None and store.filesystem is not None
        arrays = [sources.read_file(store.filesystem, index.paths[int(p)].as_py()) for p in positions]
    if store.encoded or not store.blocks:
        names = [f"row {int(p)}" if index.paths is None else index.paths[int(p)].as_py() for p in positions]
        # The whole photo, not resized: the crops are drawn from it (workloads/decode.py).
        arrays = [None if a is None else sources.decode_or_none(a, size, name, store.bad_images, center_square,
                                                                whole=True)
                  for a, name in zip(arrays, names, strict=True)]
    keep = np.asarray([a is not None for a in arrays], dtype=bool)
    tensors = [image_tensor(a) for a in arrays if a is not None]  # 3 x H x W
    if tensors and all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors), keep  # B x 3 x H x W
    return tensors, keep


def _from_blocks(store: RowStore, index: StoreIndex, positions: np.ndarray) -> list[Any]:
    """Rows at ``positions`` from the object store's blocks: one ``ray.get`` of the blocks touched,
    zero-copy where a block is in the local object store."""
    block = np.searchsorted(index.offsets, positions, side="right") - 1  # (B,)
    wanted = np.unique(block)
    column = "bytes" if store.encoded else "image"
    out: list[Any] = [None] * len(positions)
    for b, table in zip(wanted.tolist(), ray.get([store.blocks[b] for b in wanted]), strict=True):
        rows = np.flatnonzero(block == b)  # where in the chunk this block's rows go
        local = positions[rows] - index.offsets[b]
        if store.encoded:
            values = table.column(column).take(pa.array(local)).to_pylist()
        else:
            values = _tensor_rows(table.column(column), local)
        for i, v in zip(rows.tolist(), values, strict=True):
            out[i] = v
    return out


def _tensor_rows(column: pa.ChunkedArray, rows: np.ndarray) -> list[np.ndarray]:
    """Rows of a block's image column (Ray's tensor extension, fixed or variable shape) as numpy views
    of the block, no copy: Ray's ``to_numpy`` views each row in place, where Arrow's ``take`` copied
    every selected row's pixels (as much as decoding the photo's JPEG). ``to_numpy`` makes a view of
    every row of what it is given, so a chunk is converted whole only when at least
    ``1 / WHOLE_CHUNK_FRACTION`` of it is wanted, and otherwise row by row through one-row slices
    (several times the cost per row): a shuffled epoch takes a few rows from each of many blocks."""
    out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(rows)
    start = 0
    for chunk in column.chunks:
        inside = np.flatnonzero((rows >= start) & (rows < start + len(chunk)))
        if len(inside) * WHOLE_CHUNK_FRACTION >= len(chunk):
            views = chunk.to_numpy()  # (n, H, W, 3), or n arrays of their own shapes
            for i in inside.tolist():
                out[i] = views[int(rows[i]) - start]
        else:
            for i in inside.tolist():
                out[i] = chunk.slice(int(rows[i]) - start, 1).to_numpy()[0]
        start += len(chunk)
    return out


def image_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> (3, H, W), a view: no copy of the image, read-only arrays included (a zero-copy
    view of the object store, a decoded photo's buffer). torch warns that a tensor over a read-only
    array could be written to; the crops only read it (the warning is filtered for this module only,
    above). A copy here would cost a good part of decoding an ImageNet-sized JPEG."""
    import torch

    return torch.from_numpy(a).permute(2, 0, 1)
