"""A source's images as rows: labels and ids by position, and what reads any subset of them.

Every source loads into ``Rows`` of one of three kinds, and ``prepare`` then treats them alike:

- decoded in memory (the scikit-learn, synthetic and torchvision formats): ``images``, uint8
  (N, S, S, 3) centre squares at the stored size;
- image files (ImageFolder trees, image files by URI): ``paths`` on ``filesystem``;
- a Parquet source: ``table``, a Ray dataset of encoded ``bytes`` (and ``label``) rows with Ray's
  ``row_hash``, and ``hashes``, the hash of each position: a subset is read by filtering on them.

``ids`` are positions in the whole source, kept through every subset: the stable identity of a row
that the training stream keys its order and random draws by.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray.data
import torch
from ray.data.extensions import ArrowTensorArray

from orchestrator.data import sources
from orchestrator.errors import UserError
from workloads.config import DataConfig

ROW_ID = "row_id"
ROW_HASH = "row_hash"  # Ray's include_row_hash column: a uint64 from a Parquet file's path and row


@dataclass(frozen=True)
class Rows:
    labels: np.ndarray  # (N,) int64, -1 where unknown
    ids: np.ndarray  # (N,) int64 positions in the whole source
    num_classes: int  # 0: no labels
    where: str  # the path or URI read, for messages
    classes: tuple[str, ...] = ()  # class folder names in label order; () when labels are bare numbers
    images: np.ndarray | None = None  # decoded in memory: (N, S, S, 3) uint8
    paths: tuple[str, ...] | None = None  # image files
    filesystem: pafs.FileSystem | None = None
    table: ray.data.Dataset | None = None  # Parquet: "bytes"(, "label"), ROW_HASH rows of the whole source
    hashes: np.ndarray | None = None  # Parquet: (N,) uint64, the ROW_HASH of each position
    test: Rows | None = None  # the format's own test split

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).any())

    def take(self, positions: np.ndarray) -> Rows:
        """The rows at ``positions`` (ids, labels and what reads them; the test split stays behind)."""
        p = np.asarray(positions, dtype=np.int64)
        return replace(
            self, labels=self.labels[p], ids=self.ids[p], test=None,
            images=None if self.images is None else self.images[p],
            paths=None if self.paths is None else tuple(self.paths[i] for i in p.tolist()),
            hashes=None if self.hashes is None else self.hashes[p])

    def dataset(self) -> ray.data.Dataset:
        """The rows as a Ray dataset, in position order: ``image`` (decoded in memory) or ``bytes`` to
        decode, with ``label`` and ``row_id`` (and the file's ``path``)."""
        if self.images is not None:
            return ray.data.from_arrow(table(self.images, self.labels, self.ids))
        if self.paths is not None:
            return _files(self.paths, self.labels, self.ids, self.filesystem)
        assert self.table is not None and self.hashes is not None
        return _parquet_subset(self.table, self.hashes, self.ids)


def table(images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> pa.Table:
    """uint8 (N, S, S, 3) images with their labels and row ids as an Arrow table (Ray's tensor column)."""
    return pa.table({"image": ArrowTensorArray.from_numpy(np.ascontiguousarray(images)), "label": pa.array(labels),
                     ROW_ID: pa.array(ids)})


FILE_ROWS_PER_BLOCK = 64  # rows of a files dataset's blocks: one read-and-decode task's share


def _files(paths: tuple[str, ...], labels: np.ndarray, ids: np.ndarray, fs: pafs.FileSystem | None
           ) -> ray.data.Dataset:
    """The files' bytes with their ``path``, id and label. Each block carries its own rows' paths, ids and
    labels, and its task reads just those files: what a task receives does not grow with the number of
    files (no listing in the map function's closure), and a missing file is an unreadable image."""
    rows = pa.table({"path": pa.array(paths, pa.string()), ROW_ID: pa.array(ids, pa.int64()),
                     "label": pa.array(labels, pa.int64())})
    blocks = [rows.slice(i, FILE_ROWS_PER_BLOCK) for i in range(0, len(rows), FILE_ROWS_PER_BLOCK)]
    return ray.data.from_arrow(blocks).map_batches(partial(_read_files, filesystem=fs), batch_format="numpy",
                                                   batch_size=None)


def _read_files(batch: dict[str, np.ndarray], filesystem: pafs.FileSystem) -> dict[str, np.ndarray]:
    data = np.empty(len(batch["path"]), dtype=object)
    data[:] = [sources.read_file(filesystem, str(p)) for p in batch["path"]]
    return {**batch, "bytes": data}


def _parquet_subset(source: ray.data.Dataset, hashes: np.ndarray, ids: np.ndarray) -> ray.data.Dataset:
    """The rows of ``source`` whose ROW_HASH is in ``hashes``, each with its id."""
    order = np.argsort(hashes, kind="stable")
    keys, key_ids = hashes[order], ids[order]  # sorted, for a binary search per batch

    def pick(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        h = np.asarray(batch[ROW_HASH], dtype=np.uint64)
        at = np.searchsorted(keys, h).clip(max=max(len(keys) - 1, 0))
        hit = keys[at] == h if len(keys) else np.zeros(len(h), dtype=bool)
        out = {k: np.asarray(v)[hit] for k, v in batch.items() if k != ROW_HASH}
        out[ROW_ID] = key_ids[at[hit]].astype(np.int64)
        return out

    return source.map_batches(pick, batch_format="numpy")


# --- how each kind loads -------------------------------------------------------------------------------


def from_arrays(src: sources.ArraySource, size: int, where: str) -> Rows:
    """An in-memory source, its images resized to ``size`` centre squares (the test split's too)."""
    def rows(split: sources.ArraySplit) -> Rows:
        return Rows(split.labels.astype(np.int64), np.arange(len(split), dtype=np.int64), src.num_classes, where,
                    images=resize_square(split.images, size))

    return replace(rows(src.train), test=rows(src.test) if src.test is not None else None)


def from_listing(listing: sources.FileListing, where: str, classes: tuple[str, ...] = (), field: str = "") -> Rows:
    """Image files; labels from their class folders (or a manifest), renumbered to ``classes`` when given (an
    evaluation tree labelled as the training tree is, ``field`` naming it in the error)."""
    labels = np.asarray(listing.labels, dtype=np.int64)
    names = list(listing.classes)
    if classes:
        labels = _renumbered(listing, list(classes), field)
        names = list(classes)
    # labels without class names (a manifest's bare numbers): label i is class i, as in Parquet
    num_classes = len(names) or (int(labels.max()) + 1 if len(labels) else 0)
    return Rows(labels, np.arange(len(labels), dtype=np.int64), num_classes, where, classes=tuple(names),
                paths=tuple(listing.paths), filesystem=listing.filesystem)


def _renumbered(listing: sources.FileListing, classes: list[str], field: str) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(listing.classes) - set(index))
    if unknown:
        raise UserError(f"{field}: class folders {unknown[:5]} are not among the training classes "
                        f"({', '.join(classes[:5])}, ...); use an evaluation tree with the same class folders")
    return np.asarray([index[listing.classes[i]] for i in listing.labels], dtype=np.int64)


def from_parquet(cfg: DataConfig) -> Rows:
    """A Parquet source: ``data.image_column`` of encoded images and ``data.label_column`` of integer
    labels ("": none). Only the labels and row hashes are read here; the images when a subset is."""
    fs, path = sources.parquet_location(cfg.uri)
    columns = [cfg.image_column] + ([cfg.label_column] if cfg.label_column else [])
    try:
        raw = ray.data.read_parquet(path, filesystem=fs, include_row_hash=True)
        schema_names = raw.schema().names
    except Exception as err:  # pyarrow raises several types for a missing column or a bad file
        raise UserError(f"data.uri: cannot read Parquet {cfg.uri!r} with columns {columns}: {err}") from err
    missing = [c for c in columns if c not in schema_names]
    if missing:
        raise UserError(f"data.image_column/label_column: {missing} not in {cfg.uri!r} (columns: {schema_names})")
    renames = {cfg.image_column: "bytes", **({cfg.label_column: "label"} if cfg.label_column else {})}
    raw = raw.select_columns([*columns, ROW_HASH]).rename_columns(renames)
    index = raw.select_columns([ROW_HASH, *(["label"] if cfg.label_column else [])]).to_pandas()
    hashes = index[ROW_HASH].to_numpy(dtype=np.uint64)
    n = len(hashes)
    labels = index["label"].to_numpy(dtype=np.int64) if cfg.label_column else np.full(n, -1, dtype=np.int64)
    if not cfg.label_column:
        raw = raw.add_column("label", lambda df: np.full(len(df), -1, dtype=np.int64), batch_format="pandas")
    num_classes = int(labels.max()) + 1 if cfg.label_column and n else 0
    return Rows(labels, np.arange(n, dtype=np.int64), num_classes, cfg.uri, table=raw, hashes=hashes)


def resize_square(images: np.ndarray, size: int) -> np.ndarray:
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
