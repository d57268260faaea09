"""Decoding inside Ray Data: encoded bytes -> uint8 images under the bad-image policy, and the one-line
error a bad file under ``data.bad_images=fail`` becomes (not Ray's remote traceback)."""

from __future__ import annotations

import re
from functools import partial

import numpy as np
import ray.data
from ray.exceptions import RayError

from orchestrator.data import sources
from orchestrator.errors import BadImageError, UserError
from workloads.config import DataConfig

# A UserError's line in a remote traceback, e.g. "orchestrator.errors.BadImageError: unreadable image ...".
_REMOTE_USER_ERROR = re.compile(r"^orchestrator\.errors\.(?P<cls>BadImageError|UserError): (?P<msg>.+)$", re.MULTILINE)


def decode_batch(batch: dict[str, np.ndarray], size: int, policy: str, data_col: str, name_col: str,
                  center_square: bool) -> dict[str, np.ndarray]:
    """Decode encoded bytes to uint8 (H, W, 3) images; rows that fail are dropped (skip) or raise (fail).

    Whole images differ in shape, so the column is ragged (Ray's variable-shaped tensor column);
    centre squares are one (B, S, S, 3) array.
    """
    names = batch[name_col] if name_col in batch else [f"row {i}" for i in range(len(batch[data_col]))]
    kept: list[int] = []
    images: list[np.ndarray] = []
    for i, (data, name) in enumerate(zip(batch[data_col], names, strict=True)):
        img = sources.decode_or_none(data, size, str(name), policy, center_square)
        if img is not None:
            kept.append(i)
            images.append(img)
    out = {k: np.asarray(v)[kept] for k, v in batch.items() if k not in (data_col, name_col)}
    if not images:
        out["image"] = np.zeros((0, size, size, 3), np.uint8)
    elif all(img.shape == images[0].shape for img in images):
        out["image"] = np.stack(images)
    else:
        ragged = np.empty(len(images), dtype=object)
        ragged[:] = images
        out["image"] = ragged
    return out


def decode_stage(raw: ray.data.Dataset, cfg: DataConfig, size: int, name_col: str, center_square: bool
             ) -> ray.data.Dataset:
    return raw.map_batches(
        partial(decode_batch, size=size, policy=cfg.bad_images, data_col="bytes", name_col=name_col,
                center_square=center_square),
        batch_size=64,
    )


def materialize(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Run the decode now, so a bad file under the fail policy stops the run before training."""
    try:
        return ds.materialize()
    except Exception as err:
        cause = find_user_error(err)
        if cause is not None:
            raise cause from None
        raise


def find_user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind a failed Ray Data run, as a one-line error of its own class.

    Ray Data raises ``RayTaskError(UserCodeException)`` for a failing UDF; its ``cause`` chain ends
    at a ``UserCodeException`` without the original exception, which survives only as a line of the
    remote traceback text (``orchestrator.errors.BadImageError: unreadable image ...``). A plain
    ``RayTaskError(BadImageError)`` is itself a UserError but prints the whole traceback, so the
    walk prefers its ``cause``, the original exception.
    """
    texts: list[str] = []
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, UserError) and not isinstance(err, RayError):
            return err
        texts.append(str(err))
        err, seen = getattr(err, "cause", None) or err.__cause__, seen + 1
    for text in texts:
        match = _REMOTE_USER_ERROR.search(text)
        if match:
            cls = BadImageError if match["cls"] == "BadImageError" else UserError
            return cls(match["msg"].strip())
    return None
