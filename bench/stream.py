"""The training stream at ImageNet size: what the per-epoch shuffle and crops from the whole image cost.

A class-sorted ImageFolder of JPEG photographs (crops of scikit-learn's two sample photos at several
aspect ratios, tests/photos.py) is prepared as `simclr train` prepares it (decoded once at
`data.decode_size`, cached in the object store), then the stream the trainer iterates
(`orchestrator.data.stream.train_stream`: gather the epoch's rows, two views with the imagenet recipe's
augmentation, 224 px, blur on) is read by one consumer in 64-image batches, on a local Ray of
`--cores` CPUs. Figures are images/s of views, the median over epochs 2..E (epoch 1 pays the Ray
workers' start-up).

Five variants, each prepared once and read alternately so that a drift in load hits all of them:
- `data.shuffle` true (the default: a new global order every epoch) or false (row-id order, which for
  an ImageFolder is class order: the order of a pipeline without the shuffle);
- `data.center_square` false (the default: decoded whole, crops from the whole photo) or true (the
  centre square only, the older decode, kept as the baseline);
- the standard alternative for the shuffle: Ray Data's own `random_shuffle()` of the same cached
  blocks each epoch (an all-to-all exchange; unseeded, since a seed would repeat one order every
  epoch), then the same views in `map_batches`;
- `data.cache_decoded=false`: the files read and decoded again in every epoch's tasks (what a dataset
  too large for the object store gets), each photo decoded whole and the crops drawn from it.

    .venv/bin/python bench/stream.py [--json] [--quick] [--images 384] [--epochs 3] [--cores N]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from common import emit_json, load_now, machine, median, say, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from photos import image_folder

from orchestrator.data.prepare import prepare
from orchestrator.data.stream import EpochClock, RowStore, train_stream
from workloads.config import Config
from workloads.methods import method, recipe

RAY_SHUFFLE = "Ray Data random_shuffle, whole image"
DECODE_EACH_EPOCH = "shuffle, whole image, decoded each epoch"
VARIANTS = {  # name: (shuffle, center_square, cache_decoded)
    "shuffle, whole image": (True, False, True),
    RAY_SHUFFLE: (False, False, True),
    "no shuffle, whole image": (False, False, True),
    "shuffle, centre square": (True, True, True),
    "no shuffle, centre square (baseline)": (False, True, True),
    DECODE_EACH_EPOCH: (True, False, False),
}


def config(root: Path, shuffle: bool, center_square: bool, quick: bool, cache_decoded: bool = True) -> Config:
    cfg = recipe("imagenet").replace({"data.root": str(root), "data.eval_root": "", "data.shuffle": shuffle,
                                      "data.center_square": center_square, "data.cache_decoded": cache_decoded})
    if quick:
        cfg = cfg.replace({"data.image_size": 32, "data.decode_size": 40, "aug.blur_p": 0.0,
                           "data.augment_batch_size": 16})
    return cfg


def ray_shuffled(store: RowStore, cfg: Config) -> ray.data.Dataset:
    """The alternative: Ray Data's random_shuffle of the cached blocks, then the views per batch."""

    def views(batch: dict[str, Any]) -> dict[str, Any]:
        images = [torch.from_numpy(np.array(a)).permute(2, 0, 1) for a in batch["image"]]
        out = method(cfg.method).views(images, cfg, torch.Generator().manual_seed(secrets.randbits(63)))
        return {k: v.numpy() for k, v in out.items()}

    return (ray.data.from_arrow_refs(list(store.blocks)).random_shuffle()
            .map_batches(views, batch_size=cfg.data.augment_batch_size, batch_format="numpy"))


def read_epoch(cfg: Config, store: RowStore, clock: Any, epoch: int, alternative: bool = False) -> float:
    """images/s of one epoch of the stream, read in the trainer's batches of 64."""
    ray.get(clock.set.remote(epoch))
    ds = ray_shuffled(store, cfg) if alternative else train_stream(store, cfg, clock)
    start, n = time.perf_counter(), 0
    for batch in ds.iter_batches(batch_size=64, batch_format="numpy"):
        n += len(batch["view0"])
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="32 small photos at 32 px, 2 epochs (smoke test)")
    p.add_argument("--images", type=int, default=384, help="photos in the folder (10 classes)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per variant (figures: median of 2..E)")
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray")
    args = p.parse_args()
    images, epochs = (40, 2) if args.quick else (args.images, args.epochs)
    load_before = load_now()
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as d:
        root = image_folder(Path(d) / "photos", 10, images // 10, shorter=48 if args.quick else 375)
        ray.init(num_cpus=args.cores, object_store_memory=600 * 2**20, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray.data.DataContext.get_current().execution_options.preserve_order = True  # as the trainer's ingest
        try:
            runs = {}
            for name, (shuffle, center, cache) in VARIANTS.items():
                cfg = config(root, shuffle, center, args.quick, cache)
                data = prepare(cfg.data, cfg.train.seed)
                assert data.train is not None
                runs[name] = (cfg, data.train, EpochClock.remote())  # type: ignore[attr-defined]
            for epoch in range(1, epochs + 1):
                order = list(VARIANTS) if epoch % 2 else list(reversed(VARIANTS))
                for name in order:
                    cfg, store, clock = runs[name]
                    rate = read_epoch(cfg, store, clock, epoch, alternative=name == RAY_SHUFFLE)
                    if epoch > 1 or epochs == 1:
                        rates[name].append(rate)
        finally:
            ray.shutdown()
    figures = {name: median(r) for name, r in rates.items()}
    before = figures["no shuffle, centre square (baseline)"]
    rows = [[name, figures[name], f"{figures[name] / before:.3f}x", " / ".join(f"{x:.0f}" for x in rates[name])]
            for name in VARIANTS]
    shuffle_cost = figures["shuffle, whole image"] / figures["no shuffle, whole image"]
    vs_ray = figures["shuffle, whole image"] / figures[RAY_SHUFFLE]
    crop_cost = figures["no shuffle, whole image"] / before
    decode_cost = figures[DECODE_EACH_EPOCH] / figures["shuffle, whole image"]
    size = config(Path(), True, False, args.quick).data.image_size
    say(args.json,
        f"{images} photo JPEGs in 10 class folders, imagenet recipe views ({size} px{'' if args.quick else ', blur'}), "
        f"{args.cores} cores, epochs 2..{epochs}; load {load_before} -> {load_now()}",
        "", table(["stream", "images/s", "vs before", "each epoch"], rows), "",
        f"shuffle on/off (whole image): {shuffle_cost:.3f}x; ours / Ray Data random_shuffle: {vs_ray:.3f}x; "
        f"whole image / centre square (no shuffle): {crop_cost:.3f}x; decoded each epoch / cached: {decode_cost:.3f}x")
    if args.json:
        emit_json({"benchmark": "stream", "settings": {"images": images, "epochs": epochs, "cores": args.cores,
                                                        "quick": args.quick},
                   "machine": {**machine(), "load_before": load_before}, "images_per_s": figures,
                   "per_epoch": rates, "ratio_shuffle_on_over_off": shuffle_cost,
                   "ratio_ours_over_ray_random_shuffle": vs_ray,
                   "ratio_whole_over_centre_square": crop_cost,
                   "ratio_decoded_each_epoch_over_cached": decode_cost})


if __name__ == "__main__":
    main()
