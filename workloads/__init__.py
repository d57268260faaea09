"""Self-supervised methods in pure PyTorch; importing the package registers the built-in methods."""

from workloads import methods as _methods  # noqa: F401 - fills workloads.registry before any Config is built

