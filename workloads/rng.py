"""Per-row random numbers that depend only on a row's key, never on the batch it lands in.

Ray Data hands a task whichever rows the stream put together, and the same row can meet different
neighbours in another run (another worker count, a resumed run). A ``torch.Generator`` shared by a
batch makes a row's draws depend on its position in the batch. ``RowRandom`` is counter-based
instead, like Philox in JAX or cuRAND: draw ``j`` of row ``i`` is ``splitmix64(key_i, j)``, so a
row's augmentation is a function of (seed, epoch, row identity) alone.

Augmentation and mask code draws through ``rand``, which takes either kind of source: tests and
benchmarks keep passing a seeded ``torch.Generator``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray | np.uint64) -> np.ndarray:
    """The SplitMix64 finaliser (Steele et al. 2014) on uint64 arrays; wraps modulo 2**64."""
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def row_keys(seed: int, epoch: int, row_ids: np.ndarray) -> np.ndarray:
    """One uint64 key per row from (seed, epoch, row id): the whole state of a row's random stream."""
    with np.errstate(over="ignore"):
        base = splitmix64(np.uint64(seed % 2**64) + _GOLDEN)
        base = splitmix64(base ^ (np.uint64(epoch % 2**64) * _GOLDEN))
        ids = np.asarray(row_ids, dtype=np.int64).astype(np.uint64)
        return splitmix64(base ^ splitmix64(ids + _GOLDEN))


class RowRandom:
    """Uniform draws per row: row i's j-th number is a hash of (keys[i], j).

    Each call to ``uniform`` takes the next ``k`` numbers of every row's stream, so the draws of a
    row do not depend on how many rows the batch has or where the row sits in it.
    """

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = np.asarray(keys, dtype=np.uint64)  # (B,)
        self.counter = 0

    def __len__(self) -> int:
        return len(self.keys)

    def uniform(self, k: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """(B, k) uniforms in [0, 1): 53 random bits for float64, 24 for anything narrower."""
        j = np.arange(self.counter + 1, self.counter + k + 1, dtype=np.uint64)  # k
        self.counter += k
        with np.errstate(over="ignore"):
            bits = splitmix64(self.keys[:, None] + j[None, :] * _GOLDEN)  # B x k
        if dtype == torch.float64:
            return torch.from_numpy((bits >> np.uint64(11)).astype(np.float64) * 2.0**-53)
        return torch.from_numpy((bits >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)).to(dtype)


RandomSource = torch.Generator | RowRandom | None


def rand(generator: RandomSource, n: int, k: int = 0, *, dtype: torch.dtype = torch.float32,
         device: torch.device | None = None) -> Tensor:
    """Uniform [0, 1) draws of shape (n,) (k = 0) or (n, k), from a generator or per-row keys.

    With a ``torch.Generator`` (or None: torch's default) this is ``torch.rand`` of that shape, so
    seeded results match earlier code draw for draw.
    """
    if isinstance(generator, RowRandom):
        if len(generator) != n:
            raise ValueError(f"RowRandom holds keys for {len(generator)} rows; asked for draws for {n}")
        out = generator.uniform(max(k, 1), dtype)
        out = out if k else out[:, 0]
        return out.to(device) if device is not None else out
    shape = (n, k) if k else (n,)
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)
