"""Barlow Twins against the paper: the loss and its gradients against a float64 per-sample reference, the
projector, the config section, the recipes, and a checkpoint round trip. W workers against one process:
tests/workloads/test_joint_embedding_ddp.py."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from workloads.barlowtwins.config import BarlowTwinsConfig
from workloads.barlowtwins.loss import BN_EPS, barlow_twins_loss
from workloads.barlowtwins.method import BarlowTwins
from workloads.barlowtwins.recipes import cifar10, digits
from workloads.config import Config, ConfigError
from workloads.joint_embedding import TwinModel
from workloads.method import Net, normalize
from workloads.methods import METHODS
from workloads.optim import build_optimizer

ATOL = RTOL = 1e-5
SIZE = 8  # image side of the tiny model's batches


def paper_barlow_twins(z_a: Tensor, z_b: Tensor, lambd: float) -> Tensor:
    """Barlow Twins' Algorithm 1 (Zbontar et al. 2021) in float64, one sample at a time:

    z_norm = (z − mean over the batch) / std over the batch, for each view; C = z_a_normᵀ·z_b_norm / N;
    loss = Σ_i (1 − C_ii)² + λ·Σ_{i≠j} C_ij².
    The std is the reference code's BatchNorm1d's, sqrt(biased variance + 1e-5), where the pseudocode's
    ``std(0)`` is unbiased without eps (the module docstring says why).
    """
    n, d = z_a.shape

    def normalise(z: Tensor) -> list[Tensor]:
        rows = [z[k].double() for k in range(n)]  # each (D,)
        mean = sum(rows, torch.zeros(d, dtype=torch.float64)) / n
        var = sum(((r - mean) ** 2 for r in rows), torch.zeros(d, dtype=torch.float64)) / n
        return [(r - mean) / torch.sqrt(var + BN_EPS) for r in rows]

    a, b = normalise(z_a), normalise(z_b)
    c = sum((torch.outer(a[k], b[k]) for k in range(n)), torch.zeros(d, d, dtype=torch.float64)) / n  # D x D
    off_diagonal = 1.0 - torch.eye(d, dtype=torch.float64)
    return ((1.0 - c.diagonal()) ** 2).sum() + lambd * (c ** 2 * off_diagonal).sum()


def _views(n: int, d: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, d, generator=g)  # correlated views, so C is far from 0 and from the identity
    return shared + 0.5 * torch.randn(n, d, generator=g), 3.0 * shared + torch.randn(n, d, generator=g) + 1.0


# from 3 rows: with 2, every normalised value is ±1, a flat point of the loss where float32 keeps 4 digits
@pytest.mark.parametrize("n", [3, 8, 32])
@pytest.mark.parametrize("d", [1, 4, 32])
@pytest.mark.parametrize("lambd", [0.0, 0.0051, 0.1])
def test_loss_and_gradients_match_the_per_sample_float64_reference(n: int, d: int, lambd: float) -> None:
    z0, z1 = (z.requires_grad_() for z in _views(n, d))
    r0, r1 = (z.detach().double().requires_grad_() for z in (z0, z1))

    loss = barlow_twins_loss(z0, z1, lambd)
    expected = paper_barlow_twins(r0, r1, lambd)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, atol=ATOL, rtol=RTOL)

    loss.backward()
    expected.backward()
    assert z0.grad is not None and z1.grad is not None and r0.grad is not None and r1.grad is not None
    assert r0.grad.abs().max() > 1e-3  # the gradients compared are not all zero
    torch.testing.assert_close(z0.grad.double(), r0.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(z1.grad.double(), r1.grad, atol=ATOL, rtol=RTOL)


def test_float64_inputs_stay_float64_and_match_to_rounding() -> None:
    z0, z1 = (z.double() for z in _views(8, 6))
    loss = barlow_twins_loss(z0, z1, 0.0051)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, paper_barlow_twins(z0, z1, 0.0051), atol=1e-12, rtol=1e-12)


def test_decorrelated_identical_views_give_almost_zero_and_lambda_weighs_only_the_off_diagonal() -> None:
    n, d = 64, 8
    x = torch.randn(n, d, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(dim=0))  # orthonormal columns, each a mix of centred ones: centred too
    z = q * n ** 0.5  # N x D: uncorrelated dimensions of unit variance
    assert barlow_twins_loss(z, z, 0.0051).item() < 1e-8  # C = I up to BatchNorm's eps
    assert barlow_twins_loss(z, -z, 0.0051).item() == pytest.approx(4.0 * d, rel=1e-4)  # C = −I
    z0, z1 = _views(16, 4)
    on_diagonal = barlow_twins_loss(z0, z1, 0.0)
    torch.testing.assert_close(barlow_twins_loss(z0, z1, 2.0) - on_diagonal,
                               2.0 * (barlow_twins_loss(z0, z1, 1.0) - on_diagonal))


def test_loss_computes_in_float32_under_autocast() -> None:
    z0, z1 = _views(16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = barlow_twins_loss(z0.bfloat16(), z1.bfloat16(), 0.0051)
    assert loss.dtype == torch.float32
    expected = paper_barlow_twins(z0.bfloat16().double(), z1.bfloat16().double(), 0.0051)
    torch.testing.assert_close(loss.double(), expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("shape0", "shape1", "lambd", "match"), [
    ((4, 8), (3, 8), 0.0051, "z0 and z1"),
    ((4, 8), (4, 7), 0.0051, "z0 and z1"),
    ((8,), (8,), 0.0051, "z0 and z1"),
    ((1, 8), (1, 8), 0.0051, "at least 2 rows"),
    ((4, 8), (4, 8), -0.1, "lambd must be >= 0"),
    ((4, 8), (4, 8), float("nan"), "lambd must be >= 0"),
])
def test_bad_inputs_are_rejected(shape0: tuple[int, ...], shape1: tuple[int, ...], lambd: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        barlow_twins_loss(torch.randn(shape0), torch.randn(shape1), lambd)


# --- the method -----------------------------------------------------------------------------------------


def _cfg(**overrides: Any) -> Config:
    """A Barlow Twins config of a tiny ResNet (widths 8/16) on 8 px images: a step takes milliseconds."""
    return Config().replace({
        "method": "barlowtwins", "data.image_size": SIZE, "model.widths": [8, 16], "model.blocks": [1, 1],
        "model.proj_hidden_dim": 16, "model.proj_dim": 12, "model.proj_layers": 3, **overrides,
    })


def _build(cfg: Config, seed: int = 0) -> TwinModel:
    torch.manual_seed(seed)
    model = BarlowTwins().build_model(cfg)
    assert isinstance(model, TwinModel)
    return model.train()


def _net(model: nn.Module) -> Net:
    return Net(forward=model, core=model, image=normalize, autocast=nullcontext)


def _batch(n: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {v: torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8) for v in ("view0", "view1")}


def _optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    return build_optimizer("lars", BarlowTwins().param_groups(model, cfg), lr=0.5, weight_decay=1e-4, eta=0.02)


def test_projector_is_the_references_three_layers_without_biases() -> None:
    model = _build(_cfg())
    linears = [m for m in model.projector if isinstance(m, nn.Linear)]
    norms = [m for m in model.projector if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 16), (16, 16), (16, 12)]
    assert all(m.bias is None for m in linears) and len(norms) == 2 and all(m.affine for m in norms)


def test_loss_is_the_scaled_loss_of_the_projected_views_and_features_are_the_backbones() -> None:
    cfg = _cfg(**{"barlowtwins.lambd": 0.02, "barlowtwins.scale_loss": 0.1})
    model, batch = _build(cfg), _batch(8, seed=1)
    loss = BarlowTwins().loss(_net(model), batch, cfg)
    z0, z1 = model(normalize(batch["view0"]), normalize(batch["view1"]))
    assert z0.shape == z1.shape == (8, 12)
    torch.testing.assert_close(loss, 0.1 * barlow_twins_loss(z0, z1, 0.02))
    x = normalize(batch["view0"])
    assert torch.equal(model.features(x), model.encoder(x)) and model.features(x).shape == (8, 16)


def test_config_defaults_are_the_references_and_bad_values_name_the_field() -> None:
    section = BarlowTwinsConfig()
    assert (section.lambd, section.scale_loss) == (0.0051, 1.0)
    with pytest.raises(ConfigError, match=r"barlowtwins.lambd must be >= 0"):
        _cfg(**{"barlowtwins.lambd": -1.0})
    with pytest.raises(ConfigError, match=r"barlowtwins.scale_loss must be > 0"):
        _cfg(**{"barlowtwins.scale_loss": 0.0})
    with pytest.raises(ConfigError, match="model.arch must be a ResNet for method 'barlowtwins'"):
        _cfg(**{"model.arch": "vit"})


def test_barlowtwins_is_registered() -> None:
    assert isinstance(METHODS["barlowtwins"], BarlowTwins)


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_recipes_and_default_search_space_validate(name: str) -> None:
    from orchestrator.tune.space import parse_search

    cfg = BarlowTwins.recipes[name]()
    assert cfg.method == "barlowtwins" and cfg.model.proj_layers == 3
    assert "barlowtwins.lambd" in parse_search(BarlowTwins.search)
    for key, dim in parse_search(BarlowTwins.search).items():
        for value in dim.probes():
            assert cfg.replace({key: value}).to_flat_dict()[key] == value


def test_cifar10_recipe_is_solo_learns() -> None:
    cfg = cifar10()
    assert (cfg.model.arch, cfg.model.cifar_stem, cfg.model.proj_hidden_dim, cfg.model.proj_dim) == (
        "resnet18", True, 2048, 2048)
    section = cfg.get(BarlowTwinsConfig)
    assert (section.lambd, section.scale_loss) == (0.0051, 0.1)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.eta, cfg.optim.weight_decay) == ("lars", 0.3, 0.02, 1e-4)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.optim.warmup_epochs) == (256, 1000, 10)


def test_digits_recipe_takes_a_step() -> None:
    cfg = digits()
    model = _build(cfg)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 16, 16), generator=g, dtype=torch.uint8)
    loss = BarlowTwins().loss(_net(model), BarlowTwins().views(images, cfg, g), cfg)
    assert torch.isfinite(loss) and loss.item() > 0.0
