"""LARS against a naive reference written from google-research/simclr's formulas; groups; schedule."""

import itertools
import math

import pytest
import torch
from torch import nn

from workloads.optim import (
    LARS,
    build_optimizer,
    cosine,
    param_groups,
    scaled_lr,
    set_lr,
    set_weight_decay,
    warmup_cosine,
)


def _small_model() -> nn.Sequential:
    """A Linear with bias, a BatchNorm (weight + bias excluded from LARS), and a second Linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3)).double()


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def _reference_lars_step(
    params: list[list[float]],
    grads: list[list[float]],
    velocities: list[list[float]],
    excluded: list[bool],
    lr: float,
    momentum: float,
    weight_decay: float,
    eta: float,
    nesterov: bool,
) -> None:
    """One LARS step in plain Python floats, in place, straight from lars_optimizer.py."""
    for w, g0, v, exclude in zip(params, grads, velocities, excluded, strict=True):
        g = list(g0)
        if not exclude:
            g = [gi + weight_decay * wi for gi, wi in zip(g, w, strict=True)]
        trust = 1.0
        if not exclude:
            w_norm = math.sqrt(sum(wi * wi for wi in w))
            g_norm = math.sqrt(sum(gi * gi for gi in g))
            if w_norm > 0 and g_norm > 0:
                trust = eta * w_norm / g_norm
        for i in range(len(w)):
            v[i] = momentum * v[i] + lr * trust * g[i]
            update = momentum * v[i] + lr * trust * g[i] if nesterov else v[i]
            w[i] -= update


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize(("lr", "weight_decay"), [(0.5, 1e-2), (2.0, 0.0)])
@pytest.mark.parametrize("excluded_group_decay", [False, True])
def test_lars_matches_naive_reference_for_three_steps(
    nesterov: bool, lr: float, weight_decay: float, excluded_group_decay: bool
) -> None:
    momentum, eta = 0.9, 0.01
    model = _small_model()
    ref_model = _small_model()  # same init; its grads feed the reference so trajectories are comparable
    groups = param_groups(model, weight_decay)
    if excluded_group_decay:  # lars_exclude alone must switch decay off, as SimCLR's name-based exclusion
        groups[1]["weight_decay"] = weight_decay
    excluded = [g["lars_exclude"] for g in groups for _ in g["params"]]
    ordered = [p for g in groups for p in g["params"]]
    ref_ordered = [dict(ref_model.named_parameters())[n] for n in _names_in_order(model, ordered)]
    opt = LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, nesterov=nesterov)

    ref_w = [p.detach().flatten().tolist() for p in ref_ordered]
    ref_v = [[0.0] * p.numel() for p in ref_ordered]
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.arange(8) % 3
    for _ in range(3):
        opt.zero_grad()
        _loss(model, x, y).backward()
        opt.step()

        ref_model.zero_grad()
        _loss(ref_model, x, y).backward()
        ref_g = [p.grad.flatten().tolist() for p in ref_ordered]  # type: ignore[union-attr]
        _reference_lars_step(ref_w, ref_g, ref_v, excluded, lr, momentum, weight_decay, eta, nesterov)
        with torch.no_grad():
            for p, w in zip(ref_ordered, ref_w, strict=True):
                p.copy_(torch.tensor(w, dtype=p.dtype).view_as(p))

        for p, w, v in zip(ordered, ref_w, ref_v, strict=True):
            torch.testing.assert_close(p.detach().flatten(), torch.tensor(w, dtype=p.dtype))
            buf = opt.state[p]["momentum_buffer"]
            torch.testing.assert_close(buf.flatten(), torch.tensor(v, dtype=p.dtype))


def _names_in_order(model: nn.Module, ordered: list[nn.Parameter]) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in ordered]


def test_param_groups_put_biases_and_norm_params_in_the_excluded_group() -> None:
    model = _small_model()
    groups = param_groups(model, weight_decay=1e-4)
    assert len(groups) == 2
    decay, no_decay = groups
    assert decay["weight_decay"] == 1e-4 and decay["lars_exclude"] is False
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True
    names = dict(zip(map(id, model.parameters()), (n for n, _ in model.named_parameters()), strict=True))
    assert sorted(names[id(p)] for p in decay["params"]) == ["0.weight", "3.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["0.bias", "1.bias", "1.weight", "3.bias"]


def test_param_groups_skip_frozen_parameters() -> None:
    model = _small_model()
    model[0].weight.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    assert all(p is not model[0].weight for g in groups for p in g["params"])


def test_lars_does_not_decay_excluded_params() -> None:
    bias = nn.Parameter(torch.ones(3))
    opt = LARS([{"params": [bias], "lars_exclude": True, "weight_decay": 0.5}], lr=1.0, weight_decay=0.5)
    bias.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(bias.detach(), torch.ones(3))


def test_lars_excluded_group_steps_with_plain_lr() -> None:
    bias = nn.Parameter(torch.ones(3))
    opt = LARS([{"params": [bias], "lars_exclude": True}], lr=0.1, momentum=0.0, eta=1e-3)
    bias.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    torch.testing.assert_close(bias.detach(), torch.tensor([0.9, 0.8, 0.7]))


def test_lars_trust_ratio_is_one_when_grad_is_zero() -> None:
    w = nn.Parameter(torch.ones(2, 2))
    opt = LARS([w], lr=1.0, momentum=0.9, weight_decay=0.0)
    w.grad = torch.zeros(2, 2)
    opt.step()  # eta·‖w‖/‖g‖ would be inf; the ratio falls back to 1 and the step is 0
    assert torch.isfinite(opt.state[w]["momentum_buffer"]).all()
    torch.testing.assert_close(w.detach(), torch.ones(2, 2))


def test_lars_trust_ratio_is_one_when_weight_is_zero() -> None:
    w = nn.Parameter(torch.zeros(2, 2))
    opt = LARS([w], lr=0.1, momentum=0.0, weight_decay=0.0)
    w.grad = torch.full((2, 2), 2.0)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((2, 2), -0.2))


def test_lars_skips_params_without_grad() -> None:
    w = nn.Parameter(torch.ones(2, 2))
    opt = LARS([w], lr=1.0)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.ones(2, 2))
    assert w not in opt.state


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lr": -1.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"eta": 0.0}, "eta"),
        ({"momentum": 0.0, "nesterov": True}, "nesterov"),
    ],
)
def test_lars_rejects_bad_arguments_naming_them(kwargs: dict[str, float], field: str) -> None:
    args: dict[str, float] = {"lr": 0.1} | kwargs
    with pytest.raises(ValueError, match=field):
        LARS([nn.Parameter(torch.ones(1))], **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "cls"), [("lars", LARS), ("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_gives_no_decay_to_excluded_group(name: str, cls: type) -> None:
    opt = build_optimizer(name, _small_model(), lr=0.1, weight_decay=1e-3)
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-3, 0.0]
    assert all(g["lr"] == 0.1 for g in opt.param_groups)


def test_build_optimizer_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="lars, sgd, adamw"):
        build_optimizer("adam", _small_model(), lr=0.1, weight_decay=0.0)


def test_set_lr_writes_every_group() -> None:
    opt = build_optimizer("sgd", _small_model(), lr=0.1, weight_decay=1e-3)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


# schedule: 0-based steps; warmup peaks at step warmup_steps-1, cosine ends at step total_steps-1
TOTAL, WARMUP, BASE, FINAL = 100, 10, 0.8, 0.01


def test_warmup_starts_at_base_over_warmup_steps_and_peaks_at_base() -> None:
    assert warmup_cosine(0, TOTAL, WARMUP, BASE, FINAL) == pytest.approx(BASE / WARMUP)
    assert warmup_cosine(WARMUP - 1, TOTAL, WARMUP, BASE, FINAL) == pytest.approx(BASE)
    warm = [warmup_cosine(s, TOTAL, WARMUP, BASE, FINAL) for s in range(WARMUP)]
    assert all(a < b for a, b in itertools.pairwise(warm))


def test_cosine_reaches_final_lr_exactly_at_last_step_and_stays() -> None:
    assert warmup_cosine(TOTAL - 1, TOTAL, WARMUP, BASE, FINAL) == pytest.approx(FINAL, abs=1e-12)
    assert warmup_cosine(TOTAL + 5, TOTAL, WARMUP, BASE, FINAL) == pytest.approx(FINAL, abs=1e-12)


def test_cosine_is_strictly_decreasing_after_warmup() -> None:
    lrs = [warmup_cosine(s, TOTAL, WARMUP, BASE, FINAL) for s in range(WARMUP - 1, TOTAL)]
    assert all(a > b for a, b in itertools.pairwise(lrs))
    mid = (WARMUP - 1 + TOTAL - 1) / 2  # halfway through the cosine: the mean of base and final
    assert warmup_cosine(int(mid), TOTAL, WARMUP, BASE, FINAL) == pytest.approx((BASE + FINAL) / 2, rel=0.05)


def test_schedule_without_warmup_ends_at_final_lr() -> None:
    assert warmup_cosine(0, 10, 0, 1.0) < 1.0
    assert warmup_cosine(0, 10, 0, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))
    assert warmup_cosine(9, 10, 0, 1.0) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("step", "total", "warmup", "field"),
    [(0, 0, 0, "total_steps"), (0, 10, 11, "warmup_steps"), (0, 10, -1, "warmup_steps"), (-1, 10, 2, "step")],
)
def test_schedule_rejects_bad_arguments_naming_them(step: int, total: int, warmup: int, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        warmup_cosine(step, total, warmup, 1.0)


def test_scaled_lr_rules() -> None:
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(0.075 * 64)
    assert scaled_lr(0.3, 512, "none") == 0.3
    with pytest.raises(ValueError, match="linear, sqrt, none"):
        scaled_lr(0.3, 512, "log")
    with pytest.raises(ValueError, match="global_batch"):
        scaled_lr(0.3, 0, "linear")


def test_plain_cosine_runs_from_start_to_end_and_stays_there() -> None:
    assert cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04, abs=1e-15)
    assert cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)  # half way: the mean
    assert cosine(25, 100, 0.04, 0.4) == pytest.approx(0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi / 4)))
    assert cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4) and cosine(130, 100, 0.04, 0.4) == pytest.approx(0.4)
    values = [cosine(s, 100, 0.04, 0.4) for s in range(101)]
    assert all(a < b for a, b in itertools.pairwise(values))
    for step, total, field in ((0, 0, "total_steps"), (-1, 10, "step")):
        with pytest.raises(ValueError, match=field):
            cosine(step, total, 1.0, 0.0)


def test_set_weight_decay_writes_only_the_groups_with_a_wd_scale() -> None:
    a, b, c = (nn.Parameter(torch.ones(2, 2)) for _ in range(3))
    opt = build_optimizer("adamw", [{"params": [a], "weight_decay": 0.05}, {"params": [b], "wd_scale": 1.0},
                                    {"params": [c], "weight_decay": 0.0, "wd_scale": 0.0}], lr=0.1, weight_decay=0.01)
    set_weight_decay(opt, 0.3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.3, 0.0]
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        set_weight_decay(opt, -0.1)
