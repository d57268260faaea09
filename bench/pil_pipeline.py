"""The per-image pipeline MoCo's, SwAV's, solo-learn's and lightly's data loaders run: torchvision's
v1 transforms on the PIL image (RandomResizedCrop, flip, ColorJitter, grayscale) and PIL's own
``ImageFilter.GaussianBlur(radius=σ)`` (box-blur passes approximating the Gaussian), with the recipe of a
``SimCLRAugment``. The baseline "what users run" of bench/jpeg_views.py and bench/gpu.py; imports only
torchvision, PIL and workloads/ (the GPU machine has no Ray)."""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import torch
from PIL import Image, ImageFilter

from workloads.augment.transform import SimCLRAugment


class PILBlur:
    """Their GaussianBlur: PIL's, radius = σ drawn from ``sigma``, with probability p."""

    def __init__(self, p: float, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        self.p, self.sigma = p, sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def pil_transform(aug: SimCLRAugment) -> Callable[[Image.Image], torch.Tensor]:
    """One view of a PIL image as uint8 (3, S, S), the recipe of ``aug``."""
    from torchvision import transforms as T

    brightness, contrast, saturation, hue = aug.jitter
    return T.Compose([
        T.RandomResizedCrop(aug.output_size, scale=aug.scale, ratio=aug.ratio),
        T.RandomHorizontalFlip(p=aug.flip_p),
        T.RandomApply([T.ColorJitter(brightness, contrast, saturation, hue)], p=aug.jitter_p),
        T.RandomGrayscale(p=aug.gray_p),
        PILBlur(aug.blur_p, aug.blur_sigma),
        T.PILToTensor(),
    ])


def pil_two_views(data: bytes, transform: Callable[[Image.Image], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL decode of one encoded photo, then two views of it."""
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
    return transform(rgb), transform(rgb)
