"""Masked image modelling: MAE (He et al. 2021) on a ViT and context-encoder inpainting (Pathak et al. 2016)."""
