"""Context-encoder inpainting (Pathak et al. 2016) on a ResNet."""
