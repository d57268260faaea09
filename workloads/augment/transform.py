"""SimCLR augmentation on a whole batch at once, with per-image random parameters.

The recipe is the SimCLR one (Chen et al. 2020, appendix A; google-research/simclr `data_util.py`):
random resized crop, horizontal flip, colour jitter in random order, grayscale, optional Gaussian
blur. A batched torchvision v2 transform draws ONE set of parameters for the whole batch, which is a
weaker augmentation (every image of a batch cropped and coloured alike); a per-image v2 loop is
correct but slow. `SimCLRAugment` draws every parameter per image, as the per-image torchvision
recipe does (`reference_augment`), and applies each op to the whole batch with tensor ops.

A view is two stages, so the colour half can run on the training device:
- the crop stage (``SimCLRAugment.crop_stage``, CPU, next to decode): draws all of a view's
  parameters per row and cuts each image's random resized crop to uint8 S x S;
- the colour stage (``SimCLRAugment.colour``, any torch device): flip, colour jitter, grayscale and
  blur of a whole uint8 batch, from the per-row ``ColourParams`` (packed as a few small numpy
  columns by ``ColourParams.columns`` to travel with the crops).
``SimCLRAugment.__call__`` is exactly the crop stage then the colour stage (the crop is rounded to
uint8 values in both), so the statistics tests of the one cover the other.

Pure PyTorch + torchvision; no Ray. Images go in and come out as uint8 so that the bytes moved
between Ray Data workers and trainers stay 4x smaller than float32; normalisation happens later on
the training device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import partial

import numpy as np
import torch
from torch import Tensor

from workloads.augment.ops import (
    CHUNK_PIXELS,
    COLOUR_OPS,
    MAX_VALUE,
    apply_subset,
    bernoulli,
    blur_kernel_size,
    chunks,
    crop_resize,
    gaussian_blur,
    grayscale3,
    hflip,
    image_sizes,
    jitter_strengths,
    sample_crop_boxes,
    uniform,
)
from workloads.method import Images
from workloads.rng import RandomSource, rand


@dataclass(frozen=True)
class ColourParams:
    """The per-image parameters of a view's colour stage: everything but the crop box.

    The colour stage (flip, colour jitter, grayscale, blur) runs on a uint8 crop of fixed size, so it
    can run wherever the crops go, the training device included; these are what it needs besides
    the crops. ``columns`` packs them into a few small numpy arrays (about 30 bytes a row) that
    travel next to the crops, through Ray Data for instance; ``from_columns`` unpacks them.
    """

    flip: Tensor  # (N,) bool
    jitter: Tensor  # (N,) bool: colour jitter applied at all
    order: Tensor  # (N, 4) integer: jitter op index (BRIGHTNESS..HUE) at each position
    factors: Tensor  # (N, 4) float32: brightness, contrast, saturation factors, hue shift
    gray: Tensor  # (N,) bool
    blur: Tensor  # (N,) bool
    sigma: Tensor  # (N,) float32: blur σ

    def __len__(self) -> int:
        return len(self.flip)

    def select(self, rows: slice) -> ColourParams:
        """The parameters of crops[rows]."""
        return ColourParams(*(getattr(self, f.name)[rows] for f in fields(self)))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ColourParams:
        """All parameters on ``device`` (a no-op for those already there)."""
        return ColourParams(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))

    def columns(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The parameters as numpy columns named ``prefix + field``: bool, int8 (N, 4) order,
        float32 (N, 4) factors and float32 σ. Values are unchanged (order fits int8), so the colour
        stage gives the same output from the columns as from these tensors."""
        out = {prefix + f.name: getattr(self, f.name).cpu().numpy() for f in fields(self)}
        out[prefix + "order"] = out[prefix + "order"].astype(np.int8)
        return out

    @classmethod
    def from_columns(cls, columns: Mapping[str, np.ndarray | Tensor], prefix: str = "",
                     device: torch.device | str | None = None) -> ColourParams:
        """Inverse of ``columns`` (numpy arrays or tensors, e.g. from ``iter_torch_batches``)."""
        values = [torch.as_tensor(columns[prefix + f.name], device=device) for f in fields(cls)]
        return cls(*values)


@dataclass(frozen=True)
class ViewParams:
    """Every random parameter of one view of N images, drawn independently per image."""

    boxes: Tensor  # (N, 4) float32: crop x1, y1, x2, y2 in input pixels
    flip: Tensor  # (N,) bool
    jitter: Tensor  # (N,) bool: colour jitter applied at all
    order: Tensor  # (N, 4) int64: jitter op index (BRIGHTNESS..HUE) at each position
    factors: Tensor  # (N, 4) float32: brightness, contrast, saturation factors, hue shift
    gray: Tensor  # (N,) bool
    blur: Tensor  # (N,) bool
    sigma: Tensor  # (N,) float32: blur σ

    def select(self, rows: slice) -> ViewParams:
        """The parameters of images[rows]."""
        return ViewParams(*(getattr(self, f.name)[rows] for f in fields(self)))

    def colour(self) -> ColourParams:
        """The parameters of the colour stage (all but the crop boxes)."""
        return ColourParams(*(getattr(self, f.name) for f in fields(ColourParams)))


def _check_range(name: str, value: float, low: float, high: float, allowed: str,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Raise ValueError naming the argument, its allowed range and the value given."""
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        raise ValueError(f"{name} must be in {allowed}; got {value}")


def _check_pair(name: str, pair: tuple[float, float], example: str) -> None:
    """Raise ValueError unless pair is (low, high) with 0 < low <= high < inf."""
    if len(pair) != 2 or not 0.0 < pair[0] <= pair[1] < math.inf:
        raise ValueError(f"{name} must be (low, high) with 0 < low <= high, e.g. {example}; got {pair}")


class SimCLRAugment:
    """SimCLR views of a uint8 batch (N, 3, H, W) → uint8 (N, 3, S, S), parameters drawn per image.

    Same distribution as `reference_augment` applied image by image: each crop is torchvision's own
    (``resized_crop`` of the same box, bit for bit), and each colour op runs once on the batch: the
    jitter ops on index subsets (about 4 ops × N of work for the random order), a grouped convolution
    for per-image blur kernels.
    """

    def __init__(
        self,
        output_size: int,
        strength: float = 0.5,
        min_scale: float = 0.08,
        max_scale: float = 1.0,
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        blur_p: float = 0.0,
        blur_kernel_frac: float = 0.1,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < 1:
            raise ValueError(f"output_size must be an integer >= 1 (pixels per side); got {output_size!r}")
        _check_range("strength", strength, 0.0, math.inf, "[0, inf) (0.5 for CIFAR, 1.0 for ImageNet)")
        _check_range("max_scale", max_scale, 0.0, 1.0, "(0, 1]", low_open=True)
        _check_range("min_scale", min_scale, 0.0, max_scale, "(0, max_scale]", low_open=True)
        _check_pair("ratio", ratio, "(3/4, 4/3)")
        for name, p in (("flip_p", flip_p), ("jitter_p", jitter_p), ("gray_p", gray_p), ("blur_p", blur_p)):
            _check_range(name, p, 0.0, 1.0, "[0, 1] (a probability)")
        _check_range("blur_kernel_frac", blur_kernel_frac, 0.0, 1.0, "(0, 1] (kernel side / image side)",
                     low_open=True)
        _check_pair("blur_sigma", blur_sigma, "(0.1, 2.0)")
        kernel_size = blur_kernel_size(output_size, blur_kernel_frac)
        if blur_p > 0 and kernel_size // 2 >= output_size:
            raise ValueError(f"output_size must be >= {kernel_size // 2 + 1} for a {kernel_size}-pixel blur "
                             f"kernel (reflect padding); got {output_size}; set blur_p=0 for tiny images")

        self.output_size = output_size
        self.strength = float(strength)
        self.scale = (float(min_scale), float(max_scale))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_p = float(flip_p)
        self.jitter_p = float(jitter_p)
        self.gray_p = float(gray_p)
        self.blur_p = float(blur_p)
        self.blur_kernel_size = kernel_size
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.jitter = jitter_strengths(self.strength)

    def __repr__(self) -> str:
        return (f"SimCLRAugment(output_size={self.output_size}, strength={self.strength}, "
                f"scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p}, jitter_p={self.jitter_p}, "
                f"gray_p={self.gray_p}, blur_p={self.blur_p}, blur_kernel_size={self.blur_kernel_size}, "
                f"blur_sigma={self.blur_sigma})")

    def factor_ranges(self) -> tuple[tuple[float, float], ...]:
        """[low, high] per jitter op, as ColorJitter: factors in [max(0, 1 − a), 1 + a], hue in [-h, h]."""
        *factors, hue = self.jitter
        return (*((max(0.0, 1.0 - a), 1.0 + a) for a in factors), (-hue, hue))

    def active_ops(self) -> list[int]:
        """Jitter ops with a non-degenerate range; ColorJitter skips the others (None), so do we."""
        identity = (1.0, 1.0, 1.0, 0.0)
        return [op for op, (low, high) in enumerate(self.factor_ranges())
                if not low == high == identity[op]]

    def sample_params(self, n: int, height: int | Tensor, width: int | Tensor, generator: RandomSource = None,
                      device: torch.device | None = None) -> ViewParams:
        """Draw all random parameters of one view for n images of height × width (each a size, or
        one per image), in a fixed order.

        Everything is drawn whatever the probabilities, so with one seed the crops do not change
        when, say, blur_p does.
        """
        device = torch.device("cpu") if device is None else device
        boxes = sample_crop_boxes(n, height, width, self.scale, self.ratio, generator, device)
        flip = bernoulli(n, self.flip_p, generator, device)
        jitter = bernoulli(n, self.jitter_p, generator, device)
        order = rand(generator, n, 4, device=device).argsort(dim=1)  # uniform permutation
        factors = torch.stack(
            [uniform(n, low, high, generator, device) for low, high in self.factor_ranges()], dim=1
        )  # (n, 4)
        gray = bernoulli(n, self.gray_p, generator, device)
        blur = bernoulli(n, self.blur_p, generator, device)
        sigma = uniform(n, self.blur_sigma[0], self.blur_sigma[1], generator, device)
        return ViewParams(boxes, flip, jitter, order, factors, gray, blur, sigma)

    def apply(self, images: Images, params: ViewParams, chunk_pixels: int = CHUNK_PIXELS) -> Tensor:
        """Apply given parameters: uint8 (N, 3, H, W), or N uint8 (3, H_i, W_i) images of different
        shapes, → uint8 (N, 3, S, S). The same output as ``colour(crop(images, params), params.colour())``.

        Works through the batch in chunks of about `chunk_pixels` output pixels: every op is still
        vectorised over a chunk's images, but the float temporaries stay small enough to be reused
        from cache and the allocator instead of being page-faulted in for every op (about 2× faster at
        224 px; at 32 px a chunk is the whole batch). Parameters are drawn for the whole batch,
        so the output does not depend on the chunk size.
        """
        _check_images(images)
        out = self._empty(len(images), images[0].device)
        for part in chunks(len(images), self.output_size, chunk_pixels):
            p = params.select(part)
            x = crop_resize(images[part], p.boxes, self.output_size).float()  # the crop stage
            out[part] = self._colour_chunk(x, p.colour())
        return out

    def crop(self, images: Images, params: ViewParams) -> Tensor:
        """The crop stage alone: each image's random resized crop, uint8 (N, 3, S, S).

        The decode-side half of a view, for a CPU worker: its output has a fixed size whatever the
        photos' shapes, is uint8 (4x fewer bytes to move than float), and with ``colour`` on
        ``params.colour()`` gives exactly ``apply``'s output.
        """
        _check_images(images)
        return crop_resize(images, params.boxes, self.output_size)

    def colour(self, crops: Tensor, params: ColourParams, chunk_pixels: int | None = None) -> Tensor:
        """The colour stage alone: flip, colour jitter, grayscale and blur of uint8 crops
        (N, 3, S, S) → uint8 (N, 3, S, S), on the crops' device (a GPU included).

        ``params`` may be on any device; they are moved to the crops'. ``chunk_pixels`` defaults to
        ``CHUNK_PIXELS`` on CPU, where chunks keep the temporaries in cache, and to the whole
        batch elsewhere, where one launch per op over the batch is what is fast.
        """
        _check_images(crops)
        if crops.shape[2:] != (self.output_size, self.output_size):
            raise ValueError(f"crops must be {self.output_size} x {self.output_size} (the crop stage's "
                             f"output_size); got {tuple(crops.shape[2:])}")
        if len(params) != len(crops):
            raise ValueError(f"params hold {len(params)} rows for {len(crops)} crops; pass each crop's own")
        params = params.to(crops.device)
        if chunk_pixels is None:
            chunk_pixels = CHUNK_PIXELS if crops.device.type == "cpu" else max(1, crops[0].numel() * len(crops))
        out = torch.empty_like(crops)
        for part in chunks(len(crops), self.output_size, chunk_pixels):
            out[part] = self._colour_chunk(crops[part].float(), params.select(part))
        return out

    def _empty(self, n: int, device: torch.device) -> Tensor:
        return torch.empty((n, 3, self.output_size, self.output_size), dtype=torch.uint8, device=device)

    def _colour_chunk(self, x: Tensor, params: ColourParams) -> Tensor:
        """The colour stage on one chunk of float crops (modified in place), every op vectorised."""
        apply_subset(x, params.flip, hflip)
        ops = self.active_ops()
        for position in range(4):  # ColorJitter's random order: each op on the images that have it here
            for op in ops:
                chosen = params.jitter & (params.order[:, position] == op)
                apply_subset(x, chosen, COLOUR_OPS[op], params.factors[:, op])
        apply_subset(x, params.gray, grayscale3)
        if self.blur_p > 0:
            apply_subset(x, params.blur, partial(gaussian_blur, kernel_size=self.blur_kernel_size),
                          params.sigma, max_runs=1)
        return x.round_().clamp_(0.0, MAX_VALUE).to(torch.uint8)

    def __call__(self, images: Images, generator: RandomSource = None) -> Tensor:
        """One augmented view per image, each with independently drawn parameters.

        images: uint8 (N, 3, H, W), or a list of N uint8 (3, H_i, W_i) whole images (each cropped
        from its own whole area) → uint8 (N, 3, output_size, output_size). With `generator` all
        randomness comes from it (same seed, same output; a ``RowRandom``: same row key, same
        view); otherwise from torch's default.
        """
        _check_images(images)
        n = len(images)
        if n == 0:
            return torch.empty((0, 3, self.output_size, self.output_size), dtype=torch.uint8)
        height, width = image_sizes(images)
        params = self.sample_params(n, height, width, generator, images[0].device)
        return self.apply(images, params)

    def two_views(self, images: Images, generator: RandomSource = None) -> tuple[Tensor, Tensor]:
        """Two independent views of every image: the positive pairs of SimCLR's loss."""
        return self(images, generator), self(images, generator)

    def crop_stage(self, images: Images, generator: RandomSource = None) -> tuple[Tensor, ColourParams]:
        """The CPU half of one view: draws all of the view's parameters (as ``__call__`` does, the
        same draws in the same order) and crops; returns the uint8 crops (N, 3, S, S) and the
        parameters that ``colour`` needs. ``colour(*crop_stage(images, g))`` equals ``self(images, g')``
        bit for bit when g and g' are in the same state."""
        _check_images(images)
        n = len(images)
        if n == 0:
            params = self.sample_params(0, 1, 1, generator)
            return self._empty(0, torch.device("cpu")), params.colour()
        height, width = image_sizes(images)
        params = self.sample_params(n, height, width, generator, images[0].device)
        return self.crop(images, params), params.colour()

    def two_crop_stages(self, images: Images, generator: RandomSource = None
                        ) -> tuple[tuple[Tensor, ColourParams], tuple[Tensor, ColourParams]]:
        """``crop_stage`` for both views, drawn in ``two_views``' order: the colour stage of each
        then gives ``two_views``' output exactly."""
        return self.crop_stage(images, generator), self.crop_stage(images, generator)


def _check_images(images: Images) -> None:
    """Fail fast, in one sentence, on anything but uint8 (N, 3, H, W) or a list of uint8 (3, H, W)."""
    if isinstance(images, list):
        for img in images:
            _check_images(img.unsqueeze(0) if isinstance(img, Tensor) else img)
        return
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (N, 3, H, W) or a list of (3, H, W) tensors; "
                         f"got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 in [0, 255] (normalise later, on the training device); "
                         f"got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"images must have shape (N, 3, H, W) (RGB, channels first); "
                         f"got {tuple(images.shape)}")


def reference_augment(
    output_size: int,
    strength: float = 0.5,
    min_scale: float = 0.08,
    max_scale: float = 1.0,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    jitter_p: float = 0.8,
    gray_p: float = 0.2,
    blur_p: float = 0.0,
    blur_kernel_frac: float = 0.1,
    blur_sigma: tuple[float, float] = (0.1, 2.0),
) -> Callable[[Tensor], Tensor]:
    """The standard per-image torchvision v2 pipeline of the same recipe, on one uint8 (3, H, W) image.

    torchvision's tensor transforms, with the exact k x k blur: a baseline for benchmarks and the
    reference for the statistics tests. (MoCo, SwAV, solo-learn and lightly run torchvision's
    transforms on PIL images with PIL's box-approximated blur instead: bench/jpeg_views.py's PIL side.)
    Applied to a batch at once it draws one parameter set for the whole batch.
    Arguments are validated exactly as SimCLRAugment's.
    """
    from torchvision.transforms import v2  # the baseline's only: SimCLRAugment is plain torch (ops.py)

    aug = SimCLRAugment(output_size, strength, min_scale, max_scale, ratio, flip_p, jitter_p, gray_p,
                        blur_p, blur_kernel_frac, blur_sigma)
    brightness, contrast, saturation, hue = aug.jitter
    return v2.Compose([
        v2.RandomResizedCrop(output_size, scale=aug.scale, ratio=aug.ratio, antialias=True),
        v2.RandomHorizontalFlip(p=aug.flip_p),
        v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=aug.jitter_p),
        v2.RandomGrayscale(p=aug.gray_p),  # keeps 3 channels for 3-channel input
        v2.RandomApply([v2.GaussianBlur(aug.blur_kernel_size, sigma=aug.blur_sigma)], p=aug.blur_p),
    ])
