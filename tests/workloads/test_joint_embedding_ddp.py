"""Barlow Twins and VICReg on two real gloo processes against one process on the whole batch.

Both losses are statistics of the global batch: Barlow Twins' batch normalisation and cross-correlation
matrix, VICReg's variance and covariance. The invariant: W workers with N images each give, on every worker,
the loss of one process on all W·N images and, after DDP averages the gradients, its parameter gradients.
The same check fails for a per-worker version (each worker's own statistics) and for a collective whose
backward leaves out the other workers' share (the reference's all_reduce without autograd): the test can
tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as tdist
from gloo_ranks import run_ranks
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

import workloads.dist
from workloads.barlowtwins.loss import barlow_twins_loss
from workloads.vicreg.loss import vicreg_loss

ATOL = RTOL = 1e-5
WORLD = 2
N_PER_RANK = 6
IN_DIM, HIDDEN, OUT_DIM = 8, 16, 6
ROWS, DIM = 3, 5  # all_reduce_with_grad alone

LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "barlowtwins": lambda z0, z1: barlow_twins_loss(z0, z1, 0.05),
    "vicreg": lambda z0, z1: vicreg_loss(z0, z1, 25.0, 25.0, 1.0),
}


def _make_model() -> nn.Module:
    """Linear → ReLU → Linear: no BatchNorm in the network, so what differs between workers is the loss's own
    statistics over the batch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT_DIM))


def _global_batch() -> tuple[Tensor, Tensor]:
    """Two views of the W·N images of one global batch, the same in every process; correlated, with
    dimensions of different spread, so every term of both losses is active."""
    g = torch.Generator().manual_seed(1)
    shape = (WORLD * N_PER_RANK, IN_DIM)
    base = torch.randn(shape, generator=g) * torch.linspace(0.2, 2.0, IN_DIM)
    return base + 0.3 * torch.randn(shape, generator=g), base + 0.3 * torch.randn(shape, generator=g)


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def _ddp_step(rank: int, loss_fn: Callable[[Tensor, Tensor], Tensor]) -> dict[str, Any]:
    """One DDP forward/backward on this rank's N images: the loss and the DDP-averaged gradients."""
    x0, x1 = _global_batch()
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    model = DistributedDataParallel(_make_model())
    loss = loss_fn(model(x0[rows]), model(x1[rows]))
    loss.backward()  # DDP averages the gradients over the ranks
    return {"loss": loss.detach(), "grads": _grads(model.module)}


class _NoGradAllReduce(torch.autograd.Function):
    """The reference's ``torch.distributed.all_reduce(c)``: the sum in forward, autograd sees only the local
    part, so backward passes the gradient through unchanged."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone()
        tdist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


class _LocalSliceGather(torch.autograd.Function):
    """A gather whose backward returns only this rank's slice of its own gradient."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        n = grad.shape[0] // tdist.get_world_size()
        return grad[tdist.get_rank() * n : (tdist.get_rank() + 1) * n]


def _apply(fn: type[torch.autograd.Function]) -> Callable[[Tensor], Tensor]:
    def call(x: Tensor) -> Tensor:
        out: Tensor = fn.apply(x)
        return out

    return call


def _local(x: Tensor) -> Tensor:
    return x  # no collective: each worker's own rows and statistics


# (method, scenario) -> the name in workloads.dist the scenario replaces, and with what
SCENARIOS: dict[tuple[str, str], tuple[str, Callable[[Tensor], Tensor]] | None] = {
    ("barlowtwins", "exact"): None,
    ("barlowtwins", "per_worker"): ("all_reduce_with_grad", _local),
    ("barlowtwins", "all_reduce_without_grad"): ("all_reduce_with_grad", _apply(_NoGradAllReduce)),
    ("vicreg", "exact"): None,
    ("vicreg", "per_worker"): ("gather_with_grad", _local),
    ("vicreg", "gather_backward_local_slice"): ("gather_with_grad", _apply(_LocalSliceGather)),
}


def _rank(rank: int) -> dict[Any, Any]:
    results: dict[Any, Any] = {"rank": rank}
    for (method, scenario), swap in SCENARIOS.items():
        if swap is None:
            results[method, scenario] = _ddp_step(rank, LOSSES[method])
            continue
        name, replacement = swap
        original = getattr(workloads.dist, name)
        setattr(workloads.dist, name, replacement)
        try:
            results[method, scenario] = _ddp_step(rank, LOSSES[method])
        finally:
            setattr(workloads.dist, name, original)

    # all_reduce_with_grad alone: each rank weights the sum with its own weights
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(ROWS, DIM, generator=g, requires_grad=True)
    weights = torch.randn(ROWS, DIM, generator=g)
    total = workloads.dist.all_reduce_with_grad(x)
    (total * weights).sum().backward()
    results.update(x=x.detach(), weights=weights, total=total.detach(), x_grad=x.grad)
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[Any, Any]]:
    """Every two-process scenario in one spawn (children are slow to start); the results of each rank."""
    return run_ranks(_rank, tmp_path_factory.mktemp("two_ranks"), WORLD)


def _one_process(method: str) -> dict[str, Any]:
    """The same model and global batch of W·N images in one process."""
    x0, x1 = _global_batch()
    model = _make_model()
    loss = LOSSES[method](model(x0), model(x1))
    loss.backward()
    return {"loss": loss.detach(), "grads": _grads(model)}


def _close(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(torch.allclose(x, y, atol=ATOL, rtol=RTOL) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("method", ["barlowtwins", "vicreg"])
def test_every_workers_loss_is_the_loss_of_one_process_on_the_global_batch(
        method: str, ranks: list[dict[Any, Any]]) -> None:
    expected = _one_process(method)["loss"]
    for r in ranks:
        torch.testing.assert_close(r[method, "exact"]["loss"], expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("method", ["barlowtwins", "vicreg"])
def test_ddp_averaged_gradients_equal_one_process_gradients(method: str, ranks: list[dict[Any, Any]]) -> None:
    expected = _one_process(method)["grads"]
    assert max(g.abs().max() for g in expected) > 1e-3  # (the last bias's is 0: both losses ignore a shift)
    for r in ranks:
        assert _close(r[method, "exact"]["grads"], expected)


@pytest.mark.parametrize(("method", "scenario"), [
    ("barlowtwins", "per_worker"), ("barlowtwins", "all_reduce_without_grad"),
    ("vicreg", "per_worker"), ("vicreg", "gather_backward_local_slice"),
])
def test_the_check_fails_for_per_worker_statistics_and_for_a_collective_without_the_other_workers_gradient(
        method: str, scenario: str, ranks: list[dict[Any, Any]]) -> None:
    expected = _one_process(method)
    for r in ranks:
        assert not _close(r[method, scenario]["grads"], expected["grads"])
    if scenario == "per_worker":  # each worker's own batch: the losses differ from the global batch's too
        assert not all(torch.allclose(r[method, scenario]["loss"], expected["loss"]) for r in ranks)
    else:  # the right loss, wrong gradients
        for r in ranks:
            torch.testing.assert_close(r[method, scenario]["loss"], expected["loss"], atol=ATOL, rtol=RTOL)
    if scenario == "gather_backward_local_slice":  # one collective: exactly 1/W of one process's gradients
        for r in ranks:
            assert _close([g * WORLD for g in r[method, scenario]["grads"]], expected["grads"])


def test_all_reduce_with_grad_sums_forward_and_sums_every_ranks_gradient_backward(
        ranks: list[dict[Any, Any]]) -> None:
    total = sum(r["x"] for r in ranks)
    weights = sum(r["weights"] for r in ranks)  # d/dx_r of Σ_s sum(total · weights_s) is Σ_s weights_s
    for r in ranks:
        torch.testing.assert_close(r["total"], total)
        torch.testing.assert_close(r["x_grad"], weights)


def test_dist_helpers_fall_back_to_one_process() -> None:
    x = torch.randn(3, 4)
    assert workloads.dist.all_reduce_with_grad(x) is x
