"""SimCLR augmentation on a whole batch at once, with per-image random parameters.

The recipe is the SimCLR one (Chen et al. 2020, appendix A; google-research/simclr `data_util.py`):
random resized crop, horizontal flip, colour jitter in random order, grayscale, optional Gaussian
blur. A batched torchvision v2 transform draws ONE set of parameters for the whole batch, which is a
weaker augmentation (see SIMCLR.md, "Per-sample random parameters matter"); a per-image v2 loop is
correct but slow. `SimCLRAugment` draws every parameter per image, as the per-image torchvision
recipe does (`reference_augment`), and applies each op to the whole batch with tensor ops.

A view is two stages (issue 15), so the colour half can run on the training device:
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
from torch.nn import functional as F
from torchvision.ops import roi_align
from torchvision.transforms import v2

from workloads.method import Images
from workloads.rng import RandomSource, rand

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
LUMA_R, LUMA_G, LUMA_B = 0.2989, 0.587, 0.114
MAX_VALUE = 255.0  # the ops work on float images in uint8 range
# Output pixels per chunk in SimCLRAugment.apply: ~3 MB of float32 RGB, about 5 images at 224 px.
CHUNK_PIXELS = 1 << 18
CROP_ATTEMPTS = 10  # RandomResizedCrop's tries before the centre-crop fallback
# Colour-jitter op indices, in torchvision ColorJitter's numbering (its fn_idx).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


# ----------------------------------------------------------------------------- recipe helpers


def jitter_strengths(strength: float) -> tuple[float, float, float, float]:
    """(brightness, contrast, saturation, hue) jitter amounts for SimCLR strength s.

    0.8·s for the first three and 0.2·s for hue (SimCLR appendix A); hue is capped at 0.5, the
    largest shift ColorJitter accepts (a half turn of the colour wheel).
    """
    return 0.8 * strength, 0.8 * strength, 0.8 * strength, min(0.2 * strength, 0.5)


def blur_kernel_size(output_size: int, kernel_frac: float) -> int:
    """Odd Gaussian kernel size ≈ kernel_frac × output_size, at least 3 (23 at 224 px with 0.1)."""
    size = max(3, round(kernel_frac * output_size))
    return size if size % 2 == 1 else size + 1


def _uniform(n: int, low: float, high: float, generator: RandomSource, device: torch.device,
             dtype: torch.dtype = torch.float32, k: int = 0) -> Tensor:
    """Draws uniform in [low, high): (n,), or (n, k) when k > 0."""
    return rand(generator, n, k, dtype=dtype, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, generator: RandomSource, device: torch.device) -> Tensor:
    """n booleans, True with probability p (torchvision's `torch.rand(1) < p` test, per image)."""
    return rand(generator, n, device=device) < p


def sample_crop_boxes(n: int, height: int | Tensor, width: int | Tensor, scale: tuple[float, float],
                      ratio: tuple[float, float], generator: RandomSource = None,
                      device: torch.device | None = None) -> Tensor:
    """Per-image crop boxes (n, 4) as x1, y1, x2, y2 in input pixels, float32.

    Same distribution as torchvision's RandomResizedCrop.make_params, vectorised: n × 10 candidate
    (area, log-ratio) draws, each image keeps its first candidate that fits, and images with none
    fall back to the centre crop. Sizes are rounded half-to-even like Python's round(). ``height``
    and ``width`` are one size for the batch or one per image (n,): a batch of whole photos of
    different shapes, each cropped from its whole area.
    """
    device = torch.device("cpu") if device is None else device
    f64 = torch.float64
    height = torch.as_tensor(height, dtype=f64, device=device).expand(n)  # (n,)
    width = torch.as_tensor(width, dtype=f64, device=device).expand(n)  # (n,)
    area = (height * width).unsqueeze(1)  # (n, 1)
    target_area = area * _uniform(n, scale[0], scale[1], generator, device, f64, k=CROP_ATTEMPTS)
    log_ratio = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device, f64, k=CROP_ATTEMPTS)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target_area * aspect).round()  # (n, 10)
    h = torch.sqrt(target_area / aspect).round()  # (n, 10)
    fits = (w > 0) & (w <= width.unsqueeze(1)) & (h > 0) & (h <= height.unsqueeze(1))  # (n, 10)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # (n, 1): first fitting attempt
    w = w.gather(1, first).squeeze(1)  # (n,)
    h = h.gather(1, first).squeeze(1)  # (n,)

    fallback_w, fallback_h = _centre_crop_size(height, width, ratio)
    none_fit = ~fits.any(dim=1)
    w = torch.where(none_fit, fallback_w, w)
    h = torch.where(none_fit, fallback_h, h)

    # Top-left corner uniform over the valid integer positions (torch.randint(0, side - size + 1)).
    top = torch.floor(rand(generator, n, dtype=f64, device=device) * (height - h + 1))
    left = torch.floor(rand(generator, n, dtype=f64, device=device) * (width - w + 1))
    corner = torch.where(none_fit.unsqueeze(1),
                         torch.stack([(width - w) // 2, (height - h) // 2], dim=1),  # centred fallback
                         torch.stack([left, top], dim=1))  # (n, 2): x1, y1
    return torch.cat([corner, corner + torch.stack([w, h], dim=1)], dim=1).float()


def _centre_crop_size(height: Tensor, width: Tensor, ratio: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """(w, h) per image of RandomResizedCrop's fallback: the largest centred crop with an allowed ratio."""
    in_ratio = width / height
    w = torch.where(in_ratio > ratio[1], (height * ratio[1]).round(), width)
    h = torch.where(in_ratio < ratio[0], (width / ratio[0]).round(), height)
    return w, h


def crop_resize(images: Tensor, boxes: Tensor, output_size: int) -> Tensor:
    """Crop each image to its box and resize to output_size², in one roi_align call.

    images: float (N, C, H, W); boxes: (N, 4) x1, y1, x2, y2 in pixels. aligned=True puts sample
    points at pixel centres, so upscaling is bilinear interpolation as F.interpolate
    (align_corners=False), and a whole-image box at the input size returns the input unchanged.
    sampling_ratio=-1 averages ceil(box/output) samples per output pixel when downscaling, a box
    prefilter in place of torchvision's antialiasing triangle filter. One difference from
    torchvision's crop-then-resize: samples between the box edge and its outer pixel centres
    (the outer ~half upscale factor of output pixels) also weigh the input pixel just outside the
    box, where torchvision repeats the edge pixel; roi_align only clamps at the image border.
    """
    index = torch.arange(images.shape[0], device=images.device, dtype=boxes.dtype).unsqueeze(1)
    rois = torch.cat([index, boxes.to(images.device)], dim=1)  # (N, 5): batch index, x1, y1, x2, y2
    return roi_align(images, rois, output_size=(output_size, output_size), spatial_scale=1.0,
                     sampling_ratio=-1, aligned=True)  # (N, C, S, S)


# ----------------------------------------------------------------------------- colour ops
# All take float images (M, 3, H, W) in [0, 255] and one factor per image (M,), and use the same
# formulas as torchvision.transforms.v2.functional (which they are tested against).


def luma(x: Tensor) -> Tensor:
    """ITU-R 601-2 grayscale (M, 1, H, W), computed in torchvision's operation order."""
    r, g, b = x.unbind(dim=1)
    return r.mul(LUMA_R).add_(g, alpha=LUMA_G).add_(b, alpha=LUMA_B).unsqueeze(1)


def _per_image(factor: Tensor) -> Tensor:
    """(M,) → (M, 1, 1, 1), to broadcast one value per image."""
    return factor.view(-1, 1, 1, 1)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """x·f + other·(1 − f), clamped to the valid range (torchvision's _blend)."""
    f = _per_image(factor)
    return (x * f).add_(other * (1.0 - f)).clamp_(0.0, MAX_VALUE)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with black: scale every pixel by the image's factor."""
    return (x * _per_image(factor)).clamp_(0.0, MAX_VALUE)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the mean of the image's grayscale version."""
    mean = luma(x).mean(dim=(1, 2, 3), keepdim=True)  # (M, 1, 1, 1)
    return _blend(x, mean, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's grayscale version."""
    return _blend(x, luma(x), factor)


# Pure-hue RGB of a hue h6 in [0, 6): channel = clamp(sign·|h6 − centre| + bias, 0, 1) for R, G, B.
_HUE_CENTRE, _HUE_SIGN, _HUE_BIAS = (3.0, 2.0, 4.0), (1.0, -1.0, -1.0), (-1.0, 2.0, 2.0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by `shift` turns per image (in [-0.5, 0.5]), keeping HSV saturation and value.

    Same result as torchvision's rgb→hsv, h += shift, hsv→rgb (to float rounding), in fewer
    passes over memory: a hue rotation keeps each pixel's max and min channel, so the output is
    min + chroma · pure_rgb(shifted hue), and the max-channel selection is done with arithmetic
    masks (torch.where and the 3-plane remainder cost several times more on CPU). Scale-free, so it
    works on [0, 255] as on [0, 1]. About 0.5 ms per 224 px image on one core.
    """
    r, g, b = x.unbind(dim=1)  # (M, H, W) each
    # amin + amax, not torch.aminmax: in torch 2.14 on CPU aminmax over the channel dim is ~17x slower.
    maxc, minc = x.amax(dim=1), x.amin(dim=1)  # (M, H, W)
    chroma = maxc - minc
    # Which channel is the max, with torchvision's tie priority r > g > b, as 0/1 floats.
    max_is_r = (maxc == r).to(x.dtype)
    max_is_g = (maxc == g).to(x.dtype).mul_(1.0 - max_is_r)
    # Hue in sixths of a turn: (g−b)/C if max is r, (b−r)/C + 2 if g, (r−g)/C + 4 if b, written as
    # the b case plus corrections so that each mask is used once.
    numerator = (r - g).addcmul_(max_is_r, 2.0 * g - b - r).addcmul_(max_is_g, b + g - 2.0 * r)
    offset = (4.0 + 6.0 * shift).view(-1, 1, 1) - 4.0 * max_is_r - 2.0 * max_is_g  # (M, H, W)
    # Gray pixels (C = 0) have numerator 0, so any positive divisor gives hue 0 and output = max.
    hue6 = numerator.div_(chroma.clamp_min(1e-30)).add_(offset).remainder_(6.0).unsqueeze(1)  # (M, 1, H, W)
    centre, sign, bias = (torch.tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
                          for v in (_HUE_CENTRE, _HUE_SIGN, _HUE_BIAS))
    pure = (hue6 - centre).abs_().mul_(sign).add_(bias).clamp_(0.0, 1.0)  # (M, 3, H, W) in [0, 1]
    return torch.addcmul(minc.unsqueeze(1), pure, chroma.unsqueeze(1))  # (M, 3, H, W)


def hflip(x: Tensor) -> Tensor:
    """Mirror left-right."""
    return x.flip(-1)


def grayscale3(x: Tensor) -> Tensor:
    """Grayscale replicated over 3 channels, as RandomGrayscale does for RGB input."""
    return luma(x).expand(-1, 3, -1, -1)


COLOUR_OPS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue,
)  # indexed by BRIGHTNESS, CONTRAST, SATURATION, HUE


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels (M, kernel_size), one per σ (torchvision's formula)."""
    half = (kernel_size - 1) / 2.0
    t = torch.linspace(-half, half, kernel_size, dtype=sigma.dtype, device=sigma.device)  # (k,)
    return torch.softmax(-0.5 * (t / sigma.unsqueeze(1)) ** 2, dim=1)  # (M, k)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Blur each image with its own σ: a separable kernel as two grouped convolutions.

    Reflect padding as torchvision. Two 1-D passes cost 2k multiply-adds per pixel instead of the
    k² of torchvision's 2-D kernel, which matters at ImageNet size (k = 23).
    """
    m, c, h, w = x.shape
    pad = kernel_size // 2
    kernels = gaussian_kernels(sigma.to(x.dtype), kernel_size).repeat_interleave(c, dim=0)  # (M·C, k)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect").view(1, m * c, h + 2 * pad, w + 2 * pad)
    rows = F.conv2d(padded, kernels.view(m * c, 1, 1, kernel_size), groups=m * c)  # (1, MC, H+2p, W)
    out = F.conv2d(rows, kernels.view(m * c, 1, kernel_size, 1), groups=m * c)  # (1, MC, H, W)
    return out.view(m, c, h, w)


# ----------------------------------------------------------------------------- parameters


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

    Same distribution as `reference_augment` applied image by image, but each op runs once on the
    batch: crops via one roi_align, colour-jitter ops on index subsets (about 4 ops × N of work
    for the random order), a grouped convolution for per-image blur kernels.
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
        flip = _bernoulli(n, self.flip_p, generator, device)
        jitter = _bernoulli(n, self.jitter_p, generator, device)
        order = rand(generator, n, 4, device=device).argsort(dim=1)  # uniform permutation
        factors = torch.stack(
            [_uniform(n, low, high, generator, device) for low, high in self.factor_ranges()], dim=1
        )  # (n, 4)
        gray = _bernoulli(n, self.gray_p, generator, device)
        blur = _bernoulli(n, self.blur_p, generator, device)
        sigma = _uniform(n, self.blur_sigma[0], self.blur_sigma[1], generator, device)
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
        for part in _chunks(len(images), self.output_size, chunk_pixels):
            p = params.select(part)
            x = self._crop_chunk(images[part], p.boxes)  # the crop stage, kept in float
            out[part] = self._colour_chunk(x, p.colour())
        return out

    def crop(self, images: Images, params: ViewParams, chunk_pixels: int = CHUNK_PIXELS) -> Tensor:
        """The crop stage alone: each image's random resized crop, uint8 (N, 3, S, S).

        The decode-side half of a view, for a CPU worker: its output has a fixed size whatever the
        photos' shapes, is uint8 (4x fewer bytes to move than float), and with ``colour`` on
        ``params.colour()`` gives exactly ``apply``'s output.
        """
        _check_images(images)
        out = self._empty(len(images), images[0].device)
        for part in _chunks(len(images), self.output_size, chunk_pixels):
            out[part] = self._crop_chunk(images[part], params.boxes[part]).to(torch.uint8)
        return out

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
        for part in _chunks(len(crops), self.output_size, chunk_pixels):
            out[part] = self._colour_chunk(crops[part].float(), params.select(part))
        return out

    def _empty(self, n: int, device: torch.device) -> Tensor:
        return torch.empty((n, 3, self.output_size, self.output_size), dtype=torch.uint8, device=device)

    def _crop_chunk(self, images: Images, boxes: Tensor) -> Tensor:
        """Crops of one chunk as float (N, 3, S, S) holding uint8 values: rounded as the uint8
        crop-stage output is, so that the fused path and the split one agree bit for bit."""
        x = crop_resize_images(images, boxes, self.output_size)  # (N, 3, S, S) float in [0, 255]
        return x.round_().clamp_(0.0, MAX_VALUE)

    def _colour_chunk(self, x: Tensor, params: ColourParams) -> Tensor:
        """The colour stage on one chunk of float crops (modified in place), every op vectorised."""
        _apply_subset(x, params.flip, hflip)
        ops = self.active_ops()
        for position in range(4):  # ColorJitter's random order: each op on the images that have it here
            for op in ops:
                chosen = params.jitter & (params.order[:, position] == op)
                _apply_subset(x, chosen, COLOUR_OPS[op], params.factors[:, op])
        _apply_subset(x, params.gray, grayscale3)
        if self.blur_p > 0:
            _apply_subset(x, params.blur, partial(gaussian_blur, kernel_size=self.blur_kernel_size),
                          params.sigma)
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


def _chunks(n: int, output_size: int, chunk_pixels: int) -> list[slice]:
    """Slices of about ``chunk_pixels`` output pixels (at least one image each) covering n images."""
    chunk = max(1, chunk_pixels // output_size**2)
    return [slice(start, start + chunk) for start in range(0, n, chunk)]


def image_sizes(images: Images) -> tuple[int | Tensor, int | Tensor]:
    """(height, width) of a batch: two ints for a tensor, two (N,) tensors for a list of images."""
    if isinstance(images, Tensor):
        return images.shape[2], images.shape[3]
    sizes = torch.tensor([tuple(img.shape[1:]) for img in images], dtype=torch.float64)  # (N, 2)
    return sizes[:, 0], sizes[:, 1]


def crop_resize_images(images: Images, boxes: Tensor, output_size: int) -> Tensor:
    """``crop_resize`` for a batch tensor, or for images of several shapes: one roi_align per shape
    (a batch of photos holds a few shapes: landscape, portrait, square)."""
    if isinstance(images, Tensor):
        return crop_resize(images.float(), boxes, output_size)
    out = torch.empty((len(images), 3, output_size, output_size), device=boxes.device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    for index in groups.values():
        stacked = torch.stack([images[i] for i in index]).float()  # (M, 3, H, W)
        rows = torch.tensor(index, device=boxes.device)
        out[rows] = crop_resize(stacked, boxes[rows], output_size)
    return out


def _apply_subset(x: Tensor, mask: Tensor, fn: Callable[..., Tensor], *per_image: Tensor) -> None:
    """x[mask] = fn(x[mask], *(p[mask] for p in per_image)), in place; no work for unselected images."""
    index = mask.nonzero().squeeze(1)  # (M,)
    if index.numel() == 0:
        return
    subset = x.index_select(0, index)  # (M, 3, S, S)
    x.index_copy_(0, index, fn(subset, *(p.index_select(0, index) for p in per_image)))


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
) -> v2.Compose:
    """The standard per-image torchvision v2 pipeline of the same recipe, on one uint8 (3, H, W) image.

    What lightly / solo-learn users run; the baseline for benchmarks and the reference for the
    statistics tests. Applied to a batch at once it draws one parameter set for the whole batch.
    Arguments are validated exactly as SimCLRAugment's.
    """
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
