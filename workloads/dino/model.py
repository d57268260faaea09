"""DINO's networks (Caron et al. 2021, arXiv:2104.14294; facebookresearch/dino vision_transformer.py ``DINOHead``,
utils.py ``MultiCropWrapper``, main_dino.py): the student (backbone + DINO head), the teacher (a momentum copy of
both that no gradient reaches) and the centre of the teacher's outputs. Knows nothing of the loss or the loop.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workloads.momentum import ema_update, momentum_copy


class WeightNormLinear(nn.Module):
    """A Linear without bias whose row k is g_k · v_k / ‖v_k‖ (Salimans & Kingma 2016): what
    ``nn.utils.weight_norm(nn.Linear(D, K, bias=False))`` computes (dim 0), with its parameter names
    ``weight_g`` (K, 1) and ``weight_v`` (K, D), so the reference's checkpoints' keys read the same.

    ``weight_g`` starts at 1 (the reference's ``weight_g.data.fill_(1)``); frozen there (``norm_last_layer``),
    every output is the cosine between the input and a prototype v_k, times ‖input‖.
    """

    def __init__(self, in_dim: int, out_dim: int, norm: bool = True) -> None:
        super().__init__()
        linear = nn.Linear(in_dim, out_dim, bias=False)  # torch's default initialisation, as the reference's v
        self.weight_v = nn.Parameter(linear.weight.detach().clone())  # K x D
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm)  # K x 1

    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)  # K x D

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight())  # N x K


class DINOHead(nn.Module):
    """MLP (Linear → [BatchNorm] → GELU) × (layers − 1) → Linear to the bottleneck, L2 normalisation, then the
    weight-normalised last layer to ``out_dim`` (DINO §3.1 and ``DINOHead``: hidden 2048, 3 layers, bottleneck
    256, the MLP's Linears truncated-normal with std 0.02 and zero biases)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, use_bn: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim),
                            ("bottleneck_dim", bottleneck_dim), ("layers", layers)):
            if value < 1:
                raise ValueError(f"DINOHead {name} must be >= 1; got {name}={value}.")
        mlp: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mlp += [nn.Linear(dim, hidden_dim), *([nn.BatchNorm1d(hidden_dim)] if use_bn else []), nn.GELU()]
            dim = hidden_dim
        mlp.append(nn.Linear(dim, bottleneck_dim))
        self.mlp = nn.Sequential(*mlp)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, norm=norm_last_layer)

    def forward(self, h: Tensor) -> Tensor:
        z = F.normalize(self.mlp(h), dim=-1)  # N x bottleneck, unit rows
        return self.last_layer(z)  # N x K


class DINOModel(nn.Module):
    """Student (``student`` backbone + ``student_head``), teacher (``encoder`` + ``teacher_head``) and ``center``.

    ``forward(*crops)`` is the student's output (N, K) on every crop: each argument is one resolution's crops
    stacked (the global crops, then the local ones); the backbone runs once per resolution and the head once
    on all (the reference's ``MultiCropWrapper``), so DDP sees one forward per step. ``teacher`` is the same
    without gradient. The teacher starts as a copy of the student and moves only by ``momentum_update``; it is
    the network DINO evaluates, so ``encoder`` (kNN, linear probe, the exported model) is the teacher's
    backbone. ``center`` (1, K) is a buffer, so the teacher, the centre and the student are all in the state
    dict, and checkpoints carry them. ``epoch`` is the epoch in progress, set by the method before each epoch.
    """

    center: Tensor

    def __init__(self, backbone: nn.Module, head: DINOHead, out_dim: int) -> None:
        super().__init__()
        self.student = backbone
        self.student_head = head
        # the teacher = the student at initialisation (main_dino.py loads the student's state dict into it)
        self.encoder = momentum_copy(backbone)
        self.teacher_head = momentum_copy(head)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.epoch = 1

    def student_parameters(self) -> list[nn.Parameter]:
        return [*self.student.parameters(), *self.student_head.parameters()]

    def teacher_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.teacher_head.parameters()]

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # N x F, the teacher's backbone

    def forward(self, *crops: Tensor) -> Tensor:
        h = torch.cat([self.student(x) for x in crops])  # N x F, N = all crops of all resolutions
        return self.student_head(h)  # N x K

    @torch.no_grad()
    def teacher(self, *crops: Tensor) -> Tensor:
        """The teacher's output (N, K), no gradient. BatchNorm, if any, uses the batch's statistics while
        training, as the reference's teacher (never put in eval mode)."""
        h = torch.cat([self.encoder(x) for x in crops])  # N x F
        return self.teacher_head(h)  # N x K

    def momentum_update(self, m: float) -> None:
        """teacher ← m·teacher + (1 − m)·student on every parameter (the weight_g too), as main_dino.py's EMA;
        BatchNorm statistics stay the teacher's own."""
        ema_update(self.student_parameters(), self.teacher_parameters(), m)
