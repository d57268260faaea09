"""Self-supervised methods in pure PyTorch, one folder each, on shared parts; workloads/methods.py lists them."""
