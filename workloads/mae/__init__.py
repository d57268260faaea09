"""MAE (He et al. 2021): a ViT encodes the visible patches, a light decoder predicts the masked ones."""
