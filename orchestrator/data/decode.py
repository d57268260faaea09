"""Decoding inside Ray Data: encoded bytes -> uint8 images under the bad-image policy.

``data.bad_images=skip`` drops an unreadable file's row (``prepare`` counts them). Under ``fail`` the
file must stop the run with a BadImageError naming it, but an error raised in a Ray Data task reaches
the driver as Ray's own (``UserCodeException``) with ours only in its traceback's text; so the row
stays, with an empty image and the error's message in ``unreadable``, and ``decoded`` raises the
BadImageError of the first such row, in the dataset's order, once the decode has run.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import ray.data

from orchestrator.data import sources
from orchestrator.data.rows import ROW_ID
from orchestrator.errors import BadImageError
from workloads.config import DataConfig

UNREADABLE = "unreadable"  # under data.bad_images=fail: why the row's file could not be decoded ("" if it could)
_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)


def decode_batch(batch: dict[str, np.ndarray], size: int, policy: str, data_col: str, name_col: str,
                 center_square: bool) -> dict[str, np.ndarray]:
    """Decode encoded bytes to uint8 (H, W, 3) images; rows that fail are dropped (skip) or marked (fail).

    Whole images differ in shape, so the column is ragged (Ray's variable-shaped tensor column);
    centre squares are one (B, S, S, 3) array.
    """
    names = batch[name_col] if name_col in batch else [f"row {i}" for i in batch[ROW_ID]]
    kept: list[int] = []
    images: list[np.ndarray] = []
    errors: list[str] = []
    for i, (data, name) in enumerate(zip(batch[data_col], names, strict=True)):
        try:
            images.append(sources.decode_checked(data, size, str(name), center_square))
            errors.append("")
        except BadImageError as err:
            if policy == "skip":
                continue
            images.append(_NO_IMAGE)
            errors.append(str(err))
        kept.append(i)
    out = {k: np.asarray(v)[kept] for k, v in batch.items() if k not in (data_col, name_col)}
    out["image"] = _image_column(images, size)
    if policy == "fail":
        out[UNREADABLE] = np.asarray(errors, dtype=object)
    return out


def _image_column(images: list[np.ndarray], size: int) -> np.ndarray:
    if not images:
        return np.zeros((0, size, size, 3), np.uint8)
    if all(img.shape == images[0].shape for img in images):
        return np.stack(images)
    ragged = np.empty(len(images), dtype=object)
    ragged[:] = images
    return ragged


def decoded(ds: ray.data.Dataset, cfg: DataConfig, center_square: bool) -> ray.data.Dataset:
    """``ds``'s ``bytes`` decoded now (at the stored size), so that an unreadable file under
    ``data.bad_images=fail`` stops the run before training, with a BadImageError naming the first."""
    out = ds.map_batches(
        partial(decode_batch, size=cfg.stored_size, policy=cfg.bad_images, data_col="bytes", name_col="path",
                center_square=center_square),
        batch_size=64,
    ).materialize()
    if cfg.bad_images == "fail":
        first = out.select_columns([UNREADABLE]).map_batches(_unreadable_rows, batch_format="numpy").take(1)
        if first:
            raise BadImageError(str(first[0][UNREADABLE]))
    return out


def _unreadable_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    errors = np.asarray(batch[UNREADABLE], dtype=object)
    return {UNREADABLE: errors[errors != ""]}
