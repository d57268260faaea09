"""Scaling on paper: bytes each GPU moves per SimCLR step, NT-Xent gather against DDP's all-reduce.

Parameter, buffer and BatchNorm channel counts come from the code's own `build_simclr_model` on the
recipes' model settings (ResNet-18: the cifar10 recipe, CIFAR stem, 2-layer head 512→512→128;
ResNet-50: the imagenet recipe, 2-layer head 2048→2048→128). Per step and per rank, with P ranks,
ring algorithms, bytes sent by each rank (= bytes received); a float is 4 bytes because the loss
gathers float32 embeddings and DDP reduces float32 gradients even under bf16 autocast:

- all_reduce of M bytes: 2(P−1)/P · M (reduce-scatter then all-gather), 2(P−1) latency steps;
- all_gather of m bytes from each rank (M = P·m in total): (P−1) · m = (P−1)/P · M, P−1 steps;
- broadcast of M bytes (pipelined ring): ≈ M.

Traffic counted:
- NT-Xent forward: all_gather of z0 and of z1, N/P × D floats from each rank, each;
- NT-Xent backward: all_reduce of the gathered gradient, N × D floats, for z0 and for z1
  (workloads.dist._GatherWithGrad); a reduce-scatter would move half of it;
- DDP: all_reduce of every trainable parameter's gradient, plus the broadcast of the BatchNorm
  buffers from rank 0 that DDP (broadcast_buffers=True, as ray.train.torch.prepare_model leaves it)
  does at every forward;
- SyncBatchNorm (the imagenet recipe turns it on): per BN layer of C channels, forward all_gather of
  2C + 1 floats (mean, invstd, count) from each rank, backward all_reduce of 2C floats.

The "time at B GB/s" columns divide bytes by a per-GPU bus bandwidth (`--bandwidth-gbs`): a lower
bound that ignores latency and overlap with compute.

    .venv/bin/python bench/scaling.py [--json] [--quick] [--batch 4096] [--gpus 8 32 128]
"""

from __future__ import annotations

import argparse
from typing import Any

from common import emit_json, machine, say, table
from torch import nn

from orchestrator.train.model import build_model
from workloads.methods import recipe

FLOAT = 4  # bytes: float32 embeddings and gradients
MODELS = {"resnet18": "cifar10", "resnet50": "imagenet"}  # arch -> the recipe its settings come from


def model_counts(recipe_name: str) -> dict[str, Any]:
    cfg = recipe(recipe_name)
    model = build_model(cfg)
    bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return {
        "recipe": recipe_name,
        "arch": cfg.model.arch,
        "cifar_stem": cfg.model.cifar_stem,
        "proj_dim": cfg.model.proj_dim,
        "proj_hidden_dim": cfg.model.proj_hidden_dim or "features",
        "sync_bn": cfg.train.sync_bn,
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
        "bn_layers": len(bn),
        "bn_channels": sum(m.num_features for m in bn),
    }


def all_reduce(m: float, p: int) -> float:
    return 2 * (p - 1) / p * m


def all_gather(m_per_rank: float, p: int) -> float:
    return (p - 1) * m_per_rank


def step_bytes(counts: dict[str, Any], batch: int, p: int, sync_bn: bool) -> dict[str, float]:
    """Bytes each rank sends per step, by source."""
    d = counts["proj_dim"]
    n_local = batch / p
    view = batch * d * FLOAT  # one view's gathered embeddings (N x D)
    out = {
        "ntxent_forward": 2 * all_gather(n_local * d * FLOAT, p),
        "ntxent_backward": 2 * all_reduce(view, p),
        "ntxent_backward_if_reduce_scatter": 2 * (p - 1) / p * view,
        "ddp_grad_allreduce": all_reduce(counts["params"] * FLOAT, p),
        "ddp_buffer_broadcast": float(counts["buffer_bytes"]),
    }
    out["ntxent_total"] = out["ntxent_forward"] + out["ntxent_backward"]
    c, layers = counts["bn_channels"], counts["bn_layers"]
    out["syncbn"] = (all_gather((2 * c + layers) * FLOAT, p) + all_reduce(2 * c * FLOAT, p)) if sync_bn else 0.0
    out["ddp_total"] = out["ddp_grad_allreduce"] + out["ddp_buffer_broadcast"] + out["syncbn"]
    # per-worker logits: ours 2N/P local rows x 2N columns; the naive loss 2N x 2N on every worker
    out["logits_bytes_ours"] = 2 * n_local * 2 * batch * FLOAT
    out["logits_bytes_naive"] = (2 * batch) ** 2 * FLOAT
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="only ResNet-18, two GPU counts (smoke test)")
    p.add_argument("--batch", type=int, default=4096, help="global batch N (images)")
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 32, 128], help="ranks P")
    p.add_argument("--bandwidth-gbs", type=float, default=25.0,
                   help="per-GPU bus bandwidth in GB/s for the time columns (25: 200 Gb/s InfiniBand)")
    args = p.parse_args()
    archs = ["resnet18"] if args.quick else list(MODELS)
    gpus = args.gpus[:2] if args.quick else args.gpus

    mb = 1e6
    results: list[dict[str, Any]] = []
    rows = []
    for arch in archs:
        counts = model_counts(MODELS[arch])
        for gp in gpus:
            b = step_bytes(counts, args.batch, gp, counts["sync_bn"])
            ratio = b["ntxent_total"] / b["ddp_grad_allreduce"]
            rec = {"arch": arch, "gpus": gp, "batch": args.batch, "bytes": b,
                   "ratio_ntxent_over_ddp_grads": ratio,
                   "ratio_logits_naive_over_ours": b["logits_bytes_naive"] / b["logits_bytes_ours"]}
            results.append({**rec, "model": counts})
            ms = 1e3 / (args.bandwidth_gbs * 1e9)
            rows.append([arch, f"{counts['params'] / 1e6:.2f} M", gp, b["ntxent_forward"] / mb,
                         b["ntxent_backward"] / mb, b["ddp_grad_allreduce"] / mb,
                         b["ddp_buffer_broadcast"] / mb, b["syncbn"] / mb, f"{100 * ratio:.1f}%",
                         b["ntxent_total"] * ms, b["ddp_total"] * ms,
                         b["logits_bytes_ours"] / 2**20, b["logits_bytes_naive"] / 2**20])
    headers = ["model", "params", "GPUs", "NT-Xent fwd MB", "NT-Xent bwd MB", "DDP grads MB", "BN buffers MB",
               "SyncBN MB", "NT-Xent / DDP grads", f"NT-Xent ms @{args.bandwidth_gbs:g} GB/s",
               f"DDP+BN ms @{args.bandwidth_gbs:g} GB/s", "logits/worker ours MiB", "naive MiB"]
    say(args.json, f"Bytes sent per rank per step, global batch {args.batch}, ring collectives (MB = 1e6 bytes)",
        "", table(headers, rows), "")
    if args.json:
        emit_json({
            "benchmark": "scaling",
            "settings": {"batch": args.batch, "gpus": gpus, "archs": archs, "quick": args.quick,
                         "bandwidth_gbs": args.bandwidth_gbs, "float_bytes": FLOAT},
            "machine": machine(),
            "results": results,
        })


if __name__ == "__main__":
    main()
