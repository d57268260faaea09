"""DINO against the paper and facebookresearch/dino: the loss and its gradients, the centre, the schedules, the head,
the teacher's momentum update after real optimiser steps, the last layer's freeze, per-parameter clipping,
checkpoints, the attention pictures; and two gloo processes against one process on the whole batch.

The distributed tests spawn two real gloo processes (no mocks), every two-process scenario in one spawn.
"""

from __future__ import annotations

import io
import math
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gloo_ranks import run_ranks
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from workloads.config import Config, ConfigError
from workloads.dino.config import DINOConfig
from workloads.dino.loss import dino_loss, updated_center
from workloads.dino.method import DINO, clip_each_gradient, teacher_momentum, teacher_temperature
from workloads.dino.model import DINOHead, DINOModel, WeightNormLinear
from workloads.dino.pictures import cls_attention
from workloads.dino.recipes import cifar10, digits
from workloads.method import Net, normalize
from workloads.methods import METHODS, recipe
from workloads.optim import build_optimizer, set_weight_decay
from workloads.sections import MultiCropConfig
from workloads.vit import ViT

WORLD, N_PER_RANK, K = 2, 4, 6


# --- the loss against Algorithm 1 -------------------------------------------------------------------------


def paper_loss(student: list[Tensor], teacher: list[Tensor], center: Tensor, tps: float, tpt: float) -> Tensor:
    """DINO's Algorithm 1 one sample at a time, float64: H(t, s) = −Σ_k softmax((t − C)/tpt)[k] · log
    softmax(s/tps)[k] for every teacher crop i and student crop v ≠ i (the paper's H(t1, s2)/2 + H(t2, s1)/2
    with 2 crops); the mean over samples and pairs."""
    total, pairs = torch.zeros((), dtype=torch.float64), 0
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == i:
                continue
            pairs += 1
            for b in range(s.shape[0]):
                tl = [(t[b, k].item() - center[0, k].item()) / tpt for k in range(t.shape[1])]
                log_zt = math.log(sum(math.exp(x) for x in tl))
                sl = (s[b].double() / tps)
                log_zs = math.log(sum(math.exp(x) for x in sl.tolist()))
                total = total - sum(math.exp(tl[k] - log_zt) * (sl[k] - log_zs) for k in range(s.shape[1]))
    return total / (pairs * student[0].shape[0])


def paper_grad(student: list[Tensor], teacher: list[Tensor], center: Tensor, tps: float, tpt: float) -> list[Tensor]:
    """d loss / d s_v[b] = Σ_{i ≠ v} (softmax(s_v[b]/tps) − softmax((t_i[b] − C)/tpt)) / (tps · pairs · B)."""
    pairs, n = len(teacher) * (len(student) - 1), student[0].shape[0]
    grads = []
    for v, s in enumerate(student):
        g = torch.zeros(s.shape, dtype=torch.float64)
        for b in range(n):
            p = torch.softmax(s[b].double() / tps, dim=0)
            for i, t in enumerate(teacher):
                if i != v:
                    g[b] += (p - torch.softmax((t[b].double() - center[0].double()) / tpt, dim=0)) / (tps * pairs * n)
        grads.append(g)
    return grads


def _outputs(crops: int, globals_: int, b: int, k: int, seed: int) -> tuple[list[Tensor], list[Tensor], Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(b, k, generator=g, requires_grad=True) for _ in range(crops)]
    teacher = [torch.randn(b, k, generator=g, requires_grad=True) for _ in range(globals_)]
    return student, teacher, 0.3 * torch.randn(1, k, generator=g)


@pytest.mark.parametrize(("crops", "globals_", "b", "k", "tps", "tpt"),
                         [(2, 2, 4, 5, 0.1, 0.04), (2, 2, 3, 7, 0.1, 0.07), (6, 2, 3, 5, 0.1, 0.04),
                          (4, 2, 5, 4, 0.2, 0.05), (3, 1, 4, 6, 0.5, 0.3)])
def test_loss_and_its_gradients_match_algorithm_1_per_sample(crops: int, globals_: int, b: int, k: int, tps: float,
                                                             tpt: float) -> None:
    student, teacher, center = _outputs(crops, globals_, b, k, seed=crops * 10 + b)
    loss = dino_loss(student, teacher, center, tps, tpt)
    torch.testing.assert_close(loss.double(), paper_loss(student, teacher, center, tps, tpt), rtol=1e-5, atol=1e-6)
    loss.backward()
    for s, expected in zip(student, paper_grad(student, teacher, center, tps, tpt), strict=True):
        grad = torch.zeros_like(expected) if s.grad is None else s.grad.double()  # None: the only teacher crop
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)
    assert all(t.grad is None for t in teacher)  # the teacher side is detached


def test_a_varying_centre_changes_the_loss_and_a_constant_one_does_not() -> None:
    student, teacher, center = _outputs(2, 2, 8, 5, seed=0)
    plain = dino_loss(student, teacher, torch.zeros(1, 5), 0.1, 0.04)
    assert not torch.allclose(dino_loss(student, teacher, center, 0.1, 0.04), plain)
    # the centre is subtracted from every teacher row before the softmax: a constant centre changes nothing
    torch.testing.assert_close(dino_loss(student, teacher, torch.full((1, 5), 2.0), 0.1, 0.04), plain)


def test_loss_computes_in_float32_under_bf16_autocast_and_rejects_bad_arguments() -> None:
    student, teacher, center = _outputs(3, 2, 4, 5, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dino_loss([s.bfloat16() for s in student], teacher, center, 0.1, 0.04).dtype == torch.float32
    with pytest.raises(ValueError, match="student_temp must be > 0"):
        dino_loss(student, teacher, center, 0.0, 0.04)
    with pytest.raises(ValueError, match="teacher_temp must be > 0"):
        dino_loss(student, teacher, center, 0.1, float("nan"))
    with pytest.raises(ValueError, match="need >= 2 student crops"):
        dino_loss(student[:1], teacher[:1], center, 0.1, 0.04)
    with pytest.raises(ValueError, match="must be \\(B, K\\) alike and the centre \\(1, K\\)"):
        dino_loss(student, teacher, torch.zeros(1, 4), 0.1, 0.04)


@pytest.mark.parametrize("momentum", [0.9, 0.0, 0.5])
def test_centre_update_is_the_momentum_average_of_the_teachers_batch_mean(momentum: float) -> None:
    g = torch.Generator().manual_seed(2)
    center, teacher = torch.randn(1, K, generator=g), torch.randn(10, K, generator=g, dtype=torch.float64)
    expected = momentum * center.double() + (1 - momentum) * teacher.mean(dim=0, keepdim=True)  # Algorithm 1
    torch.testing.assert_close(updated_center(center, teacher.float(), momentum).double(), expected,
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="center momentum must be in \\[0, 1\\]"):
        updated_center(center, teacher, 1.5)


# --- schedules ----------------------------------------------------------------------------------------------


def _cfg(**overrides: Any) -> Config:
    """DINO's digits recipe on a tiny ResNet: 2 global 8 px crops, 2 local 4 px crops, 12 outputs."""
    return recipe("digits", "dino").replace({
        "data.image_size": 8, "model.widths": [8, 16], "model.blocks": [1, 1], "model.proj_hidden_dim": 16,
        "model.proj_dim": 8, "multicrop.small_crops": 2, "multicrop.small_size": 4, "dino.out_dim": 12,
        "train.batch_size": 8, "train.workers": 1, **overrides,
    })


@pytest.mark.parametrize(("warmup", "epochs"), [(30, 100), (5, 25), (1, 4), (0, 3)])
def test_teacher_temperature_is_the_references_linspace_then_constant(warmup: int, epochs: int) -> None:
    cfg = _cfg(**{"dino.warmup_teacher_temp_epochs": warmup, "train.epochs": epochs})
    d = cfg.get(DINOConfig)
    reference = np.concatenate((np.linspace(d.warmup_teacher_temp, d.teacher_temp, warmup),
                                np.ones(epochs - warmup) * d.teacher_temp))  # main_dino.py's DINOLoss
    ours = [teacher_temperature(epoch, cfg) for epoch in range(1, epochs + 1)]  # our epochs count from 1
    np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-15)
    assert teacher_temperature(epochs + 5, cfg) == d.teacher_temp  # beyond the warm-up


def cosine_scheduler(base: float, final: float, epochs: int, per_epoch: int) -> np.ndarray:
    """main_dino.py's ``utils.cosine_scheduler`` without warm-up, as its weight decay and momentum use it."""
    iters = np.arange(epochs * per_epoch)
    return final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))


def test_weight_decay_and_teacher_momentum_follow_the_references_cosine_schedules() -> None:
    cfg = _cfg(**{"optim.weight_decay": 0.04, "dino.weight_decay_end": 0.4, "dino.momentum_teacher": 0.996})
    epochs, per_epoch = 4, 7
    total = epochs * per_epoch
    wd = [DINO().weight_decay(it, total, cfg) for it in range(total)]  # before step it+1, 0-based as the lr
    np.testing.assert_allclose(wd, cosine_scheduler(0.04, 0.4, epochs, per_epoch), rtol=1e-12)
    m = [teacher_momentum(step, total, cfg) for step in range(1, total + 1)]  # after step `step`, from 1
    np.testing.assert_allclose(m, cosine_scheduler(0.996, 1.0, epochs, per_epoch), rtol=1e-12)
    assert wd[0] == pytest.approx(0.04) and m[0] == pytest.approx(0.996)


# --- the head and the model ---------------------------------------------------------------------------------


def test_weight_norm_linear_is_torchs_weight_norm_with_its_parameter_names() -> None:
    torch.manual_seed(0)
    ours = WeightNormLinear(5, 7, norm=False).double()  # float64: the two compute in different orders
    with torch.no_grad():
        ours.weight_g.uniform_(0.5, 2.0)
    theirs = nn.utils.parametrizations.weight_norm(nn.Linear(5, 7, bias=False)).double()  # dim 0, as DINO's
    with torch.no_grad():
        theirs.parametrizations.weight.original0.copy_(ours.weight_g)  # g (K x 1)
        theirs.parametrizations.weight.original1.copy_(ours.weight_v)  # v (K x D)
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))
    ours(x).square().sum().backward()
    theirs(x).square().sum().backward()
    torch.testing.assert_close(ours.weight_g.grad, theirs.parametrizations.weight.original0.grad)
    torch.testing.assert_close(ours.weight_v.grad, theirs.parametrizations.weight.original1.grad)
    assert [n for n, _ in ours.named_parameters()] == ["weight_v", "weight_g"]


@pytest.mark.parametrize(("layers", "use_bn", "norm_last_layer"), [(3, False, True), (2, True, False)])
def test_head_is_an_mlp_to_a_normalised_bottleneck_and_a_weight_normalised_last_layer(
        layers: int, use_bn: bool, norm_last_layer: bool) -> None:
    torch.manual_seed(0)
    head = DINOHead(10, 12, hidden_dim=16, bottleneck_dim=4, layers=layers, use_bn=use_bn,
                    norm_last_layer=norm_last_layer)
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 16), *[(16, 16)] * (layers - 2), (16, 4)]
    assert sum(isinstance(m, nn.GELU) for m in head.mlp) == layers - 1
    assert any(isinstance(m, nn.BatchNorm1d) for m in head.mlp) == use_bn
    assert all(m.bias is not None and not m.bias.any() for m in linears)
    assert float(linears[0].weight.detach().std()) == pytest.approx(0.02, rel=0.3)  # truncated normal, std 0.02
    assert head.last_layer.weight_g.requires_grad == (not norm_last_layer)
    torch.testing.assert_close(head.last_layer.weight_g, torch.ones(12, 1))
    h = torch.randn(6, 10)
    z = nn.functional.normalize(head.mlp(h), dim=1)  # the bottleneck, unit rows
    w = head.last_layer.weight_v / head.last_layer.weight_v.norm(dim=1, keepdim=True)  # unit prototypes (g = 1)
    torch.testing.assert_close(head(h), z @ w.T)


def _build(cfg: Config, seed: int = 0) -> DINOModel:
    torch.manual_seed(seed)
    model = DINO().build_model(cfg)
    assert isinstance(model, DINOModel)
    return model.train()


def _net(model: nn.Module, forward: Any = None) -> Net:
    return Net(forward=forward or model, core=model, image=normalize, autocast=nullcontext)


def _batch(n: int, cfg: Config, seed: int = 0) -> dict[str, Tensor]:
    images = torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return DINO().views(images, cfg, torch.Generator().manual_seed(seed))


def _optimizer(model: DINOModel, cfg: Config) -> torch.optim.Optimizer:
    optimizer = build_optimizer("adamw", DINO().param_groups(model, cfg), lr=1e-2, weight_decay=cfg.optim.weight_decay)
    return optimizer


def _step(model: DINOModel, optimizer: torch.optim.Optimizer, cfg: Config, step: int, total: int,
          batch: dict[str, Tensor]) -> Tensor:
    """One step as the Trainer takes it: weight decay, loss, backward, the hook, the step, the momentum update."""
    set_weight_decay(optimizer, DINO().weight_decay(step - 1, total, cfg))
    loss = DINO().loss(_net(model), batch, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    DINO().before_optimizer_step(model, step, cfg)
    optimizer.step()
    DINO().after_step(model, step, total, cfg)
    return loss.detach()


def test_views_are_global_and_local_crops_of_their_own_sizes() -> None:
    views = _batch(5, _cfg())
    assert {k: tuple(v.shape) for k, v in views.items()} == {
        "view0": (5, 3, 8, 8), "view1": (5, 3, 8, 8), "small0": (5, 3, 4, 4), "small1": (5, 3, 4, 4)}
    assert all(v.dtype == torch.uint8 for v in views.values())


def test_teacher_starts_as_a_frozen_copy_and_features_are_the_teachers_backbone() -> None:
    cfg = _cfg()
    model = _build(cfg)
    for s, t in zip(model.student_parameters(), model.teacher_parameters(), strict=True):
        assert torch.equal(s, t) and s is not t and not t.requires_grad
    assert model.get_submodule("encoder") is model.encoder
    grouped = {id(p) for g in DINO().param_groups(model, cfg) for p in g["params"]}
    assert grouped == {id(p) for p in model.student_parameters() if p.requires_grad}  # the student only
    optimizer = _optimizer(model, cfg)
    DINO().before_epoch(model, 2, cfg)  # after the last layer's freeze
    _step(model, optimizer, cfg, 1, 10, _batch(8, cfg))
    model.eval()
    x = normalize(_batch(4, cfg, 1)["view0"])
    assert torch.equal(model.features(x), model.encoder(x)) and not torch.equal(model.features(x), model.student(x))


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_teacher_is_the_momentum_average_of_the_student_after_real_optimizer_steps(norm_last_layer: bool) -> None:
    cfg = _cfg(**{"dino.momentum_teacher": 0.9, "dino.norm_last_layer": norm_last_layer})
    model, total = _build(cfg), 4
    optimizer = _optimizer(model, cfg)
    DINO().before_epoch(model, 2, cfg)
    for step in range(1, total + 1):
        teacher_before = [p.detach().clone() for p in model.teacher_parameters()]
        loss = DINO().loss(_net(model), _batch(8, cfg, step), cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        DINO().before_optimizer_step(model, step, cfg)
        optimizer.step()
        assert all(p.grad is None for p in model.teacher_parameters())  # no gradient reaches the teacher
        assert all(torch.equal(p, b) for p, b in zip(model.teacher_parameters(), teacher_before, strict=True))
        student = [p.detach().clone() for p in model.student_parameters()]
        DINO().after_step(model, step, total, cfg)
        m = 1 - 0.1 * (math.cos(math.pi * (step - 1) / total) + 1) / 2  # cosine from 0.9 to 1
        assert teacher_momentum(step, total, cfg) == pytest.approx(m, abs=1e-12)
        for t, t0, s in zip(model.teacher_parameters(), teacher_before, student, strict=True):
            torch.testing.assert_close(t, m * t0 + (1 - m) * s, rtol=1e-6, atol=1e-7)
    weight_g = model.student_head.last_layer.weight_g
    assert torch.equal(weight_g, torch.ones_like(weight_g)) == norm_last_layer  # fixed at 1, or trained


def test_the_loss_updates_the_centre_from_the_teachers_global_crops() -> None:
    cfg = _cfg(**{"dino.center_momentum": 0.9})
    model = _build(cfg)
    model.center.fill_(0.5)
    batch = _batch(8, cfg)
    crops = normalize(torch.cat([batch["view0"], batch["view1"]]))  # the 2 global crops only
    with torch.no_grad():
        teacher = model.teacher(crops)  # 2B x K
    expected = 0.9 * 0.5 + 0.1 * teacher.mean(dim=0, keepdim=True)
    DINO().loss(_net(model), batch, cfg)
    torch.testing.assert_close(model.center, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("freeze", "epoch", "frozen"), [(1, 1, True), (1, 2, False), (2, 2, True), (0, 1, False)])
def test_the_last_layers_gradients_are_dropped_in_the_first_epochs_only(freeze: int, epoch: int, frozen: bool) -> None:
    cfg = _cfg(**{"dino.freeze_last_layer": freeze, "dino.norm_last_layer": False, "dino.clip_grad": 0.0})
    model = _build(cfg)
    optimizer = _optimizer(model, cfg)
    DINO().before_epoch(model, epoch, cfg)
    last = [p.detach().clone() for p in model.student_head.last_layer.parameters()]
    loss = DINO().loss(_net(model), _batch(8, cfg), cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    assert all(p.grad is not None for p in model.student_head.last_layer.parameters())
    DINO().before_optimizer_step(model, 1, cfg)
    assert all((p.grad is None) == frozen for p in model.student_head.last_layer.parameters())
    assert all(p.grad is not None for p in model.student_head.mlp.parameters())  # the rest trains from the start
    optimizer.step()
    moved = [not torch.equal(p, b) for p, b in zip(model.student_head.last_layer.parameters(), last, strict=True)]
    assert moved == [not frozen, not frozen]  # frozen: no step and no decay


def test_each_gradient_is_clipped_on_its_own_as_the_references_clip_gradients() -> None:
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2, 2))
    a.grad, b.grad = torch.tensor([3.0, 4.0, 0.0]), torch.full((2, 2), 0.1)  # norms 5 and 0.2
    clip_each_gradient([a, b], 3.0)
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0, 0.0]) * 3.0 / (5.0 + 1e-6))  # scaled to ~3
    torch.testing.assert_close(b.grad, torch.full((2, 2), 0.1))  # shorter than the limit: untouched


def test_before_optimizer_step_clips_the_students_gradients_with_dino_clip_grad() -> None:
    cfg = _cfg(**{"dino.clip_grad": 1e-3, "dino.freeze_last_layer": 0})
    model = _build(cfg)
    DINO().loss(_net(model), _batch(8, cfg), cfg).backward()
    assert max(float(p.grad.norm()) for p in model.student_parameters() if p.grad is not None) > 1e-3
    DINO().before_optimizer_step(model, 1, cfg)
    assert all(float(p.grad.norm()) <= 1e-3 + 1e-9 for p in model.student_parameters() if p.grad is not None)


def test_param_groups_put_the_decayed_weights_on_the_schedule_and_biases_and_norms_off_it() -> None:
    cfg = _cfg(**{"optim.weight_decay": 0.04, "dino.weight_decay_end": 0.4})
    model = _build(cfg)
    optimizer = _optimizer(model, cfg)
    set_weight_decay(optimizer, DINO().weight_decay(10, 20, cfg))  # half way: (0.04 + 0.4) / 2
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == pytest.approx(0.22) and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])


def test_checkpoint_round_trip_carries_teacher_and_centre_and_continues_identically() -> None:
    cfg = _cfg()
    model = _build(cfg)
    optimizer = _optimizer(model, cfg)
    DINO().before_epoch(model, 2, cfg)
    for step in (1, 2):
        _step(model, optimizer, cfg, step, 4, _batch(8, cfg, step))
    state = model.state_dict()
    assert state["center"].any() and any(k.startswith("encoder.") for k in state)
    assert any(k.startswith("teacher_head.") for k in state) and "teacher_head.last_layer.weight_v" in state
    assert not torch.equal(state["teacher_head.last_layer.weight_v"], state["student_head.last_layer.weight_v"])
    buffer = io.BytesIO()
    torch.save({"model": state, "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    fresh = _build(cfg, seed=123)
    fresh.load_state_dict(saved["model"])
    fresh_optimizer = _optimizer(fresh, cfg)
    fresh_optimizer.load_state_dict(saved["optimizer"])
    DINO().before_epoch(fresh, 2, cfg)
    for a, opt in ((model, optimizer), (fresh, fresh_optimizer)):  # the same third step from either
        _step(a, opt, cfg, 3, 4, _batch(8, cfg, 3))
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


# --- the ViT and its pictures ----------------------------------------------------------------------------------


def _vit_cfg(**overrides: Any) -> Config:
    return _cfg(**{"model.arch": "vit", "model.patch_size": 2, "model.vit_dim": 16, "model.vit_depth": 2,
                   "model.vit_heads": 2, **overrides})


def test_vit_backbone_is_read_at_its_class_token() -> None:
    model = _build(_vit_cfg()).eval()
    assert isinstance(model.encoder, ViT) and model.encoder.pool == "cls"
    x = normalize(_batch(3, _vit_cfg())["view0"])
    torch.testing.assert_close(model.features(x), model.encoder.transform(model.encoder.embed(x))[:, 0])
    assert model.features(x).shape == (3, 16)
    DINO().loss(_net(model.train()), _batch(8, _vit_cfg()), _vit_cfg()).backward()  # local crops of 4 px too
    assert model.student.cls_token.grad is not None and model.student.cls_token.grad.any()


def test_block_attention_is_the_weights_its_fused_forward_applies() -> None:
    torch.manual_seed(0)
    vit = ViT(8, 2, 16, 2, 4, pool="cls")
    block = vit.blocks[0]
    t = vit.with_cls(vit.embed(torch.randn(2, 3, 8, 8)))  # 2 x 17 x 16
    attn = block.attention(t)  # 2 x 4 x 17 x 17
    torch.testing.assert_close(attn.sum(dim=-1), torch.ones(2, 4, 17))
    _, _, v = block.qkv_heads(t)
    mixed = (attn @ v).transpose(1, 2).reshape(2, 17, 16)
    expected = t + block.proj(mixed)
    torch.testing.assert_close(expected + block.mlp(block.norm2(expected)), block(t), rtol=1e-5, atol=1e-6)


def test_cls_attention_maps_cover_the_image_per_head() -> None:
    torch.manual_seed(0)
    vit = ViT(8, 2, 16, 2, 4, pool="cls").eval()
    x = torch.randn(3, 3, 8, 8)
    maps = cls_attention(vit, x)
    assert maps.shape == (3, 4, 8, 8)
    last = vit.last_attention(x)  # 3 x 4 x 17 x 17
    # each 2 x 2 patch holds its patch's weight; the weights and the class token's own sum to 1
    torch.testing.assert_close(maps.sum(dim=(2, 3)) / 4 + last[:, :, 0, 0], torch.ones(3, 4))


def test_pictures_draw_the_teachers_attention_with_the_vit_and_nothing_with_a_resnet(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)  # held-out images may be larger
    vit_cfg = _vit_cfg()
    paths = DINO().pictures(_build(vit_cfg).eval(), images, vit_cfg, str(tmp_path))
    assert paths == [os.path.join(tmp_path, "dino_attention.png")] and os.path.getsize(paths[0]) > 1000
    assert DINO().pictures(_build(_cfg()).eval(), images, _cfg(), str(tmp_path)) == []


# --- config, recipes, the table ---------------------------------------------------------------------------------


def test_config_rules_name_the_field_and_the_fix() -> None:
    with pytest.raises(ConfigError, match="multicrop.large_crops must be >= 2 for method 'dino'"):
        _cfg(**{"multicrop.large_crops": 1})
    with pytest.raises(ConfigError, match=r"multicrop.small_size must be <= data.image_size \(8\)"):
        _cfg(**{"multicrop.small_size": 12})
    with pytest.raises(ConfigError, match=r"multicrop.small_size must be a multiple of model.patch_size \(4\)"):
        _vit_cfg(**{"model.patch_size": 4, "multicrop.small_size": 6})
    with pytest.raises(ConfigError, match="model.patch_size must be a divisor of data.image_size"):
        _vit_cfg(**{"model.patch_size": 3})
    for field, value, rule in (("student_temp", 0.0, "> 0"), ("out_dim", 1, ">= 2"),
                               ("momentum_teacher", 1.5, "in \\[0, 1\\]"), ("clip_grad", -1.0, ">= 0"),
                               ("warmup_teacher_temp_epochs", -1, ">= 0"), ("center_momentum", 1.0, "in \\[0, 1\\)")):
        with pytest.raises(ConfigError, match=f"dino.{field} must be {rule}"):
            _cfg(**{f"dino.{field}": value})


def test_registered_and_recipes_validate() -> None:
    assert isinstance(METHODS["dino"], DINO)
    for name in ("digits", "cifar10"):
        cfg = recipe(name, "dino")
        assert Config.from_dict(cfg.to_dict()) == cfg and cfg.method == "dino"
        assert cfg.get(DINOConfig).student_temp == 0.1 and cfg.get(MultiCropConfig).large_crops == 2


def test_cifar10_recipe_is_solo_learns() -> None:
    cfg = cifar10()
    d = cfg.get(DINOConfig)
    assert (cfg.model.arch, cfg.model.cifar_stem, cfg.model.proj_hidden_dim, cfg.model.proj_dim,
            cfg.model.proj_layers) == ("resnet18", True, 2048, 256, 3)
    assert (d.out_dim, d.momentum_teacher, d.teacher_temp, d.warmup_teacher_temp_epochs, d.clip_grad,
            d.freeze_last_layer) == (4096, 0.9995, 0.07, 0, 0.0, 1)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.eta, cfg.optim.weight_decay, d.weight_decay_end) == (
        "lars", 0.3, 0.02, 1e-6, 1e-6)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.optim.warmup_epochs) == (256, 1000, 10)
    assert cfg.get(MultiCropConfig).small_crops == 0 and cfg.data.image_size == 32


def test_digits_recipe_takes_a_step() -> None:
    cfg = digits()
    model = _build(cfg)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 16, 16), generator=g, dtype=torch.uint8)
    DINO().before_epoch(model, 1, cfg)
    loss = _step(model, _optimizer(model, cfg), cfg, 1, 10, DINO().views(images, cfg, g))
    assert torch.isfinite(loss) and 0.0 < loss.item() < 2 * math.log(cfg.get(DINOConfig).out_dim)


# --- two processes ----------------------------------------------------------------------------------------------


def _tiny_model(kind: str) -> DINOModel:
    """No BatchNorm, so that two workers' forwards equal one process's on the whole batch."""
    torch.manual_seed(3)
    if kind == "vit":
        backbone: nn.Module = ViT(8, 2, 8, 1, 2, pool="cls")
        width = 8
    else:
        backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        width = 8
    return DINOModel(backbone, DINOHead(width, K, hidden_dim=12, bottleneck_dim=4, layers=3), K)


def _global() -> tuple[dict[str, Tensor], Config]:
    cfg = _cfg(**{"train.batch_size": WORLD * N_PER_RANK, "dino.out_dim": K, "dino.freeze_last_layer": 0})
    return _batch(WORLD * N_PER_RANK, cfg, seed=5), cfg


def _one_step(kind: str, rows: slice, ddp: bool) -> dict[str, Any]:
    """One DINO step on ``rows`` of the global batch, from a centre of 0.1 (so it matters in the loss)."""
    batch, cfg = _global()
    model = _tiny_model(kind)
    model.center.fill_(0.1)
    forward = DistributedDataParallel(model) if ddp else model
    optimizer = build_optimizer("sgd", DINO().param_groups(model, cfg), lr=0.5, weight_decay=0.0)
    loss = DINO().loss(_net(model, forward), {k: v[rows] for k, v in batch.items()}, cfg)
    loss.backward()
    grads = [p.grad.clone() for p in model.student_parameters() if p.grad is not None]
    optimizer.step()
    DINO().after_step(model, 1, 10, cfg)
    return {"loss": loss.detach(), "center": model.center.clone(), "grads": grads,
            "teacher": [p.detach().clone() for p in model.teacher_parameters()]}


def _rank(rank: int) -> dict[str, Any]:
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    return {kind: _one_step(kind, rows, ddp=True) for kind in ("conv", "vit")}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_ranks(_rank, tmp_path_factory.mktemp("dino_two_ranks"), WORLD)


@pytest.mark.parametrize("kind", ["conv", "vit"])
def test_two_process_loss_centre_and_ddp_gradients_equal_one_process(kind: str, ranks: list[dict[str, Any]]) -> None:
    whole = _one_step(kind, slice(None), ddp=False)
    mine = [r[kind] for r in ranks]
    torch.testing.assert_close(sum(r["loss"] for r in mine) / WORLD, whole["loss"], rtol=1e-5, atol=1e-6)
    for rank in mine:  # the centre of the global batch, and the DDP-averaged gradients of one process on all rows
        torch.testing.assert_close(rank["center"], whole["center"], rtol=1e-6, atol=1e-7)
        assert len(rank["grads"]) == len(whole["grads"])
        for a, b in zip(rank["grads"], whole["grads"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not torch.equal(mine[0]["loss"], mine[1]["loss"])  # each rank scored its own rows
    for a, b in zip(mine[0]["teacher"], mine[1]["teacher"], strict=True):  # the teacher is the same on both
        assert torch.equal(a, b)


def test_one_process_centre_is_not_a_per_worker_mean() -> None:
    """The check above can fail: a centre from one worker's rows differs from the global batch's."""
    half = _one_step("conv", slice(0, N_PER_RANK), ddp=False)
    whole = _one_step("conv", slice(None), ddp=False)
    assert not torch.allclose(half["center"], whole["center"])


def test_model_state_has_no_duplicate_teacher_alias() -> None:
    """``encoder`` is the teacher's backbone itself, not a second name for it: one set of keys per network."""
    model = _build(_cfg())
    names = [n for n, _ in model.named_modules() if n.count(".") == 0 and n]
    assert names == ["student", "student_head", "encoder", "teacher_head"]
