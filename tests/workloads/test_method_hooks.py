"""The Method hooks around the optimiser: parameter groups and the call before the optimiser step."""

from __future__ import annotations

import torch
from torch import nn

from workloads.config import Config
from workloads.method import Method
from workloads.methods import method
from workloads.optim import LARS, build_optimizer, set_lr


def tiny_cfg(name: str = "simclr") -> Config:
    return Config().replace({"method": name, "model.widths": [8], "model.blocks": [1], "model.proj_dim": 8})


def test_default_param_groups_exclude_biases_and_norms_from_decay_and_lars() -> None:
    cfg = tiny_cfg()
    model = method("simclr").build_model(cfg)
    decay, no_decay = method("simclr").param_groups(model, cfg)
    assert decay["weight_decay"] == cfg.optim.weight_decay and decay["lars_exclude"] is False
    assert no_decay["weight_decay"] == 0.0 and no_decay["lars_exclude"] is True
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    optimizer = build_optimizer("lars", [decay, no_decay], lr=0.1, weight_decay=cfg.optim.weight_decay)
    assert isinstance(optimizer, LARS) and [g["lars_exclude"] for g in optimizer.param_groups] == [False, True]


def test_default_param_groups_cover_only_the_trainable_part() -> None:
    cfg = tiny_cfg("moco")
    moco = method("moco")
    model = moco.build_model(cfg)
    grouped = {id(p) for g in moco.param_groups(model, cfg) for p in g["params"]}
    assert grouped == {id(p) for p in moco.trainable(model).parameters() if p.requires_grad}


def test_set_lr_scales_a_group_by_its_lr_scale() -> None:
    a, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2, 2))
    optimizer = build_optimizer("sgd", [{"params": [a]}, {"params": [b], "lr_scale": 0.1}], lr=1.0, weight_decay=0.0)
    set_lr(optimizer, 0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.05]


def test_before_optimizer_step_is_a_no_op_by_default() -> None:
    model = nn.Linear(2, 2)
    model(torch.ones(1, 2)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    Method().before_optimizer_step(model, 1, tiny_cfg())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))


def test_weight_decay_is_the_configs_by_default() -> None:
    cfg = tiny_cfg().replace({"optim.weight_decay": 3e-4})
    assert [Method().weight_decay(step, 10, cfg) for step in (0, 5, 9)] == [3e-4] * 3
    groups = method("simclr").param_groups(method("simclr").build_model(cfg), cfg)
    assert not any("wd_scale" in g for g in groups)  # the Trainer's set_weight_decay leaves them as built
