"""The kNN monitor's labelled sets: class-balanced samples and stratified hold-outs, so that a
class-sorted source (an ImageFolder tree, Parquet written class by class) still gives a bank and
queries of every class; and ``data.eval_root``, a separate labelled tree such as ImageNet's val/."""

from __future__ import annotations

import numpy as np
import pyarrow.fs as pafs
import ray.data

from orchestrator.data import sources
from orchestrator.data.decode import decode_stage, materialize
from orchestrator.errors import UserError
from workloads.config import DataConfig

Files = tuple[list[str], np.ndarray, pafs.FileSystem]  # paths, labels, their filesystem


def balanced_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of the labelled rows (label >= 0) dealt class by class, each class in random order:
    every prefix is as class-balanced as the classes' sizes allow (a kNN bank or query set from a
    class-sorted source holds every class)."""
    labelled = np.flatnonzero(labels >= 0)
    shuffled = labelled[rng.permutation(len(labelled))]
    order = np.argsort(labels[shuffled], kind="stable")  # grouped by class, random within
    grouped = shuffled[order]
    classes, starts = np.unique(labels[grouped], return_index=True)
    rank = np.arange(len(grouped)) - np.repeat(starts, np.diff(np.append(starts, len(grouped))))
    class_slot = rng.permutation(len(classes))[np.searchsorted(classes, labels[grouped])]
    return grouped[np.lexsort((class_slot, rank))]


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of held-out rows: ``fraction`` of each class (at least one image overall)."""
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels[labels >= 0]):
        members = rng.permutation(np.flatnonzero(labels == c))
        held[members[:round(fraction * len(members))]] = True
    if not held.any() and (labels >= 0).any():
        held[rng.choice(np.flatnonzero(labels >= 0))] = True
    return held


def _labelled_listing(listing: sources.FileListing, field: str, classes: list[str]) -> np.ndarray:
    """An evaluation folder's labels in the training classes' numbering (matched by folder name)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(listing.classes) - set(index))
    if unknown:
        raise UserError(f"{field}: class folders {unknown[:5]} are not among the training classes "
                        f"({', '.join(classes[:5])}, ...); use an evaluation tree with the same class folders")
    return np.asarray([index[listing.classes[i]] for i in listing.labels], dtype=np.int64)


def read_labelled(paths: list[str], labels: np.ndarray, fs: pafs.FileSystem, cfg: DataConfig, size: int
                   ) -> ray.data.Dataset:
    """Decoded centre squares of ``paths`` with their labels, materialised (a bad file fails here)."""
    label_of = dict(zip(paths, labels.tolist(), strict=True))
    raw = ray.data.read_binary_files(paths, filesystem=fs, include_paths=True).map_batches(
        lambda b: {"bytes": b["bytes"], "path": b["path"],
                   "label": np.asarray([label_of[p] for p in b["path"]], dtype=np.int64)})
    return materialize(decode_stage(raw, cfg, size, "path", center_square=True))


def eval_sets(cfg: DataConfig, size: int, seed: int, train: Files,
               test: Files | None
               ) -> tuple[ray.data.Dataset | None, ray.data.Dataset | None]:
    """The kNN bank (a balanced sample of the labelled training files) and its queries (of ``test``);
    with unlabelled training files, both come from ``test`` (data.eval_root), split in two."""
    if test is None:
        return None, None
    rng = np.random.default_rng(seed)
    (paths, labels, fs), (t_paths, t_labels, t_fs) = train, test
    if not (labels >= 0).any():  # unlabelled pretraining images: bank and queries from the eval tree
        order = balanced_order(t_labels, rng)
        half = len(order) // 2
        paths, labels, fs = [t_paths[i] for i in order[:half]], t_labels[order[:half]], t_fs
        t_paths, t_labels = [t_paths[i] for i in order[half:]], t_labels[order[half:]]
    bank = balanced_order(labels, rng)[:cfg.eval_bank_size]
    queries = balanced_order(t_labels, rng)[:cfg.eval_test_size]
    if len(bank) == 0 or len(queries) == 0:
        return None, None
    return (read_labelled([paths[i] for i in bank], labels[bank], fs, cfg, size),
            read_labelled([t_paths[i] for i in queries], t_labels[queries], t_fs, cfg, size))


def eval_root_files(cfg: DataConfig, classes: list[str]) -> Files:
    listing = sources.list_image_folder(cfg.eval_root, field="data.eval_root")
    if not classes:  # unlabelled training images: the evaluation tree's own classes
        return listing.paths, np.asarray(listing.labels, dtype=np.int64), listing.filesystem
    return listing.paths, _labelled_listing(listing, "data.eval_root", classes), listing.filesystem
