"""What a GPU does with SimCLR, in one command: the model-only limit, the device augmentation, and
how many CPU processes of decode + crop it takes to feed the GPU.

Prints one JSON object (a summary table goes to stderr):
- ``model_only``: images/s of a whole SimCLR step (forward of both views, NT-Xent, backward, LARS
  step) on uint8 images already on the device: ResNet-18 with the CIFAR stem at 32 px and ResNet-50
  at 224 px, bf16 autocast and fp32, channels-last, torch.compile off (and on, bf16 only: compiling
  costs a minute or more per model). One extra ResNet-50 row with torch's SGD (foreach) instead of
  our LARS shows what the optimiser's per-parameter loop costs.
- ``device_augment``: images/s (two views each) of ``SimCLRAugment.colour`` (flip, jitter, grayscale,
  blur) on the device over a batch of uint8 224 px crops, with and without blur.
- ``ntxent_bf16_vs_fp32``: the loss of one ResNet-50 batch under bf16 autocast and in fp32.
- ``end_to_end``: images/s and data-wait fraction when a DataLoader with N worker processes decodes
  JPEGs (our decode: the whole photo, not resized, DCT scaling where it applies) and either makes the full
  views on the CPU (``cpu``: ``two_views``) or only the crops (``device``: ``two_crop_stages``, the
  colour stage then runs on the GPU), or (``pil``) runs the per-image PIL pipeline MoCo, SwAV,
  solo-learn and lightly run, feeding the ResNet-50 bf16 step; N = 2, 4, 8, 16; as a ratio to the
  model-only limit of the same step; and (``nvjpeg``) the workers hand over the JPEG bytes alone and the
  GPU decodes (nvJPEG), crops and colours them. ``cores_per_gpu``: the model-only limit over one worker's
  rate, per loader.
- ``device_decode``: JPEG decode on the device (``torchvision.io.decode_jpeg(..., device="cuda")``, one
  batched call) and the crop stage there (our per-image crops, and one batched ``roi_align``), against our
  CPU decode and crop stage on one core; and how many cores the device's decode stands for.

Imports only torch, torchvision, numpy, PIL and workloads/ (the GPU machine has no Ray or MLflow).
Photos: crops of scikit-learn's sample photographs when scikit-learn is installed, else synthetic
textured images; the JSON says which. Without CUDA (or with ``--quick``) everything runs on the CPU
at tiny sizes in seconds, GPU-only parts (torch.compile) marked skipped: the smoke test's path.

The compile rows run last (a minute or more each): the budget cuts them first. With ``--out FILE`` the
JSON so far is written there after every part, so a run cut short still leaves its figures.

    python bench/gpu.py [--quick] [--json] [--workers 2 4 8 16] [--budget-s 420] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision.io import decode_jpeg
from torchvision.ops import roi_align

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # workloads/ without an install
from pil_pipeline import pil_transform, pil_two_views

from workloads.augment.ops import MAX_VALUE
from workloads.augment.transform import ColourParams, SimCLRAugment
from workloads.decode import decode_whole
from workloads.method import normalize
from workloads.optim import build_optimizer
from workloads.rng import RowRandom, row_keys
from workloads.simclr.loss import nt_xent
from workloads.simclr.model import build_simclr_model

DECODE_SIZE = 256
TEMPERATURE = 0.1


# ----------------------------------------------------------------------------- photos


def _sklearn_sources() -> list[np.ndarray] | None:
    try:
        from sklearn.datasets import load_sample_image
    except ImportError:
        return None
    return [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]  # 427 x 640 x 3 each


def _synthetic_source(rng: np.random.Generator, h: int = 427, w: int = 640) -> np.ndarray:
    """A textured stand-in for a photo: smooth colour regions, oriented stripes and fine noise,
    so JPEG has edges and texture to code (a flat or pure-noise image decodes unlike a photo)."""
    low = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = sum(np.sin((x * math.cos(a) + y * math.sin(a)) / p) for a, p in
                  ((rng.uniform(0, math.pi), rng.uniform(2, 12)) for _ in range(3)))
    img = np.asarray(low, dtype=np.float32) + 20 * stripes[..., None] + rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_photos(n: int, shorter: int, seed: int = 0) -> tuple[list[bytes], str]:
    """n JPEGs (quality 90) of random aspect 3:4 to 16:9 with the given shorter side, cut from
    scikit-learn's sample photos (as tests/photos.py) or from synthetic textures; and which."""
    rng = np.random.default_rng(seed)
    sources = _sklearn_sources()
    kind = "scikit-learn sample photos"
    if sources is None:
        sources, kind = [_synthetic_source(rng) for _ in range(4)], "synthetic textures (no scikit-learn)"
    out = []
    for _ in range(n):
        src = sources[int(rng.integers(len(sources)))]
        aspect = float(rng.choice([4 / 3, 3 / 4, 1.0, 16 / 9, 3 / 2]))
        h, w = src.shape[:2]
        ch = int(rng.integers(h // 3, h // 2))
        cw = min(w, int(ch * aspect))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        size = (round(shorter * aspect), shorter) if aspect >= 1 else (shorter, round(shorter / aspect))
        crop = Image.fromarray(src[y0:y0 + ch, x0:x0 + cw]).resize(size, Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out, kind


def decode(data: bytes, size: int = DECODE_SIZE) -> Tensor:
    """uint8 (3, H, W): the whole photo as the stream's tasks decode it (``workloads.decode.decode_whole``:
    not resized, JPEG DCT scaling where the photo is at least twice ``size``)."""
    return torch.from_numpy(np.array(decode_whole(data, size))).permute(2, 0, 1)


# ----------------------------------------------------------------------------- the SimCLR step


@dataclass(frozen=True)
class ModelCase:
    name: str
    arch: str
    cifar_stem: bool
    size: int
    batch: int  # images per step (two views each: 2 x batch through the network)
    bf16: bool
    compile: bool
    optimizer: str = "lars"


class Step:
    """One SimCLR training step on uint8 views already on the device."""

    def __init__(self, case: ModelCase, device: torch.device) -> None:
        self.case, self.device = case, device
        model = build_simclr_model(case.arch, case.cifar_stem).to(device)
        self.model: nn.Module = model.to(memory_format=torch.channels_last)
        self.forward: Callable[[Tensor], Tensor] = torch.compile(self.model) if case.compile else self.model
        lr = 0.3 * 2 * case.batch / 256
        self.opt = (build_optimizer("lars", self.model, lr, 1e-6) if case.optimizer == "lars"
                    else torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9, foreach=True))

    def __call__(self, v0: Tensor, v1: Tensor) -> Tensor:
        x = normalize(torch.cat([v0, v1])).contiguous(memory_format=torch.channels_last)  # 2B x 3 x S x S
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.case.bf16):
            z = self.forward(x)  # 2B x 128
        z0, z1 = z.chunk(2)
        loss = nt_xent(z0, z1, TEMPERATURE)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_views(case: ModelCase, device: torch.device) -> tuple[Tensor, Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    shape = (case.batch, 3, case.size, case.size)
    return (torch.randint(0, 256, shape, generator=g, device=device, dtype=torch.uint8),
            torch.randint(0, 256, shape, generator=g, device=device, dtype=torch.uint8))


def model_only(case: ModelCase, device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = Step(case, device)
    v0, v1 = random_views(case, device)
    start = time.perf_counter()
    for _ in range(warmup):
        loss = step(v0, v1)
    sync(device)
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(v0, v1)
    sync(device)
    seconds = time.perf_counter() - start
    out = {"case": asdict(case), "images_per_s": case.batch * steps / seconds, "step_ms": 1e3 * seconds / steps,
           "warmup_s": warm_s, "loss": float(loss)}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del step
    return out


def ntxent_bf16_vs_fp32(case: ModelCase, device: torch.device) -> dict[str, Any]:
    """The loss of one batch with the same weights under bf16 autocast and in fp32; and the loss of
    the same fp32 embeddings rounded to bf16 (what the loss sees from a bf16 forward)."""
    torch.manual_seed(0)
    model = build_simclr_model(case.arch, case.cifar_stem).to(device).to(memory_format=torch.channels_last)
    v0, v1 = random_views(case, device)
    x = normalize(torch.cat([v0, v1])).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        z32 = model(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            z16 = model(x)
    loss32 = float(nt_xent(*z32.chunk(2), TEMPERATURE))
    loss16 = float(nt_xent(*z16.chunk(2), TEMPERATURE))
    rounded = float(nt_xent(*z32.bfloat16().chunk(2), TEMPERATURE))
    return {"model": case.arch, "size": case.size, "batch": case.batch, "loss_fp32": loss32,
            "loss_bf16_autocast": loss16, "abs_diff": abs(loss16 - loss32),
            "rel_diff": abs(loss16 - loss32) / abs(loss32), "loss_fp32_embeddings_rounded_to_bf16": rounded}


# ----------------------------------------------------------------------------- device augmentation


def device_augment(device: torch.device, batch: int, size: int, repeats: int) -> list[dict[str, Any]]:
    out = []
    g = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8).to(device)
    for blur in (True, False):
        aug = SimCLRAugment(size, strength=1.0, blur_p=0.5 if blur else 0.0)
        p0, p1 = (aug.sample_params(batch, size, size, g).colour().to(device) for _ in range(2))
        aug.colour(crops, p0)  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            aug.colour(crops, p0)
            aug.colour(crops, p1)
        sync(device)
        seconds = time.perf_counter() - start
        out.append({"blur": blur, "batch": batch, "size": size,
                    "images_per_s_two_views": batch * repeats / seconds})
    return out


# ----------------------------------------------------------------------------- JPEG decode on the device


def encoded_tensors(photos: list[bytes]) -> list[Tensor]:
    """The JPEG bytes as uint8 CPU tensors, the input ``decode_jpeg`` takes (a copy: bytes are read-only)."""
    return [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in photos]


def roi_crops(images: list[Tensor], boxes: Tensor, size: int) -> Tensor:
    """Every image's crop box resized to size x size in one batched ``roi_align``: uint8 (N, 3, S, S).

    The photos differ in shape, so they are laid into one zero-padded float canvas first (the boxes lie
    inside each photo, so the padding is never sampled). ``sampling_ratio=-1`` averages ceil(box / S)
    samples per output pixel on each axis: an area filter, close to (not bit for bit) the antialiased
    bilinear resize of torchvision's crop.
    """
    h, w = max(int(i.shape[1]) for i in images), max(int(i.shape[2]) for i in images)
    canvas = torch.zeros((len(images), 3, h, w), dtype=torch.float32, device=images[0].device)  # N x 3 x H x W
    for k, img in enumerate(images):
        canvas[k, :, : img.shape[1], : img.shape[2]] = img
    index = torch.arange(len(images), dtype=torch.float32, device=canvas.device)[:, None]
    rois = torch.cat([index, boxes.to(canvas.device)], dim=1)  # N x 5: image index, x1, y1, x2, y2
    out = roi_align(canvas, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return out.round_().clamp_(0.0, MAX_VALUE).to(torch.uint8)  # N x 3 x S x S


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call, the device synchronised around the timing."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def device_decode(photos: list[bytes], aug: SimCLRAugment, device: torch.device, repeats: int) -> dict[str, Any]:
    """Images/s of JPEG decode and of decode + both views' crop stages: on one CPU core with our decode
    (what a data worker does), and on the device (nvJPEG, one batched call) with the crops there too."""
    n = len(photos)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one data worker: one core
    try:
        cpu_images = [decode(b) for b in photos]
        cpu_decode_s = timed(lambda: [decode(b) for b in photos], torch.device("cpu"), 1)
        cpu_crops_s = timed(lambda: aug.two_crop_stages(cpu_images, RowRandom(row_keys(0, 1, np.arange(n)))),
                            torch.device("cpu"), 1)
    finally:
        torch.set_num_threads(threads)
    out: dict[str, Any] = {
        "photos": n, "shorter_side": min(cpu_images[0].shape[1:]),
        "cpu_decode_images_per_s_per_core": n / cpu_decode_s,
        "cpu_decode_and_crops_images_per_s_per_core": n / (cpu_decode_s + cpu_crops_s),
    }
    if device.type != "cuda":
        out["device"] = "skipped: no CUDA"
        return out
    torch.cuda.reset_peak_memory_stats(device)
    encoded = encoded_tensors(photos)
    decoded: list[Tensor] = decode_jpeg(encoded, device=device)  # N x (3, H_i, W_i) uint8 on the device
    diffs = [(d.cpu().int() - c.int()).abs().float().mean().item() for d, c in zip(decoded, cpu_images, strict=True)
             if d.shape == c.shape]
    gpu_decode_s = timed(lambda: decode_jpeg(encoded, device=device), device, repeats)
    crops_s = timed(lambda: aug.two_crop_stages(decoded), device, repeats)

    def roi_two_views() -> None:
        sizes = torch.tensor([img.shape[1:] for img in decoded])  # N x 2: H, W
        for _ in range(2):
            params = aug.sample_params(n, sizes[:, 0], sizes[:, 1], device=device)
            roi_crops(decoded, params.boxes, aug.output_size)

    roi_s = timed(roi_two_views, device, repeats)
    sizes = torch.tensor([img.shape[1:] for img in decoded])
    params = aug.sample_params(n, sizes[:, 0], sizes[:, 1], device=device)
    roi_diff = (roi_crops(decoded, params.boxes, aug.output_size).int() - aug.crop(decoded, params).int()).abs()

    def full_views() -> None:
        for crops, params in aug.two_crop_stages(decode_jpeg(encoded, device=device)):
            aug.colour(crops, params)

    views_s = timed(full_views, device, repeats)
    gpu_decode = n / gpu_decode_s
    out.update({
        "gpu_decode_images_per_s": gpu_decode,
        "gpu_decode_and_crops_images_per_s": n / (gpu_decode_s + crops_s),
        "gpu_decode_and_roi_align_crops_images_per_s": n / (gpu_decode_s + roi_s),
        "gpu_decode_crops_colour_images_per_s": n / views_s,
        "gpu_decode_equals_cpu_cores": gpu_decode / out["cpu_decode_images_per_s_per_core"],
        "gpu_decode_and_crops_equals_cpu_cores": (n / (gpu_decode_s + crops_s))
        / out["cpu_decode_and_crops_images_per_s_per_core"],
        "gpu_vs_cpu_decode_mean_abs_diff": float(np.mean(diffs)) if diffs else None,
        "roi_align_vs_crop_mean_abs_diff": float(roi_diff.float().mean()),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
    })
    return out


# ----------------------------------------------------------------------------- end to end


AUGMENT_MODES = ("cpu", "device", "pil", "nvjpeg", "nvjpeg_roi")
BYTES_MODES = ("nvjpeg", "nvjpeg_roi")  # the workers hand over JPEG bytes; the device decodes


class Chunks(Dataset[dict[str, Any]]):
    """Item i: one step's batch of photos, in the worker: decoded and cropped (``device``), fully
    augmented by our views (``cpu``), with RowRandom keys per row as the stream has; (``pil``) each
    photo through the per-image PIL pipeline MoCo, SwAV, solo-learn and lightly run (pil_pipeline.py); or
    (``nvjpeg``) only the JPEG bytes, which the device decodes."""

    def __init__(self, photos: list[bytes], batch: int, steps: int, size: int, mode: str) -> None:
        self.photos, self.batch, self.steps, self.mode = photos, batch, steps, mode
        self.aug = SimCLRAugment(size, strength=1.0, blur_p=0.5)
        self.pil = pil_transform(self.aug)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict[str, Any]:
        rows = np.arange(i * self.batch, (i + 1) * self.batch)
        if self.mode in BYTES_MODES:  # the bytes alone: decode, crops and colour run on the device
            return {"encoded": encoded_tensors([self.photos[r % len(self.photos)] for r in rows])}
        if self.mode == "pil":
            pairs = [pil_two_views(self.photos[r % len(self.photos)], self.pil) for r in rows]
            return {"view0": torch.stack([a for a, _ in pairs]), "view1": torch.stack([b for _, b in pairs])}
        images = [decode(self.photos[r % len(self.photos)]) for r in rows]
        gen = RowRandom(row_keys(seed=0, epoch=1, row_ids=rows))
        if self.mode == "cpu":
            v0, v1 = self.aug.two_views(images, gen)
            return {"view0": v0, "view1": v1}
        (c0, p0), (c1, p1) = self.aug.two_crop_stages(images, gen)
        cols = {**p0.columns("p0_"), **p1.columns("p1_")}
        return {"view0": c0, "view1": c1, **{k: torch.from_numpy(v) for k, v in cols.items()}}


def device_views(images: list[Tensor], aug: SimCLRAugment, roi: bool) -> tuple[Tensor, Tensor]:
    """Two full views of photos decoded on the device: our per-image crops (or one batched ``roi_align``),
    then the colour stage, all on the device."""
    if not roi:
        (c0, p0), (c1, p1) = aug.two_crop_stages(images)
        return aug.colour(c0, p0), aug.colour(c1, p1)
    sizes = torch.tensor([img.shape[1:] for img in images])  # N x 2: H, W
    views = []
    for _ in range(2):
        params = aug.sample_params(len(images), sizes[:, 0], sizes[:, 1], device=images[0].device)
        views.append(aug.colour(roi_crops(images, params.boxes, aug.output_size), params.colour()))
    return views[0], views[1]


def end_to_end(photos: list[bytes], workers: int, mode: str, case: ModelCase, device: torch.device,
               warmup: int, steps: int) -> dict[str, Any]:
    step = Step(case, device)
    aug = SimCLRAugment(case.size, strength=1.0, blur_p=0.5)
    data = Chunks(photos, case.batch, warmup + steps, case.size, mode)
    loader = DataLoader(data, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=2)
    it: Iterator[dict[str, Any]] = iter(loader)
    wait = 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            wait, start = 0.0, time.perf_counter()
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        if mode in BYTES_MODES:
            step(*device_views(decode_jpeg(batch["encoded"], device=device), aug, mode == "nvjpeg_roi"))
            continue
        v0 = batch["view0"].to(device, non_blocking=True)
        v1 = batch["view1"].to(device, non_blocking=True)
        if mode == "device":
            v0 = aug.colour(v0, ColourParams.from_columns(batch, "p0_", device))
            v1 = aug.colour(v1, ColourParams.from_columns(batch, "p1_", device))
        step(v0, v1)
    sync(device)
    seconds = time.perf_counter() - start
    del it, loader
    out = {"workers": workers, "augment": mode, "batch": case.batch,
           "images_per_s": case.batch * steps / seconds, "data_wait_frac": wait / seconds,
           "images_per_s_per_worker": case.batch * steps / seconds / workers}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


# ----------------------------------------------------------------------------- main


def _shm_gib() -> float | None:
    """Size of /dev/shm, where DataLoader workers hand batches over (small in some containers)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return round(st.f_blocks * st.f_frsize / 2**30, 2)


PARTS = ("model", "augment", "decode", "e2e", "compile")


def cores_per_gpu(e2e: list[dict[str, Any]], limit: float | None) -> dict[str, float]:
    """Per loader: CPU cores (one worker each) to feed the model-only limit, at one worker's rate when
    the loader is the bottleneck (the fewest workers measured, where the GPU waits for data)."""
    out = {}
    for mode in AUGMENT_MODES:
        rows = [r for r in e2e if r["augment"] == mode]
        if rows and limit and mode not in BYTES_MODES:  # nvjpeg's workers only slice bytes: the GPU does the work
            first = min(rows, key=lambda r: r["workers"])
            out[mode] = limit / first["images_per_s_per_worker"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    p.add_argument("--json", action="store_true", help="accepted for the bench contract; the JSON is always printed")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16], help="end-to-end DataLoader workers")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip what would start after this many seconds")
    p.add_argument("--out", default="", help="also write the JSON so far to this file after every part")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="what to run (default: all)")
    p.add_argument("--modes", nargs="+", default=list(AUGMENT_MODES), choices=AUGMENT_MODES,
                   help="end-to-end loaders (default: all)")
    args = p.parse_args()
    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    quick = args.quick or not cuda
    device = torch.device("cuda" if cuda and not args.quick else "cpu")
    skipped: list[dict[str, str]] = []
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if quick:
        warmup, steps, r18_batch, r50_batch, r50_size, workers = 1, 1, 4, 2, 32, [1]
    else:
        warmup, steps, r18_batch, r50_batch, r50_size, workers = 5, 20, 512, 256, 224, args.workers
    shorter = 64 if quick else 375

    out: dict[str, Any] = {
        "benchmark": "gpu",
        "settings": {"quick": quick, "device": str(device), "warmup_steps": warmup, "timed_steps": steps,
                     "workers": workers, "photo_shorter_side": shorter, "decode_size": DECODE_SIZE,
                     "budget_s": args.budget_s, "temperature": TEMPERATURE, "channels_last": True},
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__,
                    "torchvision": __import__("torchvision").__version__,
                    "gpu": torch.cuda.get_device_name(0) if cuda else None, "cuda": torch.version.cuda,
                    "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()], "dev_shm_gib": _shm_gib()},
        "model_only": [], "skipped": skipped,
        "notes": [] if device.type == "cuda" else ["no CUDA (or --quick): everything ran on the CPU at tiny sizes; "
                                                    "the figures are plumbing, not GPU performance"],
    }

    def save(part: str) -> None:
        out["wall_s"] = time.perf_counter() - t0
        sys.stderr.write(f"[{out['wall_s']:6.1f} s] {part} done\n")
        if args.out:
            Path(args.out).write_text(json.dumps(out, sort_keys=True) + "\n")

    def over_budget(what: str) -> bool:
        if time.perf_counter() - t0 > args.budget_s:
            skipped.append({"what": what, "why": f"past the {args.budget_s:.0f} s budget"})
            return True
        return False

    cases = []
    for arch, stem, size, batch in (("resnet18", True, 32, r18_batch), ("resnet50", False, r50_size, r50_batch)):
        for bf16, comp in ((True, False), (False, False), (True, True)):
            cases.append(ModelCase(f"{arch} {size}px {'bf16' if bf16 else 'fp32'}{' compile' if comp else ''}",
                                   arch, stem, size, batch, bf16, comp))
    cases.append(ModelCase(f"resnet50 {r50_size}px bf16, SGD foreach", "resnet50", False, r50_size, r50_batch,
                           True, False, "sgd"))
    compiled = [c for c in cases if c.compile]  # last: a minute or more each, so the budget cuts them first
    limit_case = cases[3]  # ResNet-50 bf16 with LARS: the step the end-to-end rows feed
    for case in (c for c in cases if not c.compile):
        if ("model" in args.parts or (case == limit_case and "e2e" in args.parts)) and not over_budget(case.name):
            out["model_only"].append(model_only(case, device, warmup, steps))
    limit = next((r for r in out["model_only"] if r["case"]["arch"] == "resnet50" and r["case"]["bf16"]
                  and r["case"]["optimizer"] == "lars"), None)
    out["model_only_limit_images_per_s"] = limit["images_per_s"] if limit else None
    save("model only")

    e2e_case = ModelCase(f"resnet50 {r50_size}px bf16", "resnet50", False, r50_size, r50_batch, True, False)
    if "augment" in args.parts:
        out["device_augment"] = device_augment(device, 4 if quick else 256, 224 if not quick else 32,
                                               1 if quick else 10)
        out["ntxent_bf16_vs_fp32"] = ntxent_bf16_vs_fp32(
            ModelCase("loss", "resnet50", False, r50_size, r50_batch, True, False), device)
        save("device augment, loss")

    photos, photo_kind = make_photos(2 * r50_batch if quick else 1024, shorter=shorter)
    out["settings"]["photos"] = photo_kind
    if "decode" in args.parts and not over_budget("device_decode"):
        out["device_decode"] = device_decode(photos[: 4 if quick else r50_batch],
                                             SimCLRAugment(r50_size, strength=1.0, blur_p=0.5), device,
                                             1 if quick else 10)
        save("device decode")

    e2e: list[dict[str, Any]] = []
    out["end_to_end"] = e2e
    # every loader at each N before the next N: a budget cut loses the largest N, not a loader
    for w in workers if "e2e" in args.parts else []:
        for mode in args.modes:
            name = f"end_to_end {mode} augment, {w} workers"
            if mode in BYTES_MODES and w != workers[0]:
                continue  # its workers only slice bytes: one worker count says it
            if over_budget(name):
                continue
            try:
                r = end_to_end(photos, w, mode, e2e_case, device, 1 if quick else 3, 2 if quick else 15)
            except (RuntimeError, OSError) as err:  # e.g. a DataLoader worker killed by a small /dev/shm
                skipped.append({"what": name, "why": f"{type(err).__name__}: {str(err)[:300]}"})
                continue
            r["ratio_to_model_only"] = r["images_per_s"] / limit["images_per_s"] if limit else None
            e2e.append(r)
        out["cores_per_gpu"] = cores_per_gpu(e2e, out["model_only_limit_images_per_s"])
        save(f"end to end, {w} workers")

    for case in compiled if "compile" in args.parts else []:
        if device.type != "cuda":
            skipped.append({"what": case.name, "why": "torch.compile runs on the GPU only (minutes of compile on CPU)"})
        elif not over_budget(case.name):
            out["model_only"].append(model_only(case, device, warmup, steps))
            save(case.name)
    save("all")

    for r in out["model_only"]:
        sys.stderr.write(f"{r['case']['name']:40s} {r['images_per_s']:10.1f} img/s  {r['step_ms']:8.1f} ms/step\n")
    for r in e2e:
        sys.stderr.write(f"e2e {r['augment']:6s} aug {r['workers']:2d} workers {r['images_per_s']:10.1f} img/s  "
                         f"wait {r['data_wait_frac']:.0%}\n")
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
