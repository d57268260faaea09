"""Ray Data pipeline: read -> decode (once, cached) -> augment into two views -> train workers.

The decoded images are materialised in the object store when they fit, so every epoch pays only
for augmentation, which runs as Ray Data map tasks on CPU workers with fresh random parameters each
epoch (the augmentation comes after ``materialize()``, never before). Ray Train then
``streaming_split``s the augmented stream across the train workers (``datasets_to_split=["train"]``);
the labelled evaluation splits go whole to every worker and only rank 0 reads them.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch
from ray.data.extensions import ArrowTensorArray
from ray.exceptions import RayError

from orchestrator import sources
from orchestrator.errors import BadImageError, UserError
from workloads.config import AugConfig, Config, DataConfig
from workloads.method import MEAN, STD, normalize
from workloads.methods import method

log = logging.getLogger(__name__)

__all__ = ["MEAN", "STD", "PreparedData", "augment_batch", "augmented", "normalize", "prepare", "to_tensor_images"]
# A UserError's line in a remote traceback, e.g. "orchestrator.errors.BadImageError: unreadable image ...".
_REMOTE_USER_ERROR = re.compile(r"^orchestrator\.errors\.(?P<cls>BadImageError|UserError): (?P<msg>.+)$", re.MULTILINE)


@dataclass
class PreparedData:
    """What the driver hands to Ray Train, plus facts the run logs."""

    train: ray.data.Dataset  # decoded images ("image": S x S x 3 uint8, "label": int64)
    eval_bank: ray.data.Dataset | None  # labelled images for the kNN bank / linear-probe train split
    eval_test: ray.data.Dataset | None  # held-out labelled images
    num_train: int
    num_classes: int  # 0 when there are no labels
    bad_images: int  # images skipped under data.bad_images=skip (-1: not counted, decode not cached)


def prepare(cfg: DataConfig, seed: int, object_store_budget: float | None = None) -> PreparedData:
    """Read the configured source into decoded, cached Ray datasets and the evaluation splits."""
    size = cfg.stored_size
    if cfg.source in ("digits", "synthetic", *sources.TORCHVISION_SOURCES):
        return _prepare_arrays(cfg, _load_arrays(cfg, seed), size, seed)
    return _prepare_files(cfg, size, seed, object_store_budget)


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


def _blocks(images: np.ndarray, labels: np.ndarray, rows_per_block: int) -> ray.data.Dataset:
    """In-memory arrays as several Arrow blocks, so augmentation runs as parallel tasks, not one."""
    k = max(1, math.ceil(len(labels) / rows_per_block))
    tables = [
        pa.table({"image": ArrowTensorArray.from_numpy(images[i::k]), "label": pa.array(labels[i::k])})
        for i in range(k)
    ]
    return ray.data.from_arrow(tables)


def _prepare_arrays(cfg: DataConfig, src: sources.ArraySource, size: int, seed: int) -> PreparedData:
    rng = np.random.default_rng(seed)
    train = sources.ArraySplit(_resize_square(src.train.images, size), src.train.labels)
    perm = rng.permutation(len(train))  # mix classes across blocks
    images, labels = train.images[perm], train.labels[perm]
    test: sources.ArraySplit | None = None
    if src.test is not None:
        test = sources.ArraySplit(_resize_square(src.test.images, size), src.test.labels)
    elif cfg.holdout_fraction > 0 and (labels >= 0).any():
        n_test = max(1, round(cfg.holdout_fraction * len(labels)))
        test = sources.ArraySplit(images[:n_test], labels[:n_test])
        images, labels = images[n_test:], labels[n_test:]
    if len(labels) < 2:
        raise UserError(f"data: only {len(labels)} training images after the held-out split; need at least 2")
    has_labels = bool((labels >= 0).any())
    train_ds = _blocks(images, labels, cfg.augment_batch_size).materialize()
    bank = test_ds = None
    if has_labels and test is not None:
        keep = labels >= 0
        n_bank, n_test = cfg.eval_bank_size, cfg.eval_test_size
        bank = _blocks(images[keep][:n_bank], labels[keep][:n_bank], max(n_bank, 1))
        test_ds = _blocks(test.images[:n_test], test.labels[:n_test], max(n_test, 1))
    return PreparedData(train_ds, bank, test_ds, len(labels), src.num_classes if has_labels else 0, 0)


# --- file sources ------------------------------------------------------------------------------------


def _decode_batch(batch: dict[str, np.ndarray], size: int, policy: str, data_col: str,
                  name_col: str) -> dict[str, np.ndarray]:
    """Decode encoded bytes to (B, S, S, 3) uint8; rows that fail are dropped (skip) or raise (fail)."""
    images, labels = [], []
    names = batch[name_col] if name_col in batch else [f"row {i}" for i in range(len(batch[data_col]))]
    for data, name, label in zip(batch[data_col], names, batch["label"], strict=True):
        img = sources.decode_or_none(data, size, str(name), policy)
        if img is not None:
            images.append(img)
            labels.append(label)
    if not images:
        return {"image": np.zeros((0, size, size, 3), np.uint8), "label": np.zeros((0,), np.int64)}
    return {"image": np.stack(images), "label": np.asarray(labels, dtype=np.int64)}


def _prepare_files(cfg: DataConfig, size: int, seed: int, budget: float | None) -> PreparedData:
    num_classes = 0
    if cfg.source == "parquet":
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
        raw = raw.select_columns(columns)
        raw = raw.rename_columns({cfg.image_column: "bytes"})
        if cfg.label_column:
            raw = raw.rename_columns({cfg.label_column: "label"})
            labels = raw.select_columns(["label"]).to_pandas()["label"]
            num_classes = int(labels.max()) + 1 if len(labels) else 0
        else:
            raw = raw.add_column("label", lambda df: np.full(len(df), -1, dtype=np.int64), batch_format="pandas")
        name_col = "row"
    else:
        listing = (sources.list_image_folder(cfg.root) if cfg.source == "imagefolder"
                   else sources.list_image_files(cfg.uri))
        num_classes = len(listing.classes)
        label_of = dict(zip(listing.paths, listing.labels, strict=True))
        raw = ray.data.read_binary_files(listing.paths, filesystem=listing.filesystem, include_paths=True)
        raw = raw.map_batches(
            lambda b: {"bytes": b["bytes"], "path": b["path"],
                       "label": np.asarray([label_of.get(p, -1) for p in b["path"]], dtype=np.int64)},
        )
        name_col = "path"
    num_listed = raw.count()
    decoded = raw.map_batches(
        partial(_decode_batch, size=size, policy=cfg.bad_images, data_col="bytes", name_col=name_col),
        batch_size=64,
    )
    fits = budget is None or num_listed * size * size * 3 < 0.5 * budget
    bad = -1
    if cfg.cache_decoded and fits:
        decoded = _materialize(decoded)
        num_ok = decoded.count()
        bad = num_listed - num_ok
        if bad:
            log.warning("skipped %d unreadable images of %d (data.bad_images=skip)", bad, num_listed)
    else:
        num_ok = num_listed
        if cfg.cache_decoded:
            log.warning("decoded images (%d x %d px) do not fit in half the object store; decoding each epoch",
                        num_listed, size)
    if num_ok < 2:
        raise UserError(f"data: only {num_ok} readable images in {cfg.uri or cfg.root!r}; need at least 2")
    bank: ray.data.Dataset | None = None
    test: ray.data.Dataset | None = None
    train: ray.data.Dataset = decoded
    if num_classes and cfg.holdout_fraction > 0:
        train, test = decoded.train_test_split(test_size=cfg.holdout_fraction, shuffle=True, seed=seed)
        if cfg.cache_decoded and fits:
            train, test = train.materialize(), test.materialize()
        num_ok = train.count()
        bank = train.limit(cfg.eval_bank_size)
        test = test.limit(cfg.eval_test_size)
    return PreparedData(train, bank, test, num_ok, num_classes, bad)


def _materialize(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Run the decode now, so a bad file under the fail policy stops the run before training."""
    try:
        return ds.materialize()
    except Exception as err:
        cause = _find_user_error(err)
        if cause is not None:
            raise cause from None
        raise


def _find_user_error(err: BaseException | None) -> UserError | None:
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


# --- augmentation ------------------------------------------------------------------------------------


def augment_batch(batch: dict[str, np.ndarray], aug: dict[str, Any], image_size: int,
                  cfg: Config | None = None) -> dict[str, np.ndarray]:
    """Ray Data UDF: (B, S, S, 3) uint8 -> the method's views (SimCLR: two (B, 3, s, s) uint8 views).

    ``cfg`` is the whole run config, already typed (validating a dict costs about 1 ms, 6% of a
    128-image batch at 16 px); without it, SimCLR's views with ``aug`` at ``image_size``. Each call
    draws a fresh seed: Ray worker processes all start from torch's fixed default seed, so without it
    every task would draw the same "random" crops.
    """
    config = cfg if cfg is not None else Config.from_dict({"aug": aug, "data": {"image_size": image_size}})
    images = torch.from_numpy(np.ascontiguousarray(batch["image"])).permute(0, 3, 1, 2)  # B x 3 x S x S
    gen = torch.Generator().manual_seed(secrets.randbits(63))
    views = method(config.method).views(images, config, gen)
    return {name: v.numpy() for name, v in views.items()}


def augmented(ds: ray.data.Dataset, aug: AugConfig, data: DataConfig, cfg: Config | None = None) -> ray.data.Dataset:
    """The lazy per-epoch augmentation stage over decoded images (``cfg``: the run's, for its method)."""
    kwargs: dict[str, Any] = {}
    if data.augment_workers:
        kwargs["concurrency"] = data.augment_workers
    return ds.select_columns(["image"]).map_batches(
        partial(augment_batch, aug=asdict(aug), image_size=data.image_size, cfg=cfg),
        batch_size=data.augment_batch_size, **kwargs,
    )


def to_tensor_images(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 numpy -> (N, 3, S, S) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
