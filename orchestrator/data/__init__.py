"""The path of an image: catalog (each source: how it loads, its labels, its paths) -> sources (the
readers) -> prepare (load, split, evaluation samples, the row store: decoded once into the object store)
-> stream (each epoch's order and augmented views, streamed to the train workers)."""
