"""The kNN monitor's labelled sets: class-balanced samples and stratified hold-outs, so that a
class-sorted source (an ImageFolder tree, Parquet written class by class) still gives a bank and
queries of every class; and ``data.eval_root``, a separate labelled tree such as ImageNet's val/."""

from __future__ import annotations

import numpy as np
import ray.data

from orchestrator.data import manifest, sources
from orchestrator.data import rows as rows_lib
from orchestrator.data.decode import decoded
from orchestrator.data.rows import Rows
from workloads.config import DataConfig


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


def eval_root_rows(cfg: DataConfig, classes: tuple[str, ...], listings: str = "") -> Rows:
    """``data.eval_root``'s images, labelled in the training classes' numbering (matched by folder name),
    or in its own when the training images have no class names (image files; Parquet or a manifest of
    numbers: class folder i is label i). ``listings``: where the run keeps its listings (manifest.listed)."""
    listing = manifest.listed(lambda: sources.list_image_folder(cfg.eval_root, field="data.eval_root"),
                              cfg.eval_root, "data.eval_root", listings)
    return rows_lib.from_listing(listing, cfg.eval_root, classes, field="data.eval_root")


def eval_sets(train: Rows, test: Rows | None, cfg: DataConfig, rng: np.random.Generator
              ) -> tuple[ray.data.Dataset | None, ray.data.Dataset | None]:
    """The kNN bank (a balanced sample of the labelled training rows) and its queries (of ``test``);
    with unlabelled training images, both come from ``data.eval_root``, split in two. Decoded to
    centre squares (None, None: nothing labelled to evaluate on)."""
    if test is None:
        return None, None
    if not train.labelled:
        if not cfg.eval_root:
            return None, None
        order = balanced_order(test.labels, rng)
        half = len(order) // 2
        train, test = test.take(order[:half]), test.take(order[half:])
    bank = balanced_order(train.labels, rng)[:cfg.eval_bank_size]
    queries = balanced_order(test.labels, rng)[:cfg.eval_test_size]
    if len(bank) == 0 or len(queries) == 0:
        return None, None
    return labelled_squares(train.take(bank), cfg), labelled_squares(test.take(queries), cfg)


def labelled_squares(rows: Rows, cfg: DataConfig) -> ray.data.Dataset:
    """``image`` (uint8 centre squares at the stored size) and ``label`` of ``rows``, read now."""
    if rows.images is not None:  # already centre squares in memory
        return rows.dataset()
    return decoded(rows.dataset(), cfg, center_square=True)
