"""SwAV against the paper: Sinkhorn-Knopp, the swapped prediction and its gradients, the queue, the prototype
freeze and normalisation, checkpoints; and two gloo processes against one process on the whole batch.

The distributed tests spawn two real gloo processes (no mocks), every two-process scenario in one spawn.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from typing import Any

import pytest
import torch
import torch.distributed as tdist
from gloo_ranks import run_ranks
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from workloads.config import Config, ConfigError
from workloads.method import Net, normalize
from workloads.methods import recipe
from workloads.sections import MultiCropConfig
from workloads.swav.config import SwAVConfig
from workloads.swav.loss import sinkhorn_knopp, swapped_prediction
from workloads.swav.method import SwAV, codes
from workloads.swav.model import SwAVModel

WORLD, N_PER_RANK, K, DIM = 2, 6, 5, 4


def paper_sinkhorn(scores: Tensor, epsilon: float, iterations: int) -> Tensor:
    """Sinkhorn-Knopp as SwAV's Algorithm 1 (arXiv:2006.09882, appendix), in float64:

        Q = exp(scores / eps).T; Q /= sum(Q); K, B = Q.shape
        r, c = ones(K) / K, ones(B) / B
        for _ in range(n_iters): u = sum(Q, dim=1); Q *= (r / u)[:, None]; Q *= (c / sum(Q, dim=0))[None]
        return (Q / sum(Q, dim=0, keepdim=True)).T
    """
    q = torch.exp(scores.double() / epsilon).T
    q = q / q.sum()
    k, b = q.shape
    r, c = torch.full((k,), 1.0 / k, dtype=torch.float64), torch.full((b,), 1.0 / b, dtype=torch.float64)
    for _ in range(iterations):
        q = q * (r / q.sum(dim=1))[:, None]
        q = q * (c / q.sum(dim=0))[None, :]
    return (q / q.sum(dim=0, keepdim=True)).T


def paper_loss(scores: list[Tensor], codes: list[Tensor], temperature: float) -> Tensor:
    """The swapped prediction one sample at a time, float64 (SwAV Eq. 1-2): for each assigned crop i and
    other crop v, ℓ = −Σ_k q_i[k] log( exp(s_v[k]/τ) / Σ_k' exp(s_v[k']/τ) ); the mean over samples and pairs."""
    total, pairs = torch.zeros((), dtype=torch.float64), 0
    for i, q in enumerate(codes):
        for v, s in enumerate(scores):
            if v == i:
                continue
            pairs += 1
            for b in range(s.shape[0]):
                logits = s[b].double() / temperature
                log_z = math.log(sum(math.exp(x) for x in logits.tolist()))
                total = total - sum(q[b, k].double() * (logits[k] - log_z) for k in range(s.shape[1]))
    return total / (pairs * scores[0].shape[0])


def paper_grad(scores: list[Tensor], codes: list[Tensor], temperature: float) -> list[Tensor]:
    """d loss / d s_v[b] = Σ_{i ≠ v} (softmax(s_v[b] / τ) − q_i[b]) / (τ · pairs · B), per sample, float64."""
    pairs, n = len(codes) * (len(scores) - 1), scores[0].shape[0]
    grads = []
    for v, s in enumerate(scores):
        g = torch.zeros(s.shape, dtype=torch.float64)
        for b in range(n):
            p = torch.softmax(s[b].double() / temperature, dim=0)
            for i, q in enumerate(codes):
                if i != v:
                    g[b] += (p - q[b].double()) / (temperature * pairs * n)
        grads.append(g)
    return grads


@pytest.mark.parametrize(("b", "k", "epsilon", "iterations"),
                         [(8, 5, 0.05, 3), (16, 30, 0.05, 3), (4, 10, 0.1, 1), (32, 7, 0.03, 10)])
def test_sinkhorn_matches_the_papers_algorithm(b: int, k: int, epsilon: float, iterations: int) -> None:
    g = torch.Generator().manual_seed(b + k)
    scores = nn.functional.normalize(torch.randn(b, k, generator=g), dim=1)  # cosine-like, in [-1, 1]
    q = sinkhorn_knopp(scores, epsilon, iterations)
    assert q.shape == (b, k) and q.dtype == torch.float32
    torch.testing.assert_close(q.double(), paper_sinkhorn(scores, epsilon, iterations), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b))  # every sample's codes sum to 1


def test_sinkhorn_balances_the_prototypes_as_it_iterates() -> None:
    scores = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)).tanh()
    q = sinkhorn_knopp(scores, 0.05, 50)
    torch.testing.assert_close(q.sum(dim=0), torch.full((8,), 64 / 8), rtol=1e-3, atol=1e-3)  # B/K each


def test_sinkhorn_is_float32_under_bf16_autocast_and_rejects_bad_arguments() -> None:
    scores = torch.randn(6, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sinkhorn_knopp(scores, 0.05, 3).dtype == torch.float32
    for args, match in (((0.0, 3), "epsilon must be > 0"), ((0.05, 0), "iterations must be >= 1")):
        with pytest.raises(ValueError, match=match):
            sinkhorn_knopp(scores.float(), *args)


def _scores_and_codes(crops: int, assigned: int, b: int, k: int, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    scores = [torch.randn(b, k, generator=g, requires_grad=True) for _ in range(crops)]
    codes_ = [torch.softmax(torch.randn(b, k, generator=g), dim=1) for _ in range(assigned)]
    return scores, codes_


@pytest.mark.parametrize(("crops", "assigned", "b", "k", "temperature"),
                         [(2, 2, 4, 5, 0.1), (6, 2, 3, 7, 0.1), (3, 1, 5, 4, 0.5)])
def test_swapped_prediction_and_its_gradients_match_per_sample_references(
        crops: int, assigned: int, b: int, k: int, temperature: float) -> None:
    scores, q = _scores_and_codes(crops, assigned, b, k, seed=crops * 10 + b)
    loss = swapped_prediction(scores, q, temperature)
    torch.testing.assert_close(loss.double(), paper_loss(scores, q, temperature), rtol=1e-5, atol=1e-6)
    loss.backward()
    for s, expected in zip(scores, paper_grad(scores, q, temperature), strict=True):
        grad = torch.zeros_like(expected) if s.grad is None else s.grad.double()  # None: the only assigned crop
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)


def test_swapped_prediction_rejects_mismatched_shapes_and_temperatures() -> None:
    scores, q = _scores_and_codes(3, 2, 4, 5, seed=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        swapped_prediction(scores, q, 0.0)
    with pytest.raises(ValueError, match="must be \\(B, K\\) alike"):
        swapped_prediction(scores, [q[0][:2]], 0.1)
    with pytest.raises(ValueError, match="need >= 2 crops"):
        swapped_prediction(scores[:1], q[:1], 0.1)


# --- the model and the method --------------------------------------------------------------------------


def _cfg(**overrides: Any) -> Config:
    """SwAV's digits recipe on a tiny model; 2 large 8 px crops, 2 small 4 px crops, 6 prototypes."""
    return recipe("digits", "swav").replace({
        "data.image_size": 8, "model.widths": [8, 16], "model.blocks": [1, 1], "model.proj_dim": DIM,
        "multicrop.small_crops": 2, "multicrop.small_size": 4, "swav.num_prototypes": 6,
        "train.batch_size": 8, "train.workers": 1, "swav.queue_length": 16, "swav.epoch_queue_starts": 1,
        **overrides,
    })


def _net(model: nn.Module, forward: Any = None) -> Net:
    return Net(forward=forward or model, core=model, image=normalize, autocast=nullcontext)


def _batch(n: int, cfg: Config, seed: int = 0) -> dict[str, Tensor]:
    images = torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return SwAV().views(images, cfg, torch.Generator().manual_seed(seed))


def test_views_are_large_and_small_crops_of_their_own_sizes() -> None:
    views = _batch(5, _cfg())
    assert {k: tuple(v.shape) for k, v in views.items()} == {
        "view0": (5, 3, 8, 8), "view1": (5, 3, 8, 8), "small0": (5, 3, 4, 4), "small1": (5, 3, 4, 4)}
    assert all(v.dtype == torch.uint8 for v in views.values())


def test_config_rules_name_the_field_and_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"multicrop.small_size must be <= data.image_size \(8\)"):
        _cfg(**{"multicrop.small_size": 12})
    with pytest.raises(ConfigError, match=r"swav.queue_length must be 0 or a multiple of train.batch_size \(8\)"):
        _cfg(**{"swav.queue_length": 12})
    with pytest.raises(ConfigError, match="multicrop.large_crops must be >= 2 for method 'swav'"):
        _cfg(**{"multicrop.large_crops": 1})
    with pytest.raises(ConfigError, match="swav.epsilon must be > 0"):
        _cfg(**{"swav.epsilon": 0.0})
    assert recipe("cifar10", "swav").get(SwAVConfig).queue_length % recipe("cifar10", "swav").train.batch_size == 0


def test_prototypes_are_unit_rows_after_construction_and_after_every_step() -> None:
    cfg = _cfg()
    model = SwAV().build_model(cfg)
    assert isinstance(model, SwAVModel)
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(6))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    SwAV().before_epoch(model, 2, cfg)  # after the freeze
    SwAV().loss(_net(model), _batch(8, cfg), cfg).backward()
    opt.step()
    assert not torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(6))
    SwAV().after_step(model, 1, 10, cfg)
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(6))


@pytest.mark.parametrize(("epoch", "frozen"), [(1, True), (2, True), (3, False)])
def test_prototypes_get_no_gradient_during_the_first_epochs(epoch: int, frozen: bool) -> None:
    cfg = _cfg(**{"swav.freeze_prototypes_epochs": 2})
    model = SwAV().build_model(cfg)
    assert isinstance(model, SwAVModel)
    SwAV().before_epoch(model, epoch, cfg)
    SwAV().loss(_net(model), _batch(8, cfg), cfg).backward()
    SwAV().before_optimizer_step(model, 1, cfg)
    assert (model.prototypes.weight.grad is None) == frozen
    assert all(p.grad is not None for p in model.head.parameters())  # the rest trains from the first step


def test_queue_fills_after_its_start_epoch_and_is_used_once_full() -> None:
    cfg = _cfg()  # queue 16 rows, batch 8: full after 2 batches, from epoch 2
    model = SwAV().build_model(cfg)
    assert isinstance(model, SwAVModel)
    g = torch.Generator().manual_seed(0)
    z = [nn.functional.normalize(torch.randn(2, 8, DIM, generator=g), dim=2) for _ in range(3)]  # C x B x D
    scores = [[zi @ model.prototypes.weight.T for zi in batch] for batch in z]  # C x (B x K)
    codes(model, z[0].flatten(0, 1), scores[0], cfg)  # epoch 1: the queue is off
    assert not model.queue.any()
    model.epoch = 2
    for i in range(2):
        plain = codes(model, z[i].flatten(0, 1), scores[i], cfg)  # filling, not used yet
        torch.testing.assert_close(plain[0], sinkhorn_knopp(scores[i][0], cfg.get(SwAVConfig).epsilon, 3))
    assert model.queue_full()
    torch.testing.assert_close(model.queue[:, :8], z[1])  # newest first, as the reference
    torch.testing.assert_close(model.queue[:, 8:], z[0])
    used = codes(model, z[2].flatten(0, 1), scores[2], cfg)
    for c in range(2):
        with_queue = torch.cat([torch.cat([z[1][c], z[0][c]]) @ model.prototypes.weight.T, scores[2][c]])
        torch.testing.assert_close(used[c], sinkhorn_knopp(with_queue, cfg.get(SwAVConfig).epsilon, 3)[-8:])
    torch.testing.assert_close(model.queue[:, :8], z[2])


def test_checkpoint_round_trip_carries_prototypes_and_queue_and_resumes_exactly() -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    model = SwAV().build_model(cfg)
    assert isinstance(model, SwAVModel)
    model.epoch = 2
    for seed in range(3):  # fill the queue and use it
        SwAV().loss(_net(model), _batch(8, cfg, seed), cfg)
    state = copy.deepcopy(model.state_dict())
    assert "prototypes.weight" in state and state["queue"].shape == (2, 16, DIM) and state["queue"].any()
    restored = SwAV().build_model(cfg)
    assert isinstance(restored, SwAVModel)
    restored.load_state_dict(state)
    restored.epoch = 2
    batch = _batch(8, cfg, 9)
    torch.testing.assert_close(SwAV().loss(_net(restored), batch, cfg), SwAV().loss(_net(model), batch, cfg))


def test_registered_and_recipes_validate() -> None:
    """(The default search space is validated with every method's in tests/workloads/test_methods.py.)"""
    from workloads.methods import method

    assert isinstance(method("swav"), SwAV) and SwAV.ddp_kwargs == {"forward_sync_buffers": False}
    for name in ("digits", "cifar10"):
        cfg = recipe(name, "swav")
        assert Config.from_dict(cfg.to_dict()) == cfg and cfg.get(SwAVConfig).temperature == 0.1
        assert cfg.get(MultiCropConfig).large_crops == 2 and cfg.get(MultiCropConfig).small_size < cfg.data.image_size


# --- two processes -------------------------------------------------------------------------------------


def _tiny_model() -> SwAVModel:
    """No BatchNorm, so that two workers' forwards equal one process's on the whole batch."""
    torch.manual_seed(3)
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return SwAVModel(encoder, nn.Linear(8, DIM), DIM, K, large_crops=2, queue_length=WORLD * N_PER_RANK * 2)


def _global() -> tuple[Tensor, dict[str, Tensor], Config]:
    cfg = _cfg(**{"train.batch_size": WORLD * N_PER_RANK, "swav.queue_length": 0, "swav.num_prototypes": K})
    scores = nn.functional.normalize(torch.randn(WORLD * N_PER_RANK, K, generator=torch.Generator().manual_seed(7)),
                                     dim=1).double()
    return scores, _batch(WORLD * N_PER_RANK, cfg, seed=5), cfg


def _one_step(rows: slice, ddp: bool) -> dict[str, Any]:
    scores, batch, cfg = _global()
    model = _tiny_model()
    forward = DistributedDataParallel(model) if ddp else model
    loss = SwAV().loss(_net(model, forward), {k: v[rows] for k, v in batch.items()}, cfg)
    loss.backward()
    z = nn.functional.normalize(torch.randn(2, N_PER_RANK, DIM, generator=torch.Generator().manual_seed(11)), dim=2)
    if ddp:
        model.enqueue(z + tdist.get_rank())  # rank r's embeddings, told apart by an offset
    return {"sinkhorn": sinkhorn_knopp(scores[rows], 0.05, 3), "loss": loss.detach(),
            "grads": [p.grad.clone() for p in model.parameters() if p.grad is not None], "queue": model.queue.clone()}


def _rank(rank: int) -> dict[str, Any]:
    return _one_step(slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK), ddp=True)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(_rank, tmp_path_factory.mktemp("swav_two_ranks"), WORLD)


def test_two_process_sinkhorn_equals_one_process_on_the_whole_batch(ranks: list[dict[str, Any]]) -> None:
    whole = _one_step(slice(None), ddp=False)["sinkhorn"]
    torch.testing.assert_close(torch.cat([r["sinkhorn"] for r in ranks]), whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(whole, paper_sinkhorn(_global()[0], 0.05, 3))


def test_two_process_loss_and_ddp_gradients_equal_one_process(ranks: list[dict[str, Any]]) -> None:
    whole = _one_step(slice(None), ddp=False)
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD, whole["loss"], rtol=1e-5, atol=1e-6)
    for rank in ranks:  # DDP averaged: every rank holds the gradients of one process on all the rows
        assert len(rank["grads"]) == len(whole["grads"])
        for a, b in zip(rank["grads"], whole["grads"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_queue_is_the_same_on_both_ranks_and_each_part_holds_its_ranks_embeddings(
        ranks: list[dict[str, Any]]) -> None:
    q0, q1 = ranks[0]["queue"], ranks[1]["queue"]
    assert torch.equal(q0, q1)
    part = q0.shape[1] // WORLD
    torch.testing.assert_close(q0[:, part:part + N_PER_RANK] - 1, q0[:, :N_PER_RANK])  # rank 1: rank 0 + 1
    assert not q0[:, N_PER_RANK:part].any() and not q0[:, part + N_PER_RANK:].any()  # the rest still empty
