"""BYOL against the paper: the loss and its gradients, the target network's momentum update after real
optimiser steps, the schedule, checkpoints, and the target staying identical across two DDP workers."""

from __future__ import annotations

import io
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from gloo_ranks import run_ranks
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from workloads.byol.config import BYOLConfig
from workloads.byol.loss import byol_loss, normalized_mse
from workloads.byol.method import BYOL, target_momentum
from workloads.byol.model import BYOLModel
from workloads.byol.recipes import cifar10, digits
from workloads.config import Config
from workloads.method import Net, normalize
from workloads.methods import METHODS
from workloads.optim import build_optimizer

ATOL = RTOL = 1e-6
SIZE = 8  # image side of the tiny model's batches


def paper_loss(p0: Tensor, p1: Tensor, z0: Tensor, z1: Tensor) -> Tensor:
    """BYOL's L + L̃ (Grill et al. 2020, Eq. 2), one sample at a time in float64:
    ‖p̄ − z̄′‖² = 2 − 2·⟨p, z′⟩ / (‖p‖·‖z′‖), averaged over the batch, for (p0, z1) and for (p1, z0)."""
    total = torch.zeros((), dtype=torch.float64)
    for p, z in ((p0, z1), (p1, z0)):
        pair = torch.zeros((), dtype=torch.float64)
        for i in range(p.shape[0]):
            pi, zi = p[i].double(), z[i].double().detach()
            pair = pair + 2.0 - 2.0 * torch.dot(pi, zi) / (pi.norm() * zi.norm())
        total = total + pair / p.shape[0]
    return total


def _four(n: int, d: int, seed: int = 0) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g) * 3.0 for _ in range(4)]  # p0, p1, z0, z1: not unit length


@pytest.mark.parametrize("n", [1, 3, 16])
@pytest.mark.parametrize("d", [2, 32])
def test_byol_loss_and_gradients_match_the_per_sample_float64_reference(n: int, d: int) -> None:
    p0, p1, z0, z1 = (t.requires_grad_() for t in _four(n, d))
    r0, r1 = (t.detach().double().requires_grad_() for t in (p0, p1))

    loss = byol_loss(p0, p1, z0, z1)
    expected = paper_loss(r0, r1, z0, z1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, atol=ATOL, rtol=RTOL)

    loss.backward()
    expected.backward()
    assert p0.grad is not None and p1.grad is not None
    torch.testing.assert_close(p0.grad.double(), r0.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(p1.grad.double(), r1.grad, atol=ATOL, rtol=RTOL)
    assert z0.grad is None and z1.grad is None  # the target is a stop-gradient (BYOL Algorithm 1)


def test_normalized_mse_is_zero_for_parallel_vectors_and_four_for_opposite_ones() -> None:
    p = torch.randn(5, 8)
    assert normalized_mse(p, 2.5 * p).item() == pytest.approx(0.0, abs=1e-6)
    assert normalized_mse(p, -p).item() == pytest.approx(4.0, abs=1e-6)


def test_byol_loss_computes_in_float32_under_autocast() -> None:
    p0, p1, z0, z1 = _four(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = byol_loss(p0, p1, z0, z1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), paper_loss(p0, p1, z0, z1), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("p_shape", "z_shape", "match"),
                         [((4, 8), (3, 8), "p and z"), ((0, 8), (0, 8), "at least one row")])
def test_normalized_mse_rejects_bad_shapes(p_shape: tuple[int, ...], z_shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        normalized_mse(torch.randn(p_shape), torch.randn(z_shape))


# --- the target network -------------------------------------------------------------------------------


def _cfg(**overrides: Any) -> Config:
    """A BYOL config of a tiny ResNet (widths 8/16) on 8 px images: a step takes milliseconds."""
    return Config().replace({
        "method": "byol", "data.image_size": SIZE, "model.widths": [8, 16], "model.blocks": [1, 1],
        "model.proj_hidden_dim": 16, "model.proj_dim": 8, "byol.pred_hidden_dim": 12, "byol.momentum": 0.9,
        **overrides,
    })


def _build(cfg: Config, seed: int = 0) -> BYOLModel:
    torch.manual_seed(seed)
    model = BYOL().build_model(cfg)
    assert isinstance(model, BYOLModel)
    return model.train()


def _net(forward: Any, core: nn.Module) -> Net:
    return Net(forward=forward, core=core, image=normalize, autocast=nullcontext)


def _batch(n: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {v: torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8) for v in ("view0", "view1")}


def _optimizer(model: BYOLModel, cfg: Config) -> torch.optim.Optimizer:
    return build_optimizer("lars", BYOL().param_groups(model, cfg), lr=0.5, weight_decay=1e-4, eta=0.02)


def test_target_starts_as_a_frozen_copy_of_the_online_encoder_and_projector() -> None:
    model = _build(_cfg())
    for online, target in zip(model.online_parameters(), model.target_parameters(), strict=True):
        assert torch.equal(online, target) and online is not target
        assert online.requires_grad and not target.requires_grad


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_target_is_the_momentum_average_of_the_online_network_after_real_optimizer_steps(schedule: str) -> None:
    cfg = _cfg(**{"byol.momentum_schedule": schedule})
    model, total = _build(cfg), 4
    optimizer = _optimizer(model, cfg)
    for step in range(1, total + 1):
        target_before = [p.detach().clone() for p in model.target_parameters()]
        online_before = [p.detach().clone() for p in model.online_parameters()]
        loss = BYOL().loss(_net(model, model), _batch(8, seed=step), cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        assert all(p.grad is None for p in model.target_parameters())  # no gradient reaches the target
        assert all(torch.equal(p, b) for p, b in zip(model.target_parameters(), target_before, strict=True))
        assert not all(torch.equal(p, b) for p, b in zip(model.online_parameters(), online_before, strict=True))
        online_after = [p.detach().clone() for p in model.online_parameters()]

        BYOL().after_step(model, step, total, cfg)
        m = target_momentum(step, total, cfg)
        expected_m = 1 - 0.1 * (math.cos(math.pi * (step - 1) / total) + 1) / 2 if schedule == "cosine" else 0.9
        assert m == pytest.approx(expected_m, abs=1e-12)
        for t, t0, o in zip(model.target_parameters(), target_before, online_after, strict=True):
            torch.testing.assert_close(t, m * t0 + (1 - m) * o, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("step", "expected"), [(1, 0.996), (51, 0.998), (101, 1.0)], ids=["first", "mid", "end"])
def test_cosine_schedule_starts_at_tau_base_and_rises_to_one(step: int, expected: float) -> None:
    cfg = _cfg(**{"byol.momentum": 0.996})
    assert target_momentum(step, 100, cfg) == pytest.approx(expected, abs=1e-12)


def test_trainable_is_the_online_network_and_biases_and_norms_skip_decay_and_lars() -> None:
    cfg = _cfg()
    model = _build(cfg)
    online = {id(p) for m in (model.encoder, model.projector, model.predictor) for p in m.parameters()}
    groups = BYOL().param_groups(model, cfg)
    assert {id(p) for g in groups for p in g["params"]} == online
    assert online.isdisjoint(id(p) for p in model.target_parameters())
    for g in groups:  # BYOL §C: biases and batch-norm parameters are excluded from LARS and weight decay
        assert all(p.ndim == 1 for p in g["params"]) == g["lars_exclude"] == (g["weight_decay"] == 0.0)


def test_features_are_the_online_backbones() -> None:
    model = _build(_cfg()).eval()
    x = normalize(_batch(4, seed=0)["view0"])
    assert torch.equal(model.features(x), model.encoder(x)) and model.features(x).shape == (4, 16)


def test_checkpoint_round_trip_carries_the_target_and_continues_identically() -> None:
    cfg = _cfg()
    model = _build(cfg)
    optimizer = _optimizer(model, cfg)
    for step in (1, 2):
        loss = BYOL().loss(_net(model, model), _batch(8, seed=step), cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        BYOL().after_step(model, step, 4, cfg)
    state = model.state_dict()
    assert any(k.startswith("target_encoder.") for k in state) and any(k.startswith("target_projector.") for k in state)
    assert not torch.equal(state["target_projector.0.weight"], state["projector.0.weight"])
    buffer = io.BytesIO()
    torch.save({"model": state, "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    fresh = _build(cfg, seed=123)
    fresh.load_state_dict(saved["model"])
    fresh_optimizer = _optimizer(fresh, cfg)
    fresh_optimizer.load_state_dict(saved["optimizer"])
    for a, b in ((model, optimizer), (fresh, fresh_optimizer)):  # the same third step from either
        torch.manual_seed(0)
        loss = BYOL().loss(_net(a, a), _batch(8, seed=3), cfg)
        b.zero_grad(set_to_none=True)
        loss.backward()
        b.step()
        BYOL().after_step(a, 3, 4, cfg)
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_byol_is_registered() -> None:
    assert isinstance(METHODS["byol"], BYOL)


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_recipes_and_default_search_space_validate(name: str) -> None:
    from orchestrator.tune.space import parse_search

    cfg = BYOL.recipes[name]()
    assert cfg.method == "byol" and cfg.get(BYOLConfig).momentum_schedule == "cosine"
    for key, dim in parse_search(BYOL.search).items():
        for value in dim.probes():
            assert cfg.replace({key: value}).to_flat_dict()[key] == value


def test_cifar10_recipe_is_solo_learns() -> None:
    cfg = cifar10()
    assert (cfg.model.arch, cfg.model.cifar_stem, cfg.model.proj_hidden_dim, cfg.model.proj_dim) == (
        "resnet18", True, 4096, 256)
    assert (cfg.get(BYOLConfig).momentum, cfg.get(BYOLConfig).pred_hidden_dim) == (0.99, 4096)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.eta, cfg.optim.weight_decay) == ("lars", 1.0, 0.02, 1e-5)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.optim.warmup_epochs) == (256, 1000, 10)


def test_digits_recipe_takes_a_step() -> None:
    cfg = digits()
    model = _build(cfg)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 16, 16), generator=g, dtype=torch.uint8)
    loss = BYOL().loss(_net(model, model), BYOL().views(images, cfg, g), cfg)
    assert torch.isfinite(loss) and 0.0 <= loss.item() <= 8.0


# --- two workers --------------------------------------------------------------------------------------


def _rank(rank: int) -> dict[str, Any]:
    """Three BYOL steps through DDP, each worker on its own images, as the Trainer runs them."""
    cfg = _cfg()
    model = _build(cfg)  # the same seed on every worker, as the Trainer
    ddp = DistributedDataParallel(model)
    optimizer = _optimizer(model, cfg)
    losses = []
    for step in (1, 2, 3):
        loss = BYOL().loss(_net(ddp, model), _batch(4, seed=10 * step + rank), cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        BYOL().after_step(model, step, 3, cfg)
        losses.append(loss.detach())
    return {"losses": torch.stack(losses), "params": {name: p.detach() for name, p in model.named_parameters()}}


def test_online_and_target_parameters_stay_identical_on_two_ddp_workers(tmp_path: Path) -> None:
    first, second = run_ranks(_rank, tmp_path)
    assert not torch.equal(first["losses"], second["losses"])  # each worker saw its own images
    assert any(name.startswith("target_") for name in first["params"])
    for name, value in first["params"].items():  # online: all-reduced gradients; target: momentum of the online
        assert torch.equal(second["params"][name], value), name
