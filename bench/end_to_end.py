"""End to end: images/s of `simclr train` (Ray Data + Ray Train) against a plain PyTorch loop.

Same model, data, augmentation recipe, loss, optimiser and global batch on both sides: the digits
recipe (scikit-learn digits upscaled to 16 px, the 3-stage small ResNet 32/64/128, LARS, batch 128),
with no held-out split so that no evaluation runs between epochs.

- ours: the `simclr train` CLI in a subprocess, on a local Ray of `--cores` CPUs, with 1 and 2
  train workers. Figures are the trainer's own per-epoch `images_per_s` and `data_wait_frac`
  (rank 0: seconds blocked in `iter_torch_batches` / epoch seconds), read back from MLflow.
- baseline: one process, a torch DataLoader whose dataset applies `reference_augment` (torchvision v2,
  per image) twice per image, `num_workers` = cores − 1, persistent workers; the same per-epoch
  definitions. Two variants: torch's default intra-op threads in the training process (one per
  core: what a user gets, and oversubscribed next to the DataLoader worker) and the cores the
  DataLoader leaves (what Ray gives a one-CPU train worker). Ratios are against the faster one.

Epoch 1 pays start-up (Ray Data's pipeline, DataLoader workers) on both sides, so the figures are
medians over epochs 2…E. The baselines run first and last, around the Ray runs, and their figures are
the median over both runs, so that a load change during the bench hits both sides. "Wall s" is the
whole run (Ray start, MLflow, checkpoints, Ray stop for ours). The runs stop one epoch short of the
configured schedule (`train.stop_after_epoch`), so the final evaluation and model export, which are
not throughput, do not run.

With ``--shuffle-cost`` it measures instead what the per-epoch global shuffle costs: our
side alone, ``data.shuffle=true`` against ``false`` (every epoch in row-id order), alternated
on, off, off, on so that a drift in load hits both.

    .venv/bin/python bench/end_to_end.py [--json] [--quick] [--epochs 3] [--workers 1 2] [--shuffle-cost]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import emit_json, load_now, machine, median, say, table
from torch.utils.data import DataLoader, Dataset

from orchestrator import tracking
from orchestrator.data import sources
from orchestrator.data.rows import resize_square
from orchestrator.train.model import build_model
from workloads.augment.transform import reference_augment
from workloads.config import Config
from workloads.contrastive import LossConfig
from workloads.method import normalize
from workloads.methods import recipe
from workloads.optim import build_optimizer, scaled_lr, set_lr, warmup_cosine
from workloads.sections import AugConfig
from workloads.simclr.loss import nt_xent


def bench_config(epochs: int, quick: bool) -> Config:
    # stop_after_epoch < epochs: the run ends checkpointed but not complete, so the trainer skips the
    # final evaluation and the MLflow model export, which are not part of the throughput compared
    cfg = recipe("digits").replace({"data.holdout_fraction": 0.0, "train.epochs": epochs + 1,
                                    "train.stop_after_epoch": epochs, "train.log_every_steps": 1000,
                                    "train.checkpoint_every": 1000})
    if quick:  # a tiny model and a small batch: the smoke test checks plumbing, not speed
        cfg = cfg.replace({"model.widths": [8, 16], "model.blocks": [1, 1], "model.proj_dim": 16,
                           "train.batch_size": 64})
    return cfg


def cli_overrides(cfg: Config) -> list[str]:
    """--set arguments that reproduce cfg from the digits recipe."""
    keys = ("data.holdout_fraction", "train.epochs", "train.stop_after_epoch", "train.log_every_steps",
            "train.checkpoint_every",
            "model.widths", "model.blocks", "model.proj_dim", "train.batch_size")
    flat = cfg.to_flat_dict()
    out = []
    for k in keys:
        v = flat[k]
        out += ["--set", f"{k}={json.dumps(list(v)) if isinstance(v, list | tuple) else v}"]
    return out


# --- ours: the CLI ----------------------------------------------------------------------------------------


def run_ours(cfg: Config, workers: int, cores: int, tmp: Path, logs: bool, shuffle: bool = True) -> dict[str, Any]:
    simclr = Path(sys.executable).parent / "simclr"
    uri = f"sqlite:///{tmp}/mlflow.db"
    name = f"bench-e2e-w{workers}-{int(time.time())}"
    cmd = [str(simclr), "train", "--recipe", "digits", *cli_overrides(cfg), "--workers", str(workers),
           "--name", name, "--tracking-uri", uri, "--num-cpus", str(cores), "--object-store-mb", "500",
           "--set", f"train.storage_path={tmp / 'runs'}", "--set", f"data.shuffle={str(shuffle).lower()}", "--json"]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None if logs else subprocess.PIPE, text=True,
                          env=env, check=False, cwd=tmp)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"simclr train failed ({proc.returncode}):\n{(proc.stderr or '')[-4000:]}")
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    client = tracking.client_for(uri)
    epochs: dict[int, dict[str, float]] = {}
    for key in ("images_per_s", "data_wait_frac"):
        for m in client.get_metric_history(outcome["run_id"], key):
            epochs.setdefault(m.step, {})[key] = m.value
    per_epoch = [{"epoch": e, **epochs[e]} for e in sorted(epochs)]
    return summarise(per_epoch, wall)


# --- baseline: a plain PyTorch loop -------------------------------------------------------------------


class TwoViews(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Two torchvision views of one uint8 (3, S, S) image per item."""

    def __init__(self, images: torch.Tensor, cfg: Config) -> None:
        a = cfg.get(AugConfig)
        self.images = images
        self.transform = reference_augment(cfg.data.image_size, strength=a.strength, min_scale=a.min_scale,
                                           max_scale=a.max_scale, flip_p=a.flip_p, jitter_p=a.jitter_p,
                                           gray_p=a.gray_p, blur_p=a.blur_p, blur_kernel_frac=a.blur_kernel_frac)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.transform(self.images[i])


def digits_images(size: int) -> torch.Tensor:
    """The digits as the pipeline stores them: (N, 3, S, S) uint8 at the training size."""
    src = sources.load_digits()
    images = resize_square(src.train.images, size)  # N x S x S x 3, as orchestrator.data does
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def run_baseline(cfg: Config, num_workers: int, threads: int) -> dict[str, Any]:
    """The plain loop with `threads` intra-op threads in the training process (0: torch's default)."""
    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _baseline(cfg, num_workers)
    finally:
        torch.set_num_threads(saved)


def _baseline(cfg: Config, num_workers: int) -> dict[str, Any]:
    start_wall = time.perf_counter()
    threads = torch.get_num_threads()
    torch.manual_seed(cfg.train.seed)
    data = TwoViews(digits_images(cfg.data.image_size), cfg)
    loader = DataLoader(data, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                        num_workers=num_workers, persistent_workers=num_workers > 0)
    model = build_model(cfg)
    o = cfg.optim
    optimizer = build_optimizer(o.name, model, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum, eta=o.eta)
    steps_per_epoch = len(loader)
    total = steps_per_epoch * cfg.train.epochs
    warmup = min(round(o.warmup_epochs * steps_per_epoch), total)
    base_lr = scaled_lr(o.lr, cfg.train.batch_size, o.lr_scaling)
    step = 0
    per_epoch = []
    model.train()
    for epoch in range(1, cfg.train.stop_after_epoch + 1):
        wait = 0.0
        steps = 0
        start = tick = time.perf_counter()
        for v0, v1 in loader:
            wait += time.perf_counter() - tick
            x = normalize(torch.cat([v0, v1]))  # 2B x 3 x S x S
            set_lr(optimizer, warmup_cosine(step, total, warmup, base_lr, o.final_lr))
            z0, z1 = model(x).chunk(2)
            loss = nt_xent(z0, z1, cfg.get(LossConfig).temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()  # the trainer checks isfinite(loss) every step: the same sync
            steps += 1
            step += 1
            tick = time.perf_counter()
        seconds = time.perf_counter() - start
        per_epoch.append({"epoch": epoch, "images_per_s": steps * cfg.train.batch_size / seconds,
                          "data_wait_frac": wait / seconds})
    del loader  # stop the persistent workers
    return {**summarise(per_epoch, time.perf_counter() - start_wall), "threads": threads}


def summarise(per_epoch: list[dict[str, float]], wall: float) -> dict[str, Any]:
    warm = [e for e in per_epoch if e["epoch"] >= 2] or per_epoch
    return {"images_per_s": median([e["images_per_s"] for e in warm]),
            "data_wait_frac": median([e["data_wait_frac"] for e in warm]),
            "wall_s": wall, "per_epoch": per_epoch}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--quick", action="store_true",
                   help="tiny model, 1 epoch, the plain loop only (smoke test: our side is `simclr train`, which "
                        "tests/orchestrator runs end to end)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (figures: median of epochs 2..E)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray Train workers")
    p.add_argument("--logs", action="store_true", help="show the simclr train runs' stderr")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPUs for both sides")
    p.add_argument("--shuffle-cost", action="store_true",
                   help="ours only: data.shuffle on against off, 1 worker (what the per-epoch shuffle costs)")
    args = p.parse_args()
    if args.shuffle_cost:
        shuffle_cost(args)
        return
    epochs = 1 if args.quick else args.epochs
    workers = [] if args.quick else args.workers
    cfg = bench_config(epochs, args.quick)
    baseline_workers = max(1, args.cores - 1)
    # torch's default (one thread per core: what a user gets) and one thread per core left over by
    # the DataLoader workers (what Ray gives a train worker with one CPU)
    variants = {"default": 0} if args.quick else {"default": 0, "rest": max(1, args.cores - baseline_workers)}

    load_before = load_now()
    loads = []
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    ours = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for v, t in variants.items():
            runs[v].append(run_baseline(cfg, baseline_workers, t))
            loads.append(load_now())
        for w in workers:
            ours[w] = run_ours(cfg, w, args.cores, tmp, args.logs)
            loads.append(load_now())
        if not args.quick:
            for v, t in reversed(variants.items()):
                runs[v].append(run_baseline(cfg, baseline_workers, t))
                loads.append(load_now())
    baselines: dict[str, dict[str, Any]] = {
        v: {"images_per_s": median([r["images_per_s"] for r in rs]),
            "data_wait_frac": median([r["data_wait_frac"] for r in rs]),
            "threads": rs[0]["threads"], "runs": rs}
        for v, rs in runs.items()
    }
    best = max(baselines, key=lambda v: baselines[v]["images_per_s"])  # compare with the stronger one
    rows = []
    for b in baselines.values():
        rows.append([f"plain PyTorch, num_workers={baseline_workers}, {b['threads']} training threads",
                     b["images_per_s"], f"{100 * b['data_wait_frac']:.1f}%",
                     f"{b['images_per_s'] / baselines[best]['images_per_s']:.2f}x",
                     " / ".join(f"{r['wall_s']:.0f}" for r in b["runs"])])
    ratios = {}
    for w, r in ours.items():
        ratios[str(w)] = r["images_per_s"] / baselines[best]["images_per_s"]
        rows.append([f"simclr train, {w} worker{'s' if w > 1 else ''}", r["images_per_s"],
                     f"{100 * r['data_wait_frac']:.1f}%", f"{ratios[str(w)]:.2f}x", f"{r['wall_s']:.0f}"])
    m = cfg.model
    say(args.json,
        f"digits, {cfg.data.image_size} px, small_resnet {list(m.widths)}, global batch {cfg.train.batch_size}, "
        f"{epochs} epochs ({f'median of epochs 2..{epochs}' if epochs > 1 else 'start-up included'}), "
        f"{args.cores} cores; load {load_before} -> {loads}",
        "", table(["pipeline", "images/s", "data wait", "vs best baseline", "wall s"], rows), "")
    if args.json:
        emit_json({
            "benchmark": "end_to_end",
            "settings": {"epochs": epochs, "workers": workers, "cores": args.cores, "quick": args.quick,
                         "baseline_num_workers": baseline_workers, "batch_size": cfg.train.batch_size,
                         "image_size": cfg.data.image_size, "widths": list(m.widths)},
            "machine": {**machine(), "load_before": load_before, "load_during": loads},
            "baseline": {**baselines[best], "variant": best},
            "baselines": baselines,
            "ours": {str(w): r for w, r in ours.items()},
            "ratio_ours_over_baseline": ratios,
        })


def shuffle_cost(args: argparse.Namespace) -> None:
    """images/s of `simclr train` (1 worker) with the per-epoch shuffle on and off, alternated."""
    cfg = bench_config(args.epochs, args.quick)
    load_before = load_now()
    runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as d:
        for shuffle in (True, False, False, True):
            runs[shuffle].append(run_ours(cfg, 1, args.cores, Path(d), args.logs, shuffle))
    figures = {s: {"images_per_s": median([r["images_per_s"] for r in rs]),
                   "data_wait_frac": median([r["data_wait_frac"] for r in rs]), "runs": rs}
               for s, rs in runs.items()}
    ratio = figures[True]["images_per_s"] / figures[False]["images_per_s"]
    rows = [[f"simclr train, 1 worker, data.shuffle={str(s).lower()}", f["images_per_s"],
             f"{100 * f['data_wait_frac']:.1f}%", " / ".join(f"{r['images_per_s']:.0f}" for r in f["runs"])]
            for s, f in figures.items()]
    say(args.json, f"digits recipe, {args.epochs} epochs (median of epochs 2..E of each run), {args.cores} cores; "
                   f"load {load_before} -> {load_now()}", "",
        table(["pipeline", "images/s", "data wait", "each run"], rows), "",
        f"shuffle on / off: {ratio:.3f}x")
    if args.json:
        emit_json({"benchmark": "end_to_end_shuffle_cost", "machine": machine(),
                   "shuffle_on": figures[True], "shuffle_off": figures[False], "ratio_on_over_off": ratio})


if __name__ == "__main__":
    main()
