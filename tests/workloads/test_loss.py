"""NT-Xent against the SimCLR paper's Algorithm 1, and W workers against one process.

The distributed tests spawn two real gloo processes (no mocks): the invariant is that
W workers with N images each give the same loss and, after DDP averaging, the same parameter
gradients as one process on all W·N images.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as tdist
from gloo_ranks import run_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import workloads.dist
from workloads import dist
from workloads.simclr.loss import NTXentLoss, nt_xent

ATOL = RTOL = 1e-5


def paper_nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent written straight from Algorithm 1 of SimCLR (arXiv:2002.05709), in float64.

    z_{2k}, z_{2k+1} are the two views of image k (0-based here);
    s_ij = z_i·z_j / (‖z_i‖‖z_j‖);  l(i, j) = -log( exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ) );
    L = 1/(2N) Σ_k [ l(2k, 2k+1) + l(2k+1, 2k) ].
    """
    n = z0.shape[0]
    z: list[torch.Tensor] = []
    for k in range(n):
        z += [z0[k].double(), z1[k].double()]

    def s(i: int, j: int) -> torch.Tensor:
        return torch.dot(z[i], z[j]) / (torch.linalg.vector_norm(z[i]) * torch.linalg.vector_norm(z[j]))

    def loss(i: int, j: int) -> torch.Tensor:
        denominator = torch.zeros((), dtype=torch.float64)
        for k in range(2 * n):
            if k != i:
                denominator = denominator + torch.exp(s(i, k) / temperature)
        return -torch.log(torch.exp(s(i, j) / temperature) / denominator)

    total = torch.zeros((), dtype=torch.float64)
    for k in range(n):
        total = total + loss(2 * k, 2 * k + 1) + loss(2 * k + 1, 2 * k)
    return total / (2 * n)


def _views(n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)  # (N, D) each


# --- single process: against the paper ---------------------------------------------------------

SIZES = pytest.mark.parametrize("n", [1, 2, 3, 8])
DIMS = pytest.mark.parametrize("d", [4, 16, 128])
TEMPERATURES = pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])


@SIZES
@DIMS
@TEMPERATURES
@pytest.mark.parametrize("gather", [True, False])
def test_nt_xent_matches_paper_algorithm(n: int, d: int, temperature: float, gather: bool) -> None:
    z0, z1 = _views(n, d)
    expected = paper_nt_xent(z0, z1, temperature)
    actual = nt_xent(z0, z1, temperature, gather=gather)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, atol=ATOL, rtol=RTOL)


@SIZES
@DIMS
@TEMPERATURES
def test_nt_xent_gradients_match_paper_algorithm(n: int, d: int, temperature: float) -> None:
    z0, z1 = _views(n, d)
    z0.requires_grad_()
    z1.requires_grad_()
    r0 = z0.detach().double().requires_grad_()
    r1 = z1.detach().double().requires_grad_()

    nt_xent(z0, z1, temperature).backward()
    paper_nt_xent(r0, r1, temperature).backward()

    assert z0.grad is not None and z1.grad is not None
    assert torch.isfinite(z0.grad).all() and torch.isfinite(z1.grad).all()
    torch.testing.assert_close(z0.grad.double(), r0.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(z1.grad.double(), r1.grad, atol=ATOL, rtol=RTOL)


def test_same_module_handles_last_batch_smaller_than_the_others() -> None:
    criterion = NTXentLoss(temperature=0.5)
    for n in (8, 8, 3):  # full, full, then the short last batch
        z0, z1 = _views(n, 16, seed=n)
        torch.testing.assert_close(
            criterion(z0, z1).double(), paper_nt_xent(z0, z1, 0.5), atol=ATOL, rtol=RTOL
        )


def test_module_equals_function() -> None:
    z0, z1 = _views(5, 16)
    assert torch.equal(NTXentLoss(0.2, gather=False)(z0, z1), nt_xent(z0, z1, 0.2, gather=False))


def test_nt_xent_computes_in_float32_under_autocast() -> None:
    # bfloat16 logits would be off by ~1e-2 at τ = 0.1, far outside the tolerance.
    z0, z1 = _views(8, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z0, z1, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), paper_nt_xent(z0, z1, 0.1), atol=ATOL, rtol=RTOL)


def test_nt_xent_upcasts_half_precision_inputs() -> None:
    z0, z1 = (z.bfloat16() for z in _views(8, 16))
    loss = nt_xent(z0, z1, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), paper_nt_xent(z0, z1, 0.1), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan")])
def test_non_positive_temperature_is_rejected_with_field_name(temperature: float) -> None:
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        NTXentLoss(temperature=temperature)
    z0, z1 = _views(2, 4)
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        nt_xent(z0, z1, temperature)


@pytest.mark.parametrize(
    ("shape0", "shape1"),
    [((4, 8), (3, 8)), ((4, 8), (4, 7)), ((0, 8), (0, 8)), ((8,), (8,))],
    ids=["different-n", "different-d", "empty", "1-d"],
)
def test_bad_shapes_are_rejected(shape0: tuple[int, ...], shape1: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="z0"):
        nt_xent(torch.randn(shape0), torch.randn(shape1), 0.5)


def test_dist_helpers_fall_back_to_one_process() -> None:
    x = torch.randn(3, 4)
    assert (dist.world_size(), dist.rank()) == (1, 0)
    assert dist.gather_with_grad(x) is x


# --- two processes: against one process ------------------------------------------------------

WORLD = 2
N_PER_RANK = 4
IN_DIM, HIDDEN, OUT_DIM = 8, 16, 4
TAU = 0.5
GATHER_ROWS, GATHER_DIM = 3, 5


def _make_model() -> nn.Module:
    """Linear → ReLU → Linear: no BatchNorm, whose batch statistics differ per rank by design."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT_DIM))


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of the WORLD·N images of one global batch, the same in every process."""
    g = torch.Generator().manual_seed(1)
    shape = (WORLD * N_PER_RANK, IN_DIM)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)  # (W*N, IN) each


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


class _LocalSliceGather(torch.autograd.Function):
    """The lightly issue 1528 bug: backward returns only this rank's slice of its own gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        n = grad.shape[0] // tdist.get_world_size()
        return grad[tdist.get_rank() * n : (tdist.get_rank() + 1) * n]


def _buggy_gather(x: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = _LocalSliceGather.apply(x)
    return out


def _ddp_step(rank: int, gather: bool) -> dict[str, Any]:
    """One DDP forward/backward on this rank's N images; loss and DDP-averaged gradients."""
    x0, x1 = _global_batch()
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    model = DistributedDataParallel(_make_model())
    loss = nt_xent(model(x0[rows]), model(x1[rows]), TAU, gather=gather)  # mean over 2N local anchors
    loss.backward()  # DDP averages the gradients over the ranks
    return {"loss": loss.detach(), "grads": _grads(model.module)}


def _rank(rank: int) -> dict[str, Any]:
    results: dict[str, Any] = {"world_size": dist.world_size(), "rank": dist.rank()}
    results["gather"] = _ddp_step(rank, gather=True)
    results["no_gather"] = _ddp_step(rank, gather=False)

    original = workloads.dist.gather_with_grad
    workloads.dist.gather_with_grad = _buggy_gather
    try:
        results["buggy_gather"] = _ddp_step(rank, gather=True)
    finally:
        workloads.dist.gather_with_grad = original

    # gather_with_grad alone: each rank weights the gathered rows with its own weights.
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(GATHER_ROWS, GATHER_DIM, generator=g, requires_grad=True)  # (N, D)
    weights = torch.randn(WORLD * GATHER_ROWS, GATHER_DIM, generator=g)  # (W*N, D)
    gathered = dist.gather_with_grad(x)  # (W*N, D)
    (gathered * weights).sum().backward()
    results["x"], results["weights"] = x.detach(), weights
    results["gathered"], results["x_grad"] = gathered.detach(), x.grad
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Run every two-process scenario in one spawn (children are slow to start) and load the results."""
    return run_ranks(_rank, tmp_path_factory.mktemp("two_ranks"), WORLD)


@pytest.fixture(scope="module")
def one_process() -> dict[str, Any]:
    """The same model and global batch of W·N images in one process."""
    x0, x1 = _global_batch()
    model = _make_model()
    loss = nt_xent(model(x0), model(x1), TAU)
    loss.backward()
    return {"loss": loss.detach(), "grads": _grads(model)}


def _close(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        torch.allclose(x, y, atol=ATOL, rtol=RTOL) for x, y in zip(a, b, strict=True)
    )


def test_two_ranks_see_the_process_group(ranks: list[dict[str, Any]]) -> None:
    assert [(r["world_size"], r["rank"]) for r in ranks] == [(WORLD, 0), (WORLD, 1)]


def test_mean_of_rank_losses_equals_one_process_loss(
    ranks: list[dict[str, Any]], one_process: dict[str, Any]
) -> None:
    mean_loss = torch.stack([r["gather"]["loss"] for r in ranks]).mean()
    torch.testing.assert_close(mean_loss, one_process["loss"], atol=ATOL, rtol=RTOL)


def test_ddp_averaged_gradients_equal_one_process_gradients(
    ranks: list[dict[str, Any]], one_process: dict[str, Any]
) -> None:
    for r in ranks:
        assert _close(r["gather"]["grads"], one_process["grads"])


@pytest.mark.parametrize(
    "scenario",
    ["no_gather", "buggy_gather"],
    ids=["without-gather", "gather-backward-without-all-reduce-lightly-1528"],
)
def test_equivalence_check_detects_wrong_gather(
    scenario: str, ranks: list[dict[str, Any]], one_process: dict[str, Any]
) -> None:
    """The equivalence test discriminates: local negatives only, or the issue 1528 backward, fail it."""
    for r in ranks:
        assert not _close(r[scenario]["grads"], one_process["grads"])


def test_gather_with_grad_forward_concatenates_ranks_in_order(ranks: list[dict[str, Any]]) -> None:
    expected = torch.cat([r["x"] for r in ranks])  # (W*N, D)
    for r in ranks:
        assert torch.equal(r["gathered"], expected)


def test_gather_with_grad_backward_sums_gradients_of_all_ranks(ranks: list[dict[str, Any]]) -> None:
    # d/dx_r of Σ_s sum(gathered * weights_s) is Σ_s weights_s[rows of r]: every rank's share.
    for r in ranks:
        rows = slice(r["rank"] * GATHER_ROWS, (r["rank"] + 1) * GATHER_ROWS)
        expected = torch.stack([other["weights"][rows] for other in ranks]).sum(dim=0)  # (N, D)
        torch.testing.assert_close(r["x_grad"], expected)
