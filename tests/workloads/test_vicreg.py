"""VICReg against the paper: the loss and its gradients against a float64 per-sample reference, the expander,
the config section, the recipes, and a checkpoint round trip. W workers against one process:
tests/workloads/test_joint_embedding_ddp.py."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from workloads.config import Config, ConfigError
from workloads.joint_embedding import TwinModel
from workloads.method import Net, normalize
from workloads.methods import METHODS
from workloads.optim import build_optimizer
from workloads.vicreg.config import VICRegConfig
from workloads.vicreg.loss import covariance_term, variance_term, vicreg_loss
from workloads.vicreg.method import VICReg
from workloads.vicreg.recipes import cifar10, digits

ATOL = RTOL = 1e-5
SIZE = 8  # image side of the tiny model's batches


def paper_vicreg(z_a: Tensor, z_b: Tensor, sim_coeff: float, std_coeff: float, cov_coeff: float) -> Tensor:
    """VICReg's Algorithm 1 (Bardes et al. 2022) in float64, one sample at a time:

    sim = mean of (z_a − z_b)²;  std = sqrt(Var + 1e-4) per dimension, Var unbiased over the batch;
    var = mean(relu(1 − std_a)) and likewise for b;  cov = Σ_n (z_n − mean)(z_n − mean)ᵀ / (N − 1) per view,
    cov_loss = Σ_{i≠j} cov_ij² / D, summed over the views;  loss = λ·sim + μ·var + ν·cov_loss,
    with the two views' variance terms averaged as the reference code (Algorithm 1 sums them).
    """
    n, d = z_a.shape
    zero = torch.zeros(d, dtype=torch.float64)
    off_diagonal = 1.0 - torch.eye(d, dtype=torch.float64)

    def rows(z: Tensor) -> list[Tensor]:
        return [z[k].double() for k in range(n)]  # each (D,)

    def variance(z: list[Tensor]) -> Tensor:
        mean = sum(z, zero) / n
        var = sum(((r - mean) ** 2 for r in z), zero) / (n - 1)
        return torch.relu(1.0 - torch.sqrt(var + 1e-4)).mean()

    def covariance(z: list[Tensor]) -> Tensor:
        mean = sum(z, zero) / n
        cov = sum((torch.outer(r - mean, r - mean) for r in z), torch.zeros(d, d, dtype=torch.float64)) / (n - 1)
        return (cov ** 2 * off_diagonal).sum() / d

    a, b = rows(z_a), rows(z_b)
    sim = sum(((ra - rb) ** 2).sum() for ra, rb in zip(a, b, strict=True)) / (n * d)
    var = (variance(a) + variance(b)) / 2
    cov = covariance(a) + covariance(b)
    return sim_coeff * sim + std_coeff * var + cov_coeff * cov


def _views(n: int, d: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Correlated views whose dimensions' spreads run from 0.1 to 3: some under VICReg's target std of 1
    (the hinge active), some over it."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.linspace(0.1, 3.0, d)
    shared = torch.randn(n, d, generator=g) * spread
    return shared + 0.3 * torch.randn(n, d, generator=g) * spread, shared + 0.5 * torch.randn(n, d, generator=g)


COEFFS = pytest.mark.parametrize(("sim", "std", "cov"), [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                                                         (0.0, 0.0, 1.0), (5.0, 40.0, 0.5)],
                                 ids=["paper", "invariance", "variance", "covariance", "mixed"])


@pytest.mark.parametrize("n", [2, 5, 32])
@pytest.mark.parametrize("d", [1, 4, 32])
@COEFFS
def test_loss_and_gradients_match_the_per_sample_float64_reference(n: int, d: int, sim: float, std: float,
                                                                   cov: float) -> None:
    z0, z1 = (z.requires_grad_() for z in _views(n, d))
    r0, r1 = (z.detach().double().requires_grad_() for z in (z0, z1))

    loss = vicreg_loss(z0, z1, sim, std, cov)
    expected = paper_vicreg(r0, r1, sim, std, cov)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, atol=ATOL, rtol=RTOL)

    loss.backward()
    expected.backward()
    assert z0.grad is not None and z1.grad is not None and r0.grad is not None and r1.grad is not None
    assert (d == 1 and cov) or r0.grad.abs().max() > 1e-4  # not all zero (one dimension has no covariance)
    torch.testing.assert_close(z0.grad.double(), r0.grad, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(z1.grad.double(), r1.grad, atol=ATOL, rtol=RTOL)


def test_each_term_is_what_the_paper_defines() -> None:
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, -2.0]], dtype=torch.float64)  # 3 rows, 2 dimensions
    # both columns' unbiased variance is 4, so std sqrt(4 + 1e-4) >= 1: no hinge; centred, the columns are
    # (−2, 0, 2) and (0, 2, −2), whose covariance is −4/2 = −2: c = ((−2)² + (−2)²) / D = 4
    assert variance_term(z).item() == 0.0
    assert covariance_term(z).item() == pytest.approx(4.0)
    small = 0.1 * z  # std ≈ 0.2: the hinge gives 1 − sqrt(0.04 + 1e-4) for each dimension
    assert variance_term(small).item() == pytest.approx(1 - (0.04 + 1e-4) ** 0.5)
    torch.testing.assert_close(vicreg_loss(z, z + 1.0, 1.0, 0.0, 0.0), torch.tensor(1.0, dtype=torch.float64))


def test_float64_inputs_stay_float64_and_match_to_rounding() -> None:
    z0, z1 = (z.double() for z in _views(8, 6))
    loss = vicreg_loss(z0, z1)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, paper_vicreg(z0, z1, 25.0, 25.0, 1.0), atol=1e-12, rtol=1e-12)


def test_loss_computes_in_float32_under_autocast() -> None:
    z0, z1 = (z.bfloat16() for z in _views(16, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = vicreg_loss(z0, z1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), paper_vicreg(z0.double(), z1.double(), 25.0, 25.0, 1.0),
                               atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("shape0", "shape1", "coeffs", "match"), [
    ((4, 8), (3, 8), (25.0, 25.0, 1.0), "z0 and z1"),
    ((8,), (8,), (25.0, 25.0, 1.0), "z0 and z1"),
    ((1, 8), (1, 8), (25.0, 25.0, 1.0), "at least 2 rows"),
    ((4, 8), (4, 8), (-1.0, 25.0, 1.0), "sim_coeff must be >= 0"),
    ((4, 8), (4, 8), (25.0, float("nan"), 1.0), "std_coeff must be >= 0"),
    ((4, 8), (4, 8), (25.0, 25.0, -0.5), "cov_coeff must be >= 0"),
])
def test_bad_inputs_are_rejected(shape0: tuple[int, ...], shape1: tuple[int, ...], coeffs: tuple[float, ...],
                                 match: str) -> None:
    with pytest.raises(ValueError, match=match):
        vicreg_loss(torch.randn(shape0), torch.randn(shape1), *coeffs)


# --- the method -----------------------------------------------------------------------------------------


def _cfg(**overrides: Any) -> Config:
    """A VICReg config of a tiny ResNet (widths 8/16) on 8 px images: a step takes milliseconds."""
    return Config().replace({
        "method": "vicreg", "data.image_size": SIZE, "model.widths": [8, 16], "model.blocks": [1, 1],
        "model.proj_hidden_dim": 16, "model.proj_dim": 12, "model.proj_layers": 3, **overrides,
    })


def _build(cfg: Config, seed: int = 0) -> TwinModel:
    torch.manual_seed(seed)
    model = VICReg().build_model(cfg)
    assert isinstance(model, TwinModel)
    return model.train()


def _net(model: nn.Module) -> Net:
    return Net(forward=model, core=model, image=normalize, autocast=nullcontext)


def _batch(n: int, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {v: torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8) for v in ("view0", "view1")}


def _optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    return build_optimizer("lars", VICReg().param_groups(model, cfg), lr=0.5, weight_decay=1e-4, eta=0.02)


def test_expander_is_the_references_three_layers_with_hidden_biases_only() -> None:
    model = _build(_cfg())
    linears = [m for m in model.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 16), (16, 16), (16, 12)]
    assert [m.bias is not None for m in linears] == [True, True, False]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.projector) == 2


def test_loss_is_the_loss_of_the_expanded_views_with_the_configured_coefficients() -> None:
    cfg = _cfg(**{"vicreg.sim_coeff": 10.0, "vicreg.std_coeff": 5.0, "vicreg.cov_coeff": 2.0})
    model, batch = _build(cfg), _batch(8, seed=1)
    loss = VICReg().loss(_net(model), batch, cfg)
    z0, z1 = model(normalize(batch["view0"]), normalize(batch["view1"]))
    assert z0.shape == z1.shape == (8, 12)
    torch.testing.assert_close(loss, vicreg_loss(z0, z1, 10.0, 5.0, 2.0))
    x = normalize(batch["view0"])
    assert torch.equal(model.features(x), model.encoder(x)) and model.features(x).shape == (8, 16)


def test_config_defaults_are_the_papers_and_bad_values_name_the_field() -> None:
    section = VICRegConfig()
    assert (section.sim_coeff, section.std_coeff, section.cov_coeff) == (25.0, 25.0, 1.0)
    for field in ("sim_coeff", "std_coeff", "cov_coeff"):
        with pytest.raises(ConfigError, match=rf"vicreg.{field} must be >= 0"):
            _cfg(**{f"vicreg.{field}": -1.0})
    with pytest.raises(ConfigError, match="model.arch must be a ResNet for method 'vicreg'"):
        _cfg(**{"model.arch": "vit"})


def test_vicreg_is_registered() -> None:
    assert isinstance(METHODS["vicreg"], VICReg)


@pytest.mark.parametrize("name", ["digits", "cifar10"])
def test_recipes_and_default_search_space_validate(name: str) -> None:
    from orchestrator.tune.space import parse_search

    cfg = VICReg.recipes[name]()
    assert cfg.method == "vicreg" and cfg.model.proj_layers == 3
    assert {"vicreg.sim_coeff", "vicreg.std_coeff", "vicreg.cov_coeff"} <= set(parse_search(VICReg.search))
    for key, dim in parse_search(VICReg.search).items():
        for value in dim.probes():
            assert cfg.replace({key: value}).to_flat_dict()[key] == value


def test_cifar10_recipe_is_solo_learns() -> None:
    cfg = cifar10()
    assert (cfg.model.arch, cfg.model.cifar_stem, cfg.model.proj_hidden_dim, cfg.model.proj_dim) == (
        "resnet18", True, 2048, 2048)
    section = cfg.get(VICRegConfig)
    assert (section.sim_coeff, section.std_coeff, section.cov_coeff) == (25.0, 25.0, 1.0)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.eta, cfg.optim.weight_decay) == ("lars", 0.3, 0.02, 1e-4)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.optim.warmup_epochs) == (256, 1000, 10)


def test_digits_recipe_takes_a_step() -> None:
    cfg = digits()
    model = _build(cfg)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 16, 16), generator=g, dtype=torch.uint8)
    loss = VICReg().loss(_net(model), VICReg().views(images, cfg, g), cfg)
    assert torch.isfinite(loss) and loss.item() > 0.0
