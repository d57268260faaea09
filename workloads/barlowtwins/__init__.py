"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of two views' embeddings over the global batch
pushed toward the identity; no negatives, no momentum network."""
