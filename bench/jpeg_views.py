"""The whole CPU path of a view, JPEG bytes to two 224 px views: ours against torchvision per image.

Issue 15: where the decoded cache does not fit, every epoch decodes every photo again, so decode and
augmentation together are what a CPU core delivers. Inputs are real photographs: ImageNet-sized JPEG
crops (shorter side 375, aspects 3:4 to 16:9, quality 90) cut at run time from scikit-learn's two
sample photos by tests/photos.py.

- decode alone (one process, one thread, photo by photo): ``decode_whole`` (what the stream's tasks
  run: the whole photo, not resized; JPEG DCT scaling with PIL's ``draft`` where the photo is at least
  twice 256), ``decode_image`` (the decoded cache's decode: shorter side resized to 256, DCT scaling
  where it applies; the stream's older decode), a full PIL decode + resize (the plain
  decode) and ``torchvision.io.decode_jpeg`` + an antialiased resize. Run on 375 px photos
  and on large ones (shorter side 768), where DCT scaling applies.
- the whole path, in a DataLoader with the same number of worker processes on both sides, each of one
  thread, two uint8 views of every image collated into (B, 3, 224, 224) batches:
  - ours: the stream's code path (orchestrator/stream.py ``gather`` and ``chunk_views``): one item is a
    chunk of 64 JPEGs, each decoded whole (``decode_or_none(..., whole=True)``, as ``gather`` calls it),
    ``SimCLRAugment.two_views`` on the list of whole photos with ``RowRandom`` keys per row;
  - ours, crop stage only: the same decode and ``two_crop_stages`` (the CPU half when the colour
    stage runs on the training device; not a finished view, so no ratio to torchvision);
  - ours, resized at decode: as ours, with each photo decoded by ``decode_image`` at 256 (shorter side
    resized) first: the stream before the crop stage started from the whole photo;
  - torchvision: per image, PIL decode, ``PILToTensor``, then the ImageNet recipe's v2 Compose
    (``reference_augment``: RandomResizedCrop on the whole photo, flip, jitter, grayscale, blur)
    twice, batch_size 64: torchvision's tensor transforms, with its exact k x k Gaussian blur;
  - PIL: per image, PIL decode, then torchvision's v1 transforms on the PIL image (RandomResizedCrop,
    flip, ColorJitter, grayscale) and PIL's own ``ImageFilter.GaussianBlur(radius=sigma)`` (box-blur
    passes approximating the Gaussian), ``PILToTensor`` last, twice: the pipeline MoCo's, SwAV's,
    solo-learn's and lightly's data loaders run (their GaussianBlur is PIL's).
  ImageNet recipe (s = 1.0), with blur (p = 0.5, kernel 23) and without. Figures are images (two views
  each) per second per worker process, fork included; the sides alternate and the median of the
  repeats is reported.

    .venv/bin/python bench/jpeg_views.py [--json] [--quick] [--workers 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import emit_json, load_now, machine, median, say, table
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from photos import photo_bytes
from pil_pipeline import pil_transform, pil_two_views

from orchestrator.data.sources import decode_or_none
from orchestrator.data.stream import image_tensor
from workloads.augment.transform import SimCLRAugment, reference_augment
from workloads.decode import decode_image, decode_whole
from workloads.rng import RowRandom, row_keys

OUTPUT_SIZE = 224
DECODE_SIZE = 256  # the imagenet recipe's data.stored_size
CHUNK = 64  # data.augment_batch_size: images per augmentation call, and the torchvision batch
QUICK_CHUNK = 8
QUALITY = 90


def recipe(blur: bool) -> dict[str, Any]:
    """The imagenet recipe's augmentation (workloads/simclr/recipes.py), blur on or off."""
    return {"output_size": OUTPUT_SIZE, "strength": 1.0, "blur_p": 0.5 if blur else 0.0}


# ----------------------------------------------------------------------------- decoders


def decode_pil_full(data: bytes, size: int) -> np.ndarray:
    """The plain decode: full-size PIL decode, then the resize to the shorter side."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        rgb = img.convert("RGB")
    w, h = rgb.size
    scale = min(size / min(w, h), 4 * size / max(w, h))
    rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR,
                     reducing_gap=3.0)
    return np.asarray(rgb, dtype=np.uint8)


def decode_torchvision(data: bytes, size: int) -> torch.Tensor:
    """torchvision.io.decode_jpeg (libjpeg-turbo, full size) + antialiased bilinear resize: (3, H, W)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    h, w = img.shape[1:]
    scale = min(size / min(w, h), 4 * size / max(w, h))
    out = F.interpolate(img.unsqueeze(0).float(), size=(max(1, round(h * scale)), max(1, round(w * scale))),
                        mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)[0]


DECODERS: dict[str, Callable[[bytes, int], Any]] = {
    "decode_whole (ours: the stream's, not resized)": decode_whole,
    "decode_image (ours: the cache's, resized)": decode_image,
    "PIL full decode + resize (before)": decode_pil_full,
    "torchvision.io.decode_jpeg + resize": decode_torchvision,
}


def decode_rates(photos: list[bytes], repeats: int) -> dict[str, float]:
    """Photos per second of each decoder in this process on one thread (median of repeats; the
    decoders alternate in order, after one warm-up call each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rates: dict[str, list[float]] = {name: [] for name in DECODERS}
        for fn in DECODERS.values():
            fn(photos[0], DECODE_SIZE)
        for rep in range(repeats):
            for name in DECODERS if rep % 2 == 0 else reversed(DECODERS):
                fn = DECODERS[name]
                start = time.perf_counter()
                for data in photos:
                    fn(data, DECODE_SIZE)
                rates[name].append(len(photos) / (time.perf_counter() - start))
        return {name: median(r) for name, r in rates.items()}
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- the whole path


def stream_decode(data: bytes) -> np.ndarray:
    """The decode stream.gather runs on a photo it reads (the whole photo, not resized)."""
    out = decode_or_none(data, DECODE_SIZE, "photo", "fail", whole=True)
    assert out is not None  # the fail policy raises instead
    return out


def resized_decode(data: bytes) -> np.ndarray:
    """The stream's decode before the crop stage started from the whole photo: shorter side at 256."""
    return decode_image(data, DECODE_SIZE)


def whole_images(chunk: list[bytes], decode: Callable[[bytes], np.ndarray] = stream_decode
                 ) -> list[torch.Tensor] | torch.Tensor:
    """What stream.gather returns: (B, 3, H, W) when every photo has one shape, else a list of (3, H, W)."""
    tensors = [image_tensor(decode(data)) for data in chunk]  # 3 x H x W, as gather makes them
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors)
    return tensors


class OurViews(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item i: the two views of chunk i of the photos, as chunk_views makes them."""

    def __init__(self, photos: list[bytes], blur: bool, chunk: int, crop_only: bool = False,
                 decode: Callable[[bytes], np.ndarray] = stream_decode) -> None:
        self.photos, self.aug, self.chunk, self.crop_only = photos, SimCLRAugment(**recipe(blur)), chunk, crop_only
        self.decode = decode

    def __len__(self) -> int:
        return math.ceil(len(self.photos) / self.chunk)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.arange(i * self.chunk, min(len(self.photos), (i + 1) * self.chunk))
        images = whole_images([self.photos[r] for r in rows], self.decode)
        gen = RowRandom(row_keys(seed=0, epoch=1, row_ids=rows))
        if self.crop_only:
            (c0, _), (c1, _) = self.aug.two_crop_stages(images, gen)
            return c0, c1
        return self.aug.two_views(images, gen)


class PILViews(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item i: PIL decode of photo i, then the recipe as torchvision v1 transforms on the PIL image,
    PIL's blur, twice (bench/pil_pipeline.py)."""

    def __init__(self, photos: list[bytes], blur: bool) -> None:
        self.photos, self.transform = photos, pil_transform(SimCLRAugment(**recipe(blur)))

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return pil_two_views(self.photos[i], self.transform)


class TorchvisionViews(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item i: PIL decode of photo i, then torchvision's per-image recipe twice."""

    def __init__(self, photos: list[bytes], blur: bool) -> None:
        from torchvision.transforms.v2 import functional as TF

        self.photos, self.transform, self.to_tensor = photos, reference_augment(**recipe(blur)), TF.pil_to_tensor

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(io.BytesIO(self.photos[i])) as img:
            x = self.to_tensor(img.convert("RGB"))  # 3 x H x W uint8, the whole photo
        return self.transform(x), self.transform(x)


def images_per_second(loader: DataLoader[Any], expected: int) -> float:
    """One epoch through the loader: images (two views each) per second of wall time."""
    start = time.perf_counter()
    seen = 0
    for v0, v1 in loader:
        assert v0.shape == v1.shape and v0.shape[1:] == (3, OUTPUT_SIZE, OUTPUT_SIZE) and v0.dtype == torch.uint8
        seen += v0.shape[0]
    seconds = time.perf_counter() - start
    assert seen == expected, (seen, expected)
    return seen / seconds


SIDES = ("ours", "ours_crop_stage_only", "ours_resized_at_decode", "torchvision", "pil")


def run_path(photos: list[bytes], ref_images: int, blur: bool, workers: int, repeats: int,
             chunk: int) -> dict[str, Any]:
    datasets: dict[str, Dataset[Any]] = {
        "ours": OurViews(photos, blur, chunk),
        "ours_crop_stage_only": OurViews(photos, blur, chunk, crop_only=True),
        "ours_resized_at_decode": OurViews(photos, blur, chunk, decode=resized_decode),
        "torchvision": TorchvisionViews(photos[:ref_images], blur),
        "pil": PILViews(photos[:ref_images], blur),
    }
    for ds in datasets.values():
        ds[0]  # first-call costs (op registration, libjpeg set-up) in the parent, before the fork
    per_image = ("torchvision", "pil")
    loaders = {name: DataLoader(ds, batch_size=chunk if name in per_image else None, num_workers=workers)
               for name, ds in datasets.items()}
    expected = {"ours": len(photos), "ours_crop_stage_only": len(photos), "ours_resized_at_decode": len(photos),
                "torchvision": ref_images, "pil": ref_images}
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    loads = []
    for rep in range(repeats):
        for side in SIDES if rep % 2 == 0 else tuple(reversed(SIDES)):
            rates[side].append(images_per_second(loaders[side], expected[side]))
        loads.append(load_now())
    rec: dict[str, Any] = {"blur": blur, "workers": workers, "load_1min": loads}
    for side, r in rates.items():
        rec[side] = {"images_per_s": median(r), "images_per_s_per_core": median(r) / workers, "all": r}
    rec["ratio_ours_over_torchvision"] = rec["ours"]["images_per_s"] / rec["torchvision"]["images_per_s"]
    rec["ratio_ours_over_pil"] = rec["ours"]["images_per_s"] / rec["pil"]["images_per_s"]
    rec["ratio_crop_stage_over_pil"] = rec["ours_crop_stage_only"]["images_per_s"] / rec["pil"]["images_per_s"]
    return rec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="DataLoader worker processes")
    p.add_argument("--repeats", type=int, default=3, help="runs per side (median reported)")
    p.add_argument("--images", type=int, default=512, help="photos per run of ours (torchvision: half)")
    args = p.parse_args()
    quick = args.quick
    chunk = QUICK_CHUNK if quick else CHUNK
    n = 2 * chunk if quick else args.images
    ref_n = 4 if quick else n // 2
    workers = [1] if quick else args.workers
    repeats = 1 if quick else args.repeats
    shorter, large = 375, 768

    load_before = load_now()
    photos, _ = photo_bytes(n, classes=10, shorter=shorter)
    large_photos, _ = photo_bytes(2 if quick else 128, classes=10, shorter=large, seed=1)
    decode = [{"photos_shorter_side": s, "photos": len(ph), "images_per_s": decode_rates(ph, repeats)}
              for s, ph in ((shorter, photos[:len(large_photos)]), (large, large_photos))]
    results = [run_path(photos, ref_n, blur, w, repeats, chunk) for blur in (True, False) for w in workers]
    load_after = load_now()

    say(args.json, f"JPEG decode alone at {DECODE_SIZE} px, one process, one thread; load {load_before}",
        "", table(["photos", *DECODERS], [[f"{d['photos']} x shorter {d['photos_shorter_side']} px",
                                             *d["images_per_s"].values()] for d in decode]), "")
    rows = [[("blur p=0.5" if r["blur"] else "no blur"), r["workers"], r["ours"]["images_per_s_per_core"],
             r["ours_crop_stage_only"]["images_per_s_per_core"], r["ours_resized_at_decode"]["images_per_s_per_core"],
             r["torchvision"]["images_per_s_per_core"], r["pil"]["images_per_s_per_core"],
             f"{r['ratio_ours_over_torchvision']:.2f}x", f"{r['ratio_ours_over_pil']:.2f}x",
             f"{r['ratio_crop_stage_over_pil']:.2f}x", max(r["load_1min"])] for r in results]
    headers = ["case", "workers", "ours img/s/core", "ours crop stage only img/s/core",
               "ours resized at decode img/s/core", "torchvision img/s/core", "PIL img/s/core", "ours/torchvision",
               "ours/PIL", "crop stage/PIL", "max load"]
    say(args.json, f"JPEG bytes -> two {OUTPUT_SIZE} px views, imagenet recipe, DataLoader workers of 1 thread; "
        f"load {load_before} -> {load_after}", "", table(headers, rows), "")
    if args.json:
        emit_json({
            "benchmark": "jpeg_views",
            "settings": {"workers": workers, "repeats": repeats, "quick": quick, "images": n,
                         "torchvision_images": ref_n, "chunk": chunk, "decode_size": DECODE_SIZE,
                         "output_size": OUTPUT_SIZE, "photos_shorter_side": [shorter, large],
                         "jpeg_quality": QUALITY, "photo_source": "scikit-learn sample photos (tests/photos.py)"},
            "machine": {**machine(), "load_before": load_before, "load_after": load_after},
            "decode": decode,
            "results": results,
        })


if __name__ == "__main__":
    main()
