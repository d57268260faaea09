"""The path of an image: sources (where files are) -> prepare (decode once into the object store;
evalsets: the kNN monitor's labelled samples) -> stream (each epoch's order and augmented views,
streamed to the train workers)."""

from orchestrator.data.evalsets import balanced_order, stratified_holdout
from orchestrator.data.prepare import PreparedData, prepare

__all__ = ["PreparedData", "balanced_order", "prepare", "stratified_holdout"]
