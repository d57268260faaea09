"""DINO's loss and centre (Caron et al. 2021, arXiv:2104.14294, Algorithm 1 and Eq. 2-4; facebookresearch/dino
main_dino.py ``DINOLoss``).

Batch size, crop count and world size are read from the tensors and from ``torch.distributed`` on every call,
never from config; one process needs no process group.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor

from workloads import dist
from workloads.dist import autocast_disabled


def dino_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], center: Tensor, student_temp: float,
              teacher_temp: float) -> Tensor:
    """The mean over every (teacher crop i, student crop v ≠ i) pair of
    −mean_b Σ_k softmax((t_i[b] − c) / τ_t)[k] · log softmax(s_v[b] / τ_s)[k].

    ``student`` holds every crop's (B, K) outputs, the global crops first; ``teacher`` the G global crops'
    (B, K), in the same order as the student's first G, so crop i of the teacher skips crop i of the student;
    ``center`` (1, K). The teacher side is centred, sharpened and gets no gradient. Averaged over this worker's
    rows: with DDP averaging the gradients, W workers train as one process on all rows (the centre being the
    same everywhere). Float32 at least, even under autocast.
    """
    for name, value in (("student_temp", student_temp), ("teacher_temp", teacher_temp)):
        if not value > 0:  # also rejects NaN
            raise ValueError(f"{name} must be > 0, got {value}; DINO uses 0.1 (student) and 0.04-0.07 (teacher)")
    if len(student) < 2 or not 1 <= len(teacher) <= len(student):
        raise ValueError(f"need >= 2 student crops and 1..crops teacher crops; got {len(student)} and {len(teacher)}")
    shape = student[0].shape
    if len(shape) != 2 or any(t.shape != shape for t in [*student, *teacher]) or center.shape != (1, shape[1]):
        raise ValueError(f"every crop's outputs must be (B, K) alike and the centre (1, K); got student "
                         f"{[tuple(s.shape) for s in student]}, teacher {[tuple(t.shape) for t in teacher]}, "
                         f"centre {tuple(center.shape)}")
    dtype = torch.promote_types(student[0].dtype, torch.float32)
    with autocast_disabled(student[0].device.type):
        c = center.detach().to(dtype)
        q = [F.softmax((t.detach().to(dtype) - c) / teacher_temp, dim=1) for t in teacher]  # G x (B x K)
        log_p = [F.log_softmax(s.to(dtype) / student_temp, dim=1) for s in student]  # V x (B x K)
        terms = [-(qi * log_p[v]).sum(dim=1).mean() for i, qi in enumerate(q) for v in range(len(log_p)) if v != i]
        return torch.stack(terms).mean()


@torch.no_grad()
def updated_center(center: Tensor, teacher: Tensor, momentum: float) -> Tensor:
    """m·c + (1 − m)·(the mean of the teacher's outputs (N, K) over the global batch): each worker's row sums and
    row count are all-reduced together, so W workers give exactly the centre one process computes on all rows
    (``DINOLoss.update_center``). Float32 at least."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"center momentum must be in [0, 1]; got {momentum}. DINO uses 0.9")
    dtype = torch.promote_types(center.dtype, torch.float32)
    rows = torch.full((1, 1), float(teacher.shape[0]), dtype=dtype, device=teacher.device)
    total = torch.cat([teacher.detach().to(dtype).sum(dim=0, keepdim=True), rows], dim=1)  # 1 x K+1
    if dist.world_size() > 1:
        tdist.all_reduce(total)
    batch_center = total[:, :-1] / total[:, -1:]  # 1 x K
    return center.to(dtype) * momentum + batch_center * (1.0 - momentum)
