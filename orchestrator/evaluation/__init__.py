"""Evaluation of a frozen backbone: the per-epoch monitor on rank 0 and ``simclr eval`` of a checkpoint."""
