"""Manifests: a CSV or Parquet file of image paths (a ``path`` column) and optional labels (``label``), the
way teams keep a dataset of a million files instead of listing a bucket on every run.

Two uses. ``data.source=manifest`` reads the user's (``read``). And a folder or bucket prefix that a run
lists (an ImageFolder tree, image files, ``data.eval_root``) is written once as a manifest in the run's
folder (``listed``): a resumed run, ``simclr eval`` of its checkpoint and a sweep's trials read that file
instead of listing again (S3 returns 1,000 keys a request: ImageNet's 1.28 M files take 1,280 requests).
A kept listing is not refreshed: files added under the folder afterwards are not seen by that run, and a
file removed is an unreadable image (``data.bad_images``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from orchestrator import storage
from orchestrator.data.sources import FileListing
from orchestrator.errors import UserError
from orchestrator.secrets import redact

log = logging.getLogger(__name__)

MANIFESTS = "manifests"  # the folder of a run's kept listings, beside its checkpoints
PATH, LABEL = "path", "label"
_ROOT_KEY, _CLASSES_KEY = b"simclr.root", b"simclr.classes"  # a kept listing's own Parquet metadata
FIX = "give a CSV (.csv) or Parquet file with a 'path' column of image paths and an optional 'label' column"


def read(uri: str, root: str, field: str = "data.manifest") -> FileListing:
    """The manifest at ``uri``: its paths (relative ones under ``root``) on the filesystem that reads them,
    and its labels: integers as they are (empty: -1), or class names numbered in sorted order."""
    return _listing(_table(uri, field), uri, root, field)


def _table(uri: str, field: str) -> pa.Table:
    fs, path = storage.filesystem(uri, field)
    csv = path.lower().endswith((".csv", ".csv.gz"))
    try:
        if csv:
            with fs.open_input_stream(path) as f:
                options = pacsv.ConvertOptions(column_types={PATH: pa.string()})
                return pacsv.read_csv(f, convert_options=options)
        return pq.read_table(path, filesystem=fs)
    except FileNotFoundError as err:
        raise UserError(f"{field}: no such file {redact(uri)!r}; {FIX}") from err
    except (OSError, pa.ArrowException) as err:
        kind = "CSV" if csv else "Parquet (a name not ending in .csv is read as Parquet)"
        raise UserError(f"{field}: cannot read {redact(uri)!r} as {kind} "
                        f"({storage.first_line(err)[:200]}); {FIX}") from err


def _listing(table: pa.Table, uri: str, root: str, field: str) -> FileListing:
    where = redact(uri)
    if PATH not in table.column_names:
        raise UserError(f"{field}: {where!r} has no {PATH!r} column (columns: {', '.join(table.column_names)}); {FIX}")
    column = table.column(PATH)
    if column.null_count:
        raise UserError(f"{field}: {where!r} has {column.null_count} rows without a path; fill or remove them")
    paths = column.cast(pa.string()).to_pylist()
    if not paths:
        raise UserError(f"{field}: {where!r} lists no images; {FIX}")
    labels, classes = _labels(table, where, field)
    fs, inner = storage.resolve(paths, root, field)
    return FileListing(inner, labels, classes, fs)


def _labels(table: pa.Table, where: str, field: str) -> tuple[list[int], list[str]]:
    """Labels by row (-1: none) and the class names in label order ([] when the labels are bare numbers)."""
    n = table.num_rows
    if LABEL not in table.column_names or pa.types.is_null(table.column(LABEL).type):
        return [-1] * n, []
    column = table.column(LABEL)
    meta = table.schema.metadata or {}
    if pa.types.is_integer(column.type):
        labels = column.fill_null(-1).to_numpy().astype(np.int64)
        if (labels < -1).any():
            raise UserError(f"{field}: {where!r} has negative labels; labels are 0, 1, ... (empty: unlabelled)")
        return labels.tolist(), json.loads(meta[_CLASSES_KEY]) if _CLASSES_KEY in meta else []
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        names = column.to_pylist()
        classes = sorted({c for c in names if c})
        index = {c: i for i, c in enumerate(classes)}
        return [index[c] if c else -1 for c in names], classes
    raise UserError(f"{field}: {where!r}'s {LABEL!r} column is {column.type}; give integers or class names")


def listed(list_files: Callable[[], FileListing], where: str, field: str, folder: str) -> FileListing:
    """``list_files()``, the listing of the folder or bucket prefix ``where`` (named by ``field``), kept as a
    manifest in ``folder`` (a run's folder) the first time and read from there every time after. Without
    ``folder``, listed every time. A kept manifest that cannot be read (half-written by a trial listing at
    the same moment) is listed again."""
    if not folder:
        return list_files()
    path = kept_path(folder, field, where)
    kept = _read_kept(path, where, field)
    if kept is not None:
        log.info("%s: the listing of %s read from %s", field, redact(where), path)
        return kept
    listing = list_files()
    _write_kept(listing, where, path)
    return listing


def kept_path(folder: str, field: str, where: str) -> str:
    """Where a run keeps its listing of ``where``: one file per field and listed location."""
    digest = hashlib.sha256(storage.absolute(where).encode()).hexdigest()[:12]
    return storage.join(folder, MANIFESTS, f"{field}-{digest}.parquet")


def _read_kept(path: str, where: str, field: str) -> FileListing | None:
    try:
        data = storage.read_bytes(path)
        if data is None:
            return None
        table = pq.read_table(pa.BufferReader(data))
    except (OSError, pa.ArrowException) as err:
        log.warning("%s: cannot read the kept listing %s (%s); listing %s again", field, path,
                    storage.first_line(err), redact(where))
        return None
    if (table.schema.metadata or {}).get(_ROOT_KEY) != storage.absolute(where).encode():
        return None
    return _listing(table, path, where, field)


def _write_kept(listing: FileListing, where: str, path: str) -> None:
    """``listing`` as a manifest of paths relative to ``where`` (a single file listed: nothing to keep)."""
    _, base = storage.filesystem(where)
    relative = [storage.relative(p, base) for p in listing.paths]
    if any(r is None for r in relative):
        return
    table = pa.table({PATH: pa.array(relative, pa.string()), LABEL: pa.array(listing.labels, pa.int64())})
    table = table.replace_schema_metadata({_ROOT_KEY: storage.absolute(where).encode(),
                                           _CLASSES_KEY: json.dumps(list(listing.classes)).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    try:
        storage.write_bytes(path, sink.getvalue().to_pybytes())
    except OSError as err:  # a run that cannot keep its listing still trains; it lists again next time
        log.warning("could not keep the listing of %s at %s: %s", redact(where), path, storage.first_line(err))
