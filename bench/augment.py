"""SimCLR augmentation throughput: our batched SimCLRAugment against torchvision per image.

Both sides run in a torch DataLoader with the same number of worker processes (each worker one
thread, DataLoader's default) and produce the same thing: two independently augmented uint8 views of
every image, collated into (B, 3, S, S) batches in the parent.

- ours: a dataset whose item is a batch of B images, augmented by `SimCLRAugment.two_views`
  (per-image parameters, each op applied to the whole batch), `batch_size=None`.
- torchvision: `reference_augment` (the per-image v2 Compose of the same recipe) called twice per
  image in `__getitem__`, `batch_size=B`: torchvision's tensor transforms (MoCo, SwAV, solo-learn and
  lightly transform PIL images with PIL's blur instead; bench/jpeg_views.py measures that too).

Inputs are decode-free random uint8 images already in memory (no JPEG decode on either side), at the
output size or, for 224 px, at the 256 px decode size of the ImageNet recipe. Recipes: 32 px is the
CIFAR one (s = 0.5, no blur), 224 px the ImageNet one (s = 1.0, blur with p = 0.5, kernel 23).
Each figure is one DataLoader epoch's images (two views each) per second of wall time, worker
start-up (fork) included; the sides alternate within every repeat and the median is reported.

    .venv/bin/python bench/augment.py [--json] [--quick] [--workers 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from common import emit_json, load_now, machine, median, say, table
from torch.utils.data import DataLoader, Dataset

from workloads.augment.transform import SimCLRAugment, reference_augment


@dataclass(frozen=True)
class Case:
    """One row of the table: recipe, input size, and how many images each side processes per run."""

    name: str
    output_size: int
    input_size: int
    strength: float
    blur_p: float
    batch_size: int  # images per DataLoader batch (and per SimCLRAugment call)
    ours_images: int
    ref_images: int

    def recipe(self) -> dict[str, Any]:
        return {"output_size": self.output_size, "strength": self.strength, "blur_p": self.blur_p}


CASES = (
    Case("32 px (CIFAR recipe)", 32, 32, 0.5, 0.0, 256, 32768, 3072),
    Case("224 px, blur p=0.5", 224, 224, 1.0, 0.5, 64, 512, 192),
    Case("224 px from 256 px input, blur", 224, 256, 1.0, 0.5, 64, 512, 192),
    Case("224 px, no blur", 224, 224, 1.0, 0.0, 64, 768, 256),
)
QUICK_CASES = (
    Case("32 px (CIFAR recipe)", 32, 32, 0.5, 0.0, 32, 128, 32),
    Case("224 px, blur p=0.5", 224, 224, 1.0, 0.5, 4, 8, 4),
)


class BatchedViews(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item i: two views of images[i*B:(i+1)*B], by SimCLRAugment on the whole batch."""

    def __init__(self, images: torch.Tensor, batch_size: int, aug: SimCLRAugment) -> None:
        self.images, self.batch_size, self.aug = images, batch_size, aug

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.images[i * self.batch_size:(i + 1) * self.batch_size]  # B x 3 x H x W uint8
        return self.aug.two_views(batch)


class PerImageViews(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item i: two views of images[i], by the torchvision v2 pipeline called once per view."""

    def __init__(self, images: torch.Tensor, recipe: dict[str, Any]) -> None:
        self.images, self.transform = images, reference_augment(**recipe)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]  # 3 x H x W uint8
        return self.transform(img), self.transform(img)


def images_per_second(loader: DataLoader[Any], expected: int) -> float:
    """One epoch through the loader: images (two views each) per second of wall time."""
    start = time.perf_counter()
    seen = 0
    for v0, v1 in loader:
        assert v0.shape == v1.shape and v0.dtype == torch.uint8
        seen += v0.shape[0]
    seconds = time.perf_counter() - start
    assert seen == expected, (seen, expected)
    return seen / seconds


def loaders(case: Case, workers: int) -> dict[str, DataLoader[Any]]:
    g = torch.Generator().manual_seed(0)
    shape = (max(case.ours_images, case.ref_images), 3, case.input_size, case.input_size)
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    aug = SimCLRAugment(**case.recipe())
    ours = BatchedViews(images[:case.ours_images], case.batch_size, aug)
    ref = PerImageViews(images[:case.ref_images], case.recipe())
    # warm up in the parent, before the fork: lazy op registration and first-call costs
    ours[0]
    ref[0]
    return {
        "ours": DataLoader(ours, batch_size=None, num_workers=workers),
        "torchvision": DataLoader(ref, batch_size=case.batch_size, num_workers=workers),
    }


def run(cases: tuple[Case, ...], workers: list[int], repeats: int) -> list[dict[str, Any]]:
    out = []
    for case in cases:
        for w in workers:
            ld = loaders(case, w)
            expected = {"ours": case.ours_images, "torchvision": case.ref_images}
            rates: dict[str, list[float]] = {"ours": [], "torchvision": []}
            loads = []
            for rep in range(repeats):
                order = ["ours", "torchvision"] if rep % 2 == 0 else ["torchvision", "ours"]
                for side in order:
                    rates[side].append(images_per_second(ld[side], expected[side]))
                loads.append(load_now())
            rec: dict[str, Any] = {"case": asdict(case), "workers": w, "load_1min": loads}
            for side, r in rates.items():
                rec[side] = {"images_per_s": median(r), "images_per_s_per_core": median(r) / w, "all": r}
            rec["ratio_ours_over_torchvision"] = rec["ours"]["images_per_s"] / rec["torchvision"]["images_per_s"]
            out.append(rec)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker processes")
    p.add_argument("--repeats", type=int, default=3, help="runs per side (median reported)")
    args = p.parse_args()
    cases = QUICK_CASES if args.quick else CASES
    workers = [1] if args.quick else args.workers
    repeats = 1 if args.quick else args.repeats

    load_before = load_now()
    results = run(cases, workers, repeats)
    load_after = load_now()
    rows = [[r["case"]["name"], r["workers"], r["case"]["batch_size"], r["ours"]["images_per_s_per_core"],
             r["torchvision"]["images_per_s_per_core"], f"{r['ratio_ours_over_torchvision']:.2f}x",
             max(r["load_1min"])] for r in results]
    headers = ["case", "workers", "batch", "ours img/s/core", "torchvision img/s/core", "ours/torchvision",
               "max load"]
    say(args.json, "SimCLR two-view augmentation, uint8 in memory, DataLoader workers of 1 thread each; "
        f"load {load_before} -> {load_after}", "", table(headers, rows), "")
    if args.json:
        emit_json({
            "benchmark": "augment",
            "settings": {"workers": workers, "repeats": repeats, "quick": args.quick,
                         "cases": [asdict(c) for c in cases]},
            "machine": {**machine(), "load_before": load_before, "load_after": load_after},
            "results": results,
        })


if __name__ == "__main__":
    main()
