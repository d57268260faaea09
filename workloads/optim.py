"""Optimisers and learning-rate schedule for SimCLR pretraining.

LARS follows google-research/simclr `lars_optimizer.py` (classic momentum branch); the schedule is a plain
function of the step so a resumed run derives its learning rate from the step counter alone.
"""

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

OPTIMIZERS: tuple[str, ...] = ("lars", "sgd", "adamw")
LR_SCALING_RULES: tuple[str, ...] = ("linear", "sqrt", "none")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into weights (decayed, LARS-adapted) and biases + norm parameters
    (no decay, no LARS adaptation), as SimCLR does (`exclude_from_weight_decay=['batch_normalization',
    'bias']`). The split is by ndim: matrices and conv kernels have ndim > 1, biases and norm affines 1.
    Empty groups are dropped.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0; got weight_decay={weight_decay}.")
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) exactly as in google-research/simclr.

    Per parameter w with gradient g, in a group with learning rate lr:
        g ← g + wd·w                                   (skipped when the group has lars_exclude=True)
        trust = eta·‖w‖/‖g‖ if ‖w‖ > 0 and ‖g‖ > 0 else 1   (1 when lars_exclude=True)
        v ← momentum·v + lr·trust·g
        w ← w − v            (nesterov: w ← w − (momentum·v + lr·trust·g))
    Note lr multiplies inside the momentum buffer (classic momentum), unlike torch.optim.SGD; a group
    without a `lars_exclude` key is adapted and decayed.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
        nesterov: bool = False,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"LARS lr must be >= 0; got lr={lr}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS momentum must be in [0, 1); got momentum={momentum}.")
        if not weight_decay >= 0.0:
            raise ValueError(f"LARS weight_decay must be >= 0; got weight_decay={weight_decay}.")
        if not eta > 0.0:
            raise ValueError(f"LARS eta (trust coefficient) must be > 0; got eta={eta}. SimCLR uses 0.001.")
        if nesterov and momentum == 0.0:
            raise ValueError("LARS nesterov=True needs momentum > 0; set momentum=0.9 or nesterov=False.")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "nesterov": nesterov,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, eta = group["lr"], group["momentum"], group["eta"]
            weight_decay, exclude = group["weight_decay"], group["lars_exclude"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not exclude and weight_decay != 0.0:
                    grad = grad.add(p, alpha=weight_decay)
                scaled_lr = torch.as_tensor(lr, dtype=p.dtype, device=p.device)
                if not exclude:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    # tensor ops (no .item()) so the step never syncs with the device
                    trust = torch.where((w_norm > 0) & (g_norm > 0), eta * w_norm / g_norm, 1.0)
                    scaled_lr = scaled_lr * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v = state["momentum_buffer"]
                v.mul_(momentum).add_(scaled_lr * grad)  # v ← m·v + lr·trust·g
                if group["nesterov"]:
                    p.sub_(momentum * v + scaled_lr * grad)
                else:
                    p.sub_(v)
        return loss


def build_optimizer(
    name: str,
    model: nn.Module | list[dict[str, Any]],
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    eta: float = 0.001,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """LARS, SGD (momentum) or AdamW over `param_groups(model, weight_decay)`: biases and norm parameters
    get no weight decay in every optimiser, and no trust-ratio adaptation in LARS. A list of groups (a
    method's `param_groups`) is taken as it is."""
    groups = param_groups(model, weight_decay) if isinstance(model, nn.Module) else model
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"Unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float, final_lr: float = 0.0) -> float:
    """Learning rate at 0-based `step`: linear warmup, then cosine decay (SimCLR §B.1; Goyal et al. 2017).

    Warmup: base_lr·(step+1)/warmup_steps for step < warmup_steps, so the first step is not wasted at
    lr 0 and step warmup_steps−1 is exactly base_lr. Cosine: from that peak down to final_lr, reached
    exactly at step total_steps−1 (the last step that is run); steps past the end stay at final_lr.
    With warmup_steps == 0 the peak is notionally step −1, so step 0 is already slightly below base_lr;
    with warmup_steps == total_steps there is no decay and the last step runs at base_lr.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0; got total_steps={total_steps}.")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}]; got warmup_steps={warmup_steps}. "
            "Shorten the warmup or lengthen the run."
        )
    if step < 0:
        raise ValueError(f"step must be >= 0; got step={step}.")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps  # cosine spans steps warmup_steps-1 .. total_steps-1
    progress = min((step - warmup_steps + 1) / decay_steps, 1.0) if decay_steps > 0 else 1.0
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """``start`` at step 0 moving to ``end`` on a half cosine over ``total_steps`` steps (0-based ``step``):
    end + (start − end)·(1 + cos(π·step/total))/2, DINO's ``cosine_scheduler`` without warmup (its weight
    decay; facebookresearch/dino utils.py). Steps past the end stay at ``end``."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0; got total_steps={total_steps}.")
    if step < 0:
        raise ValueError(f"step must be >= 0; got step={step}.")
    progress = min(step / total_steps, 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Write ``weight_decay`` times the group's ``wd_scale`` into every group that has one (a method's
    ``param_groups`` opts a group into its weight-decay schedule so); groups without keep the decay they
    were built with."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0; got weight_decay={weight_decay}.")
    for group in optimizer.param_groups:
        if "wd_scale" in group:
            group["weight_decay"] = weight_decay * group["wd_scale"]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write `lr` into every param group (called once per step with `warmup_cosine`), times the group's
    `lr_scale` when a method's `param_groups` gave it one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def scaled_lr(base_lr: float, global_batch: int, rule: str) -> float:
    """Scale the base learning rate with the global batch size (SimCLR §B.1): "linear" lr·B/256,
    "sqrt" lr·√B (what SimCLR uses with LARS at large batch), "none" lr unchanged."""
    if global_batch <= 0:
        raise ValueError(f"global_batch must be > 0; got global_batch={global_batch}.")
    if rule == "linear":
        return base_lr * global_batch / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch)
    if rule == "none":
        return base_lr
    raise ValueError(f"Unknown lr scaling rule {rule!r}; choose one of {', '.join(LR_SCALING_RULES)}.")
