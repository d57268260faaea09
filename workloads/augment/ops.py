"""The pixel operations of the views, on whole batches with per-image parameters.

Crop boxes as torchvision's RandomResizedCrop draws them and its antialiased resize of each crop; colour
jitter, grayscale, flip and a per-image Gaussian blur as tensor ops on uint8-range floats. SimCLRAugment
(transform.py) draws the parameters and composes these.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from workloads.method import Images
from workloads.rng import RandomSource, rand

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
LUMA_R, LUMA_G, LUMA_B = 0.2989, 0.587, 0.114
MAX_VALUE = 255.0  # the ops work on float images in uint8 range
# Output pixels per chunk of the colour stage on CPU: ~5 MB of float32 RGB, 8 images at 224 px (measured
# against 5 and 12: the blur's one convolution per chunk gains from more images, the rest loses little).
CHUNK_PIXELS = 8 * 224 * 224
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


def uniform(n: int, low: float, high: float, generator: RandomSource, device: torch.device,
             dtype: torch.dtype = torch.float32, k: int = 0) -> Tensor:
    """Draws uniform in [low, high): (n,), or (n, k) when k > 0."""
    return rand(generator, n, k, dtype=dtype, device=device) * (high - low) + low


def bernoulli(n: int, p: float, generator: RandomSource, device: torch.device) -> Tensor:
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
    target_area = area * uniform(n, scale[0], scale[1], generator, device, f64, k=CROP_ATTEMPTS)
    log_ratio = uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device, f64, k=CROP_ATTEMPTS)
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


def crop_resize(images: Images, boxes: Tensor, output_size: int) -> Tensor:
    """Crop each image to its integer box and resize it to output_size², antialiased: uint8 (N, 3, S, S).

    images: uint8 (N, 3, H, W), or a list of uint8 (3, H_i, W_i) whole photos; boxes: (N, 4) x1, y1,
    x2, y2 in pixels (integers, as ``sample_crop_boxes`` draws them). Exactly torchvision's
    ``resized_crop(..., antialias=True)`` of a uint8 image: a slice, then ``F.interpolate`` bilinear
    with antialias, which on CPU runs torch's uint8 kernel (no float copy of the whole photo; measured
    6-9x faster than one ``roi_align`` over float photos, docs/BENCHMARKS.md). Other devices resize in
    float and round. One call per image: the crops differ in size, and torchvision's per-image call
    is the reference.
    """
    out = torch.empty((len(images), 3, output_size, output_size), dtype=torch.uint8, device=images[0].device)
    size = (output_size, output_size)
    for i, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
        crop = images[i][:, y1:y2, x1:x2].unsqueeze(0)  # 1 x 3 x h x w, a view
        if crop.device.type == "cpu":
            out[i] = F.interpolate(crop, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        else:
            resized = F.interpolate(crop.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
            out[i] = resized[0].round_().clamp_(0.0, MAX_VALUE).to(torch.uint8)
    return out


# ----------------------------------------------------------------------------- colour ops
# All take float images (M, 3, H, W) in [0, 255] and one factor per image (M,), and use the same
# formulas as torchvision.transforms.v2.functional (which they are tested against). They may work in
# place: each returns its result, which may be x itself, modified (no new image-sized tensor).


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
    return x.mul_(f).add_(other * (1.0 - f)).clamp_(0.0, MAX_VALUE)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with black: scale every pixel by the image's factor."""
    return x.mul_(_per_image(factor)).clamp_(0.0, MAX_VALUE)


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
    return torch.addcmul(minc.unsqueeze(1), pure, chroma.unsqueeze(1), out=x)  # (M, 3, H, W), into x


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


def chunks(n: int, output_size: int, chunk_pixels: int) -> list[slice]:
    """Slices of about ``chunk_pixels`` output pixels (at least one image each) covering n images."""
    chunk = max(1, chunk_pixels // output_size**2)
    return [slice(start, start + chunk) for start in range(0, n, chunk)]


def image_sizes(images: Images) -> tuple[int | Tensor, int | Tensor]:
    """(height, width) of a batch: two ints for a tensor, two (N,) tensors for a list of images."""
    if isinstance(images, Tensor):
        return images.shape[2], images.shape[3]
    sizes = torch.tensor([tuple(img.shape[1:]) for img in images], dtype=torch.float64)  # (N, 2)
    return sizes[:, 0], sizes[:, 1]


MAX_SLICED = 16  # apply_subset: batches of at most this many images may be worked on slice by slice
MAX_RUNS = 4  # ... when the selection is at most this many runs of consecutive images


def apply_subset(x: Tensor, mask: Tensor, fn: Callable[..., Tensor], *per_image: Tensor,
                 max_runs: int = MAX_RUNS) -> None:
    """x[mask] = fn(x[mask], *(p[mask] for p in per_image)), in place; no work for unselected images.

    In a batch of a few images (at most ``MAX_SLICED``: the CPU's chunks of 224 px crops), a selection
    of at most ``max_runs`` runs of consecutive images is done run by run on slices, which are views:
    the ops that work in place need no copy back. Otherwise (a batch of many images, a GPU's or small
    crops'; or ``max_runs=1``, for an op whose cost per call falls with the images in it, as the
    blur's convolution) one gather and one scatter, so the op is still one call. Every op works image
    by image, so both give the same result; the slices halve the cost of the cheap ops on CPU.
    """
    if len(x) <= MAX_SLICED:
        runs = _runs(mask.tolist())
        if not runs:
            return
        if len(runs) <= max_runs:
            for start, stop in runs:
                view = x[start:stop]
                out = fn(view, *(p[start:stop] for p in per_image))
                if out is not view:  # an op that did not work in place
                    view.copy_(out)
            return
    index = mask.nonzero().squeeze(1)  # (M,)
    if index.numel() == 0:
        return
    subset = x.index_select(0, index)  # (M, 3, S, S)
    x.index_copy_(0, index, fn(subset, *(p.index_select(0, index) for p in per_image)))


def _runs(selected: list[bool]) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive True values."""
    runs: list[tuple[int, int]] = []
    for i, chosen in enumerate(selected):
        if not chosen:
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
