"""The path of an image: sources (where files are) -> prepare (decode once into the object store)
-> stream (each epoch's order and augmented views, streamed to the train workers)."""

from orchestrator.data.prepare import PreparedData, balanced_order, prepare, stratified_holdout

__all__ = ["PreparedData", "balanced_order", "prepare", "stratified_holdout"]
