"""VICReg (Bardes et al. 2022): variance, invariance and covariance terms on two views' embeddings over the
global batch; no negatives, no momentum network."""
