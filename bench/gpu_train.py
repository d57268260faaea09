"""A short SimCLR training on one device in a plain loop: the main job's recipe without Ray or MLflow.

What the train workers run, minus the orchestrator: the digits recipe's model (``SimCLR.build_model``),
its loss (``SimCLR.loss``: NT-Xent), LARS with linear warm-up and cosine decay, bf16 autocast and
channels-last on a GPU; the views made as with ``aug.device=train`` (the crop stage on the CPU with the
stream's per-row keys, the colour stage on the device, ``SimCLR.finish_batch``). scikit-learn's digits
with the main job's stratified hold-out; the kNN monitor on the encoder's features before training and
every few epochs. Prints one JSON object: the loss and kNN curves, steps/s and images/s, peak memory.

Imports only torch, numpy, scikit-learn and workloads/ (the GPU machine has no Ray or MLflow). Without
CUDA (or with ``--quick``) it runs 2 epochs on the CPU: the smoke test's path.

    python bench/gpu_train.py [--quick] [--json] [--epochs 25] [--batch 128]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # workloads/ without an install

from workloads.method import Net, normalize
from workloads.optim import build_optimizer, scaled_lr, set_lr, warmup_cosine
from workloads.probes import knn_accuracy
from workloads.rng import RowRandom, row_keys
from workloads.sections import AugConfig
from workloads.simclr.method import SimCLR
from workloads.simclr.recipes import digits


def load_digits(size: int, holdout: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as the main job stores them: 3-channel uint8, resized to size x size (bilinear,
    antialiased), a stratified hold-out; (train images, train labels, test images, test labels)."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    gray = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0))).float()  # N x 8 x 8
    x = torch.nn.functional.interpolate(gray[:, None].expand(-1, 3, -1, -1), size=(size, size), mode="bilinear",
                                        antialias=True, align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8)  # N x 3 x S x S
    labels = torch.from_numpy(bunch.target).long()
    tr, te = train_test_split(np.arange(len(labels)), test_size=holdout, stratify=bunch.target, random_state=seed)
    return images[tr], labels[tr], images[te], labels[te]


@torch.no_grad()
def knn(model: torch.nn.Module, train: Tensor, train_labels: Tensor, test: Tensor, test_labels: Tensor,
        k: int, bf16: bool, device: torch.device) -> float:
    """kNN top-1 of the encoder's features (before the projection head), train split as the bank."""
    model.eval()
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            f_train = model.features(normalize(train.to(device))).float()  # N x F
            f_test = model.features(normalize(test.to(device))).float()  # M x F
    finally:
        model.train()
    return knn_accuracy(f_train, train_labels.to(device), f_test, test_labels.to(device), 10, k=k)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 epochs on the CPU (automatic without CUDA)")
    p.add_argument("--json", action="store_true", help="accepted for the bench contract; the JSON is always printed")
    p.add_argument("--epochs", type=int, default=0, help="default: the digits recipe's (25)")
    p.add_argument("--batch", type=int, default=0, help="images per step; default: the recipe's")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.quick
    device = torch.device("cuda" if cuda else "cpu")
    bf16 = cuda  # the product's precision=auto
    recipe = digits()
    cfg = recipe.replace({"aug.device": "train"})
    epochs = args.epochs or (recipe.train.epochs if cuda else 2)
    batch = args.batch or cfg.train.batch_size
    torch.manual_seed(args.seed)

    train, train_labels, test, test_labels = load_digits(cfg.data.image_size, cfg.data.holdout_fraction, args.seed)
    method = SimCLR()
    model = method.build_model(cfg).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(train) // batch  # the last, smaller batch dropped, as the stream does
    total = epochs * steps_per_epoch
    lr = scaled_lr(cfg.optim.lr, batch, cfg.optim.lr_scaling)
    opt = build_optimizer(cfg.optim.name, method.param_groups(model, cfg), lr, cfg.optim.weight_decay)
    warmup = min(total, cfg.optim.warmup_epochs * steps_per_epoch)

    def forward(x: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x)

    def to_input(views: Tensor) -> Tensor:
        x = normalize(views)
        return x.contiguous(memory_format=torch.channels_last) if cuda else x

    net = Net(forward=forward, core=model, image=to_input,
              autocast=lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16))
    k = cfg.eval.knn_k
    curve = [{"epoch": 0, "knn_top1": knn(model, train, train_labels, test, test_labels, k, bf16, device)}]
    losses: list[float] = []
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step, train_s, data_s = 0, 0.0, 0.0
    for epoch in range(1, epochs + 1):
        order = np.random.default_rng([args.seed, epoch]).permutation(len(train))  # a new order each epoch
        epoch_loss = torch.zeros((), device=device)
        start = time.perf_counter()
        for s in range(steps_per_epoch):
            t = time.perf_counter()
            rows = order[s * batch:(s + 1) * batch]
            # crop stage on the CPU, keyed per row as the stream's tasks key it; colour stage on the device
            views = method.views(train[rows], cfg, RowRandom(row_keys(args.seed, epoch, rows)))
            views = {key: v.to(device, non_blocking=True) for key, v in views.items()}
            data_s += time.perf_counter() - t
            batch_views = method.finish_batch(views, cfg)
            set_lr(opt, warmup_cosine(step, total, warmup, lr))
            loss = method.loss(net, batch_views, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss += loss.detach()
            step += 1
        losses.append(float(epoch_loss) / steps_per_epoch)  # waits for the device: the epoch's time is whole
        train_s += time.perf_counter() - start
        if epoch % 5 == 0 or epoch == epochs:
            curve.append({"epoch": epoch, "knn_top1": knn(model, train, train_labels, test, test_labels, k, bf16,
                                                          device)})
            sys.stderr.write(f"epoch {epoch:3d}  loss {losses[-1]:.4f}  kNN {curve[-1]['knn_top1']:.4f}\n")
    if not all(math.isfinite(x) for x in losses):
        raise SystemExit(f"non-finite loss: {losses}")
    out = {
        "benchmark": "gpu_train",
        "settings": {"quick": not cuda, "device": str(device), "recipe": "digits", "epochs": epochs, "batch": batch,
                     "steps": step, "bf16": bf16, "aug_device": cfg.get(AugConfig).device, "knn_k": k,
                     "train_images": len(train), "test_images": len(test)},
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if cuda else None},
        "loss_per_epoch": losses,
        "knn": curve,
        "loss_first_last": [losses[0], losses[-1]],
        "knn_first_last": [curve[0]["knn_top1"], curve[-1]["knn_top1"]],
        "steps_per_s": step / train_s,
        "images_per_s": step * batch / train_s,
        "cpu_crop_stage_frac": data_s / train_s,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "wall_s": time.perf_counter() - t0,
    }
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
