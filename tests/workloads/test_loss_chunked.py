"""The chunked NT-Xent path (`chunk_rows` > 0): same loss and gradients as the paper and the full path,
with no (2N, 2·W·N) tensor ever allocated.

The full path's own tests (test_loss.py) include the real two-process equivalence; here the gather is
simulated in one process (rank r's rows between constant rows of the other ranks), which is enough
to check that both paths compute the same function of the gathered embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from test_loss import ATOL, RTOL, _views, paper_nt_xent
from torch.utils._python_dispatch import TorchDispatchMode

import workloads.dist
from workloads.simclr.loss import NTXentLoss, nt_xent

CHUNKS = pytest.mark.parametrize("chunk_rows", [1, 3, 16, 1000])  # 1000: one block for every n here


@pytest.mark.parametrize("n", [1, 2, 3, 8])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
@CHUNKS
def test_chunked_loss_and_gradients_match_paper_algorithm(n: int, temperature: float, chunk_rows: int) -> None:
    z0, z1 = (z.requires_grad_() for z in _views(n, 16))
    r0, r1 = (z.detach().double().requires_grad_() for z in (z0, z1))

    loss = nt_xent(z0, z1, temperature, chunk_rows=chunk_rows)
    expected = paper_nt_xent(r0, r1, temperature)
    loss.backward()
    expected.backward()

    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, atol=ATOL, rtol=RTOL)
    assert z0.grad is not None and z1.grad is not None
    torch.testing.assert_close(z0.grad.double(), r0.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(z1.grad.double(), r1.grad, atol=ATOL, rtol=RTOL)


def _loss_and_grads(n: int, d: int, chunk_rows: int, temperature: float = 0.1,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    z0, z1 = (z.to(dtype).requires_grad_() for z in _views(n, d, seed=7))
    loss = nt_xent(z0, z1, temperature, chunk_rows=chunk_rows)
    loss.backward()
    assert z0.grad is not None and z1.grad is not None
    return loss.detach(), z0.grad, z1.grad


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 199, 200, 4096])  # 2N = 200: uneven, exact, one block
def test_chunked_equals_full_path_on_a_larger_batch(chunk_rows: int) -> None:
    full = _loss_and_grads(100, 32, 0)
    chunked = _loss_and_grads(100, 32, chunk_rows)
    for a, b in zip(chunked, full, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_chunked_keeps_float64_inputs_in_float64() -> None:
    full = _loss_and_grads(20, 8, 0, dtype=torch.float64)
    chunked = _loss_and_grads(20, 8, 6, dtype=torch.float64)
    assert chunked[0].dtype == torch.float64
    for a, b in zip(chunked, full, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_chunked_computes_in_float32_under_autocast_forward_and_backward() -> None:
    z0, z1 = (z.requires_grad_() for z in _views(8, 128))
    r0, r1 = (z.detach().double().requires_grad_() for z in (z0, z1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z0, z1, 0.1, chunk_rows=5)
        loss.backward()  # backward inside autocast too: its matmuls must stay float32
    paper_nt_xent(r0, r1, 0.1).backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), paper_nt_xent(z0.detach(), z1.detach(), 0.1), atol=ATOL, rtol=RTOL)
    assert z0.grad is not None
    torch.testing.assert_close(z0.grad.double(), r0.grad, atol=ATOL, rtol=RTOL)


# --- a simulated rank of W workers ----------------------------------------------------------------------------


@pytest.fixture
def rank_1_of_3(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """workloads.dist answering as rank 1 of 3, gathering constant rows for ranks 0 and 2."""
    world, rank = 3, 1
    g = torch.Generator().manual_seed(5)
    others: dict[int, torch.Tensor] = {}
    calls: list[int] = []

    def gather(x: torch.Tensor) -> torch.Tensor:
        key = len(calls) % 2  # z0, then z1
        calls.append(key)
        if key not in others:
            others[key] = torch.randn(world * x.shape[0], x.shape[1], generator=g)
        n = x.shape[0]
        return torch.cat([others[key][: rank * n], x, others[key][(rank + 1) * n:]])  # (W*N, D)

    monkeypatch.setattr(workloads.dist, "world_size", lambda: world)
    monkeypatch.setattr(workloads.dist, "rank", lambda: rank)
    monkeypatch.setattr(workloads.dist, "gather_with_grad", gather)
    yield


@pytest.mark.usefixtures("rank_1_of_3")
@pytest.mark.parametrize("chunk_rows", [1, 5, 12, 100])  # 2N = 12
def test_chunked_equals_full_path_for_a_rank_of_several_workers(chunk_rows: int) -> None:
    results = []
    for rows in (0, chunk_rows):
        z0, z1 = (z.requires_grad_() for z in _views(6, 16, seed=3))
        loss = nt_xent(z0, z1, 0.2, chunk_rows=rows)
        loss.backward()
        results.append((loss.detach(), z0.grad, z1.grad))
    (full_loss, *full_grads), (loss, *grads) = results
    torch.testing.assert_close(loss, full_loss, atol=ATOL, rtol=RTOL)
    for a, b in zip(grads, full_grads, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


# --- memory: the point of the path --------------------------------------------------------------------------


class _LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("chunk_rows", [8, 32])
def test_chunked_path_never_materialises_the_full_logits(chunk_rows: int) -> None:
    n, d = 64, 16  # 2N = 128 anchors and columns: the full matrix has 16,384 elements
    z0, z1 = (z.requires_grad_() for z in _views(n, d))
    with _LargestOutput() as chunked:
        nt_xent(z0, z1, 0.5, chunk_rows=chunk_rows).backward()
    with _LargestOutput() as full:
        nt_xent(z0, z1, 0.5).backward()
    assert full.largest >= (2 * n) ** 2  # the check sees the full path's matrix
    assert chunked.largest <= max(chunk_rows * 2 * n, 2 * n * d)  # a block of logits, or the embeddings


@pytest.mark.parametrize("chunk_rows", [-1, 2.5, True])
def test_bad_chunk_rows_is_rejected_naming_it(chunk_rows: Any) -> None:
    z0, z1 = _views(4, 8)
    with pytest.raises(ValueError, match="chunk_rows must be an int >= 0"):
        nt_xent(z0, z1, 0.5, chunk_rows=chunk_rows)
    with pytest.raises(ValueError, match="chunk_rows must be an int >= 0"):
        NTXentLoss(0.5, chunk_rows=chunk_rows)


def test_module_passes_chunk_rows_through() -> None:
    z0, z1 = _views(9, 16)
    module = NTXentLoss(0.3, chunk_rows=4)
    assert "chunk_rows=4" in repr(module)
    assert torch.equal(module(z0, z1), nt_xent(z0, z1, 0.3, chunk_rows=4))
