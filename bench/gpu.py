"""What a GPU does with SimCLR, in one command: the model-only limit, the device augmentation, and
how many CPU processes of decode + crop it takes to feed the GPU (issue 15).

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
  model-only limit of the same step.

Imports only torch, torchvision, numpy, PIL and workloads/ (the GPU machine has no Ray or MLflow).
Photos: crops of scikit-learn's sample photographs when scikit-learn is installed, else synthetic
textured images; the JSON says which. Without CUDA (or with ``--quick``) everything runs on the CPU
at tiny sizes in seconds, GPU-only parts (torch.compile) marked skipped: the smoke test's path.

    python bench/gpu.py [--quick] [--json] [--workers 2 4 8 16] [--budget-s 420]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # workloads/ without an install
from pil_pipeline import pil_transform, pil_two_views

from workloads.decode import decode_whole
from workloads.method import normalize
from workloads.optim import build_optimizer
from workloads.rng import RowRandom, row_keys
from workloads.simclr.augment import ColourParams, SimCLRAugment
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
        torch.cuda.reset_peak_memory_stats(device)
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


# ----------------------------------------------------------------------------- end to end


AUGMENT_MODES = ("cpu", "device", "pil")


class Chunks(Dataset[dict[str, Tensor]]):
    """Item i: one step's batch of photos, in the worker: decoded and cropped (``device``), fully
    augmented by our views (``cpu``), with RowRandom keys per row as the stream has; or (``pil``) each
    photo through the per-image PIL pipeline MoCo, SwAV, solo-learn and lightly run (pil_pipeline.py)."""

    def __init__(self, photos: list[bytes], batch: int, steps: int, size: int, mode: str) -> None:
        self.photos, self.batch, self.steps, self.mode = photos, batch, steps, mode
        self.aug = SimCLRAugment(size, strength=1.0, blur_p=0.5)
        self.pil = pil_transform(self.aug)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        rows = np.arange(i * self.batch, (i + 1) * self.batch)
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


def end_to_end(photos: list[bytes], workers: int, mode: str, case: ModelCase, device: torch.device,
               warmup: int, steps: int) -> dict[str, Any]:
    step = Step(case, device)
    aug = SimCLRAugment(case.size, strength=1.0, blur_p=0.5)
    data = Chunks(photos, case.batch, warmup + steps, case.size, mode)
    loader = DataLoader(data, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=2)
    it: Iterator[dict[str, Tensor]] = iter(loader)
    wait = 0.0
    start = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            wait, start = 0.0, time.perf_counter()
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        v0 = batch["view0"].to(device, non_blocking=True)
        v1 = batch["view1"].to(device, non_blocking=True)
        if mode == "device":
            v0 = aug.colour(v0, ColourParams.from_columns(batch, "p0_", device))
            v1 = aug.colour(v1, ColourParams.from_columns(batch, "p1_", device))
        step(v0, v1)
    sync(device)
    seconds = time.perf_counter() - start
    del it, loader
    return {"workers": workers, "augment": mode, "batch": case.batch,
            "images_per_s": case.batch * steps / seconds, "data_wait_frac": wait / seconds,
            "images_per_s_per_worker": case.batch * steps / seconds / workers}


# ----------------------------------------------------------------------------- main


def _shm_gib() -> float | None:
    """Size of /dev/shm, where DataLoader workers hand batches over (small in some containers)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return round(st.f_blocks * st.f_frsize / 2**30, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    p.add_argument("--json", action="store_true", help="accepted for the bench contract; the JSON is always printed")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16], help="end-to-end DataLoader workers")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip what would start after this many seconds")
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
    results = []
    for case in cases:
        if case.compile and device.type != "cuda":
            skipped.append({"what": case.name, "why": "torch.compile runs on the GPU only (minutes of compile on CPU)"})
            continue
        if not over_budget(case.name):
            results.append(model_only(case, device, warmup, steps))
    limit = next((r for r in results if r["case"]["arch"] == "resnet50" and r["case"]["bf16"]
                  and not r["case"]["compile"] and r["case"]["optimizer"] == "lars"), None)
    e2e_case = ModelCase(f"resnet50 {r50_size}px bf16", "resnet50", False, r50_size, r50_batch, True, False)

    aug_out = device_augment(device, 4 if quick else 256, 224 if not quick else 32, 1 if quick else 10)
    loss_diff = ntxent_bf16_vs_fp32(ModelCase("loss", "resnet50", False, r50_size, r50_batch, True, False), device)

    photos, photo_kind = make_photos(2 * r50_batch if quick else 1024, shorter=375 if not quick else 64)
    e2e = []
    for w in workers:  # every loader at each N before the next N: a budget cut loses the largest N, not a loader
        for mode in AUGMENT_MODES:
            name = f"end_to_end {mode} augment, {w} workers"
            if over_budget(name):
                continue
            try:
                r = end_to_end(photos, w, mode, e2e_case, device, 1 if quick else 3, 2 if quick else 15)
            except (RuntimeError, OSError) as err:  # e.g. a DataLoader worker killed by a small /dev/shm
                skipped.append({"what": name, "why": f"{type(err).__name__}: {str(err)[:300]}"})
                continue
            r["ratio_to_model_only"] = r["images_per_s"] / limit["images_per_s"] if limit else None
            e2e.append(r)

    out = {
        "benchmark": "gpu",
        "settings": {"quick": quick, "device": str(device), "warmup_steps": warmup, "timed_steps": steps,
                     "workers": workers, "photos": photo_kind, "photo_shorter_side": 375 if not quick else 64,
                     "decode_size": DECODE_SIZE, "budget_s": args.budget_s, "temperature": TEMPERATURE,
                     "channels_last": True},
        "machine": {"cores": os.cpu_count(), "torch": torch.__version__,
                    "torchvision": __import__("torchvision").__version__,
                    "gpu": torch.cuda.get_device_name(0) if cuda else None, "cuda": torch.version.cuda,
                    "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()], "dev_shm_gib": _shm_gib()},
        "model_only": results,
        "model_only_limit_images_per_s": limit["images_per_s"] if limit else None,
        "device_augment": aug_out,
        "ntxent_bf16_vs_fp32": loss_diff,
        "end_to_end": e2e,
        "skipped": skipped,
        "notes": [] if device.type == "cuda" else ["no CUDA (or --quick): everything ran on the CPU at tiny sizes; "
                                                    "the figures are plumbing, not GPU performance"],
        "wall_s": time.perf_counter() - t0,
    }
    for r in results:
        sys.stderr.write(f"{r['case']['name']:40s} {r['images_per_s']:10.1f} img/s  {r['step_ms']:8.1f} ms/step\n")
    for r in e2e:
        sys.stderr.write(f"e2e {r['augment']:6s} aug {r['workers']:2d} workers {r['images_per_s']:10.1f} img/s  "
                         f"wait {r['data_wait_frac']:.0%}\n")
    sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
