"""DINO's config section, ``dino``. Defaults are facebookresearch/dino's (main_dino.py), the teacher temperature
as its README's and the paper's recommended run (0.04 warmed up to 0.07 over 30 epochs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from workloads.fields import check


@dataclass
class DINOConfig:
    """DINO (Caron et al. 2021, arXiv:2104.14294): the head's output, the teacher's momentum, temperatures and
    centre, and the schedules of main_dino.py. The head's MLP is ``model.proj_hidden_dim`` wide (DINO: 2048),
    ``model.proj_layers`` deep (3) to a ``model.proj_dim`` bottleneck (256)."""

    section: ClassVar[str] = "dino"
    out_dim: int = 65536  # K, the weight-normalised last layer's outputs (--out_dim)
    norm_last_layer: bool = True  # the last layer's weight_g fixed at 1: unit-norm prototypes (--norm_last_layer)
    use_bn_in_head: bool = False  # BatchNorm after each hidden Linear of the head (--use_bn_in_head)
    # teacher <- m·teacher + (1-m)·student after every step, m rising from this to 1 on a cosine over
    # all steps (--momentum_teacher; the reference suggests 0.9995 at batch 256)
    momentum_teacher: float = 0.996
    warmup_teacher_temp: float = 0.04  # the teacher's temperature in the first epoch (--warmup_teacher_temp)
    # after the warm-up (the paper, §3 and appendix; the README's run: --teacher_temp 0.07; main_dino.py's
    # argparse default is 0.04 without warm-up)
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 30  # linear from warmup_teacher_temp to teacher_temp over these epochs
    student_temp: float = 0.1  # (DINOLoss student_temp)
    center_momentum: float = 0.9  # centre <- c·centre + (1-c)·(the teacher's global batch mean) (DINOLoss)
    freeze_last_layer: int = 1  # epochs in which the last layer's gradients are dropped (--freeze_last_layer)
    # the weight decay moves from optim.weight_decay (0.04 in DINO) to this on a cosine (--weight_decay_end)
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # the largest gradient norm of each parameter, clipped one by one; 0: off (--clip_grad)

    def __post_init__(self) -> None:
        s = self.section
        check(self.out_dim >= 2, s, "out_dim", ">= 2 (DINO: 65536)", self.out_dim)
        check(0.0 <= self.momentum_teacher <= 1.0, s, "momentum_teacher", "in [0, 1] (DINO: 0.996)",
              self.momentum_teacher)
        for name in ("warmup_teacher_temp", "teacher_temp", "student_temp"):
            value = getattr(self, name)
            check(value > 0.0, s, name, "> 0", value)
        check(self.warmup_teacher_temp_epochs >= 0, s, "warmup_teacher_temp_epochs", ">= 0 (0: no warm-up)",
              self.warmup_teacher_temp_epochs)
        check(0.0 <= self.center_momentum < 1.0, s, "center_momentum", "in [0, 1) (DINO: 0.9)", self.center_momentum)
        check(self.freeze_last_layer >= 0, s, "freeze_last_layer", ">= 0 (0: never frozen)", self.freeze_last_layer)
        check(self.weight_decay_end >= 0.0, s, "weight_decay_end", ">= 0", self.weight_decay_end)
        check(self.clip_grad >= 0.0, s, "clip_grad", ">= 0 (0: off)", self.clip_grad)
