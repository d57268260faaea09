"""Tests for workloads.augment.transform: batched SimCLR views with per-image random parameters.

The statistics tests compare SimCLRAugment with the per-image torchvision v2 recipe
(`reference_augment`) over a few thousand small images, and check that the same
comparison flags a batch-shared-parameter augmentation and a wrong crop scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from workloads.augment.ops import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_subset,
    blur_kernel_size,
    crop_resize,
    gaussian_blur,
    sample_crop_boxes,
)
from workloads.augment.transform import ColourParams, SimCLRAugment, reference_augment
from workloads.augment.views import colour_on_device, finish_views, two_views
from workloads.config import Config, ConfigError
from workloads.rng import RowRandom, row_keys

# Recipe with every op but the crop switched off: the identity at the input size.
IDENTITY: dict[str, Any] = dict(strength=0.0, min_scale=1.0, max_scale=1.0, ratio=(1.0, 1.0), flip_p=0.0,
                                gray_p=0.0)
GEOMETRY_ONLY: dict[str, Any] = dict(jitter_p=0.0, gray_p=0.0)  # crop and flip only
STATS_N = 2000  # images per implementation in the statistics tests
KS_ALPHA = 1e-3


def random_images(n: int, size: int, seed: int = 0, low: int = 0, high: int = 256) -> Tensor:
    """uint8 (n, 3, size, size) of independent uniform pixels: colourful, full of high frequencies."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (n, 3, size, size), generator=g, dtype=torch.uint8)


def coordinate_image(size: int = 32, width: int = 0) -> Tensor:
    """uint8 (3, size, width or size) whose R encodes the column, G the row: value = 8·coordinate + 4.

    Resizing is linear, so every output pixel tells where in the input it was sampled.
    """
    width = width or size
    assert 8 * max(size, width) <= 256
    r = (torch.arange(width, dtype=torch.float32) * 8 + 4).expand(size, width)  # varies along x
    g = (torch.arange(size, dtype=torch.float32) * 8 + 4).unsqueeze(1).expand(size, width)  # varies along y
    b = torch.full((size, width), 128.0)
    return torch.stack([r, g, b]).to(torch.uint8)


def recover_boxes(views: Tensor) -> tuple[Tensor, Tensor]:
    """Crop boxes (N, 4) x1, y1, x2, y2 and flip flags (N,) of views of `coordinate_image`.

    Output pixel p samples x = x1 + (p + 0.5)·w/S − 0.5; interior pixels 2 and S−3 avoid the border
    clamping of bilinear and antialias filters.
    """
    s = views.shape[-1]
    xs = (views[:, 0].float().mean(dim=1) - 4) / 8  # (N, S): sampled column of each output column
    ys = (views[:, 1].float().mean(dim=2) - 4) / 8  # (N, S): sampled row of each output row
    flip = xs[:, -3] < xs[:, 2]
    xs = torch.where(flip.unsqueeze(1), xs.flip(1), xs)
    w = (xs[:, s - 3] - xs[:, 2]) * s / (s - 5)
    h = (ys[:, s - 3] - ys[:, 2]) * s / (s - 5)
    x1 = xs[:, 2] - 2.5 * w / s + 0.5
    y1 = ys[:, 2] - 2.5 * h / s + 0.5
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1), flip


def is_gray(views: Tensor) -> Tensor:
    """(N,) True where R == G == B at every pixel."""
    return ((views[:, 0] == views[:, 1]) & (views[:, 1] == views[:, 2])).flatten(1).all(dim=1)


def per_image_reference(images: Tensor, **recipe: Any) -> Tensor:
    """The torchvision v2 recipe applied image by image, as a DataLoader worker would (1 thread).

    One thread because torch 2.14's multi-threaded aminmax (inside adjust_hue) takes milliseconds
    per 16 px image on a busy 2-core machine; single-threaded it is 10× faster.
    """
    ref = reference_augment(**recipe)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.stack([ref(img) for img in images])
    finally:
        torch.set_num_threads(threads)


def batch_shared_reference(images: Tensor, **recipe: Any) -> Tensor:
    """The same v2 pipeline applied to the whole batch at once: ONE parameter set for all images."""
    return reference_augment(**recipe)(images)


def high_frequency_energy(views: Tensor) -> Tensor:
    """(N,) mean squared difference between neighbouring pixels."""
    x = views.float()
    return (x.diff(dim=-1) ** 2).mean(dim=(1, 2, 3)) + (x.diff(dim=-2) ** 2).mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------- statistics helpers


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs (ties allowed)."""
    grid = np.concatenate([a, b])
    fa = np.searchsorted(np.sort(a), grid, side="right") / a.size
    fb = np.searchsorted(np.sort(b), grid, side="right") / b.size
    return float(np.abs(fa - fb).max())


def ks_critical(n: int, m: int, alpha: float = KS_ALPHA) -> float:
    """D above which two samples of sizes n, m differ at level alpha (asymptotic formula)."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def distribution_mismatches(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> list[str]:
    """Names (with numbers) of the statistics whose distributions differ between the two samples.

    Continuous statistics: KS at level 1e-3; the means within 4 standard errors; the 10/25/50/75/90%
    quantiles of `ours` within the reference's quantiles at q ± D_crit (the rank tolerance KS
    allows, so atoms such as "no jitter → ratio 1" are handled). Boolean statistics: rates within
    4 binomial standard errors.
    """
    bad = []
    for name, a in ours.items():
        b = ref[name]
        if a.dtype == bool:
            pooled = (a.sum() + b.sum()) / (a.size + b.size)
            tol = 4 * math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / a.size + 1 / b.size))
            if abs(a.mean() - b.mean()) > tol:
                bad.append(f"{name}: rate {a.mean():.3f} vs {b.mean():.3f} (tol {tol:.3f})")
            continue
        d, d_crit = ks_statistic(a, b), ks_critical(a.size, b.size)
        if d > d_crit:
            bad.append(f"{name}: KS D {d:.3f} > {d_crit:.3f}")
        mean_tol = 4 * math.sqrt(a.var() / a.size + b.var() / b.size)
        if abs(a.mean() - b.mean()) > mean_tol:
            bad.append(f"{name}: mean {a.mean():.4f} vs {b.mean():.4f} (tol {mean_tol:.4f})")
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):
            low, high = np.quantile(b, [max(0.0, q - d_crit), min(1.0, q + d_crit)])
            qa = np.quantile(a, q)
            if not low <= qa <= high:
                bad.append(f"{name}: {q:.0%} quantile {qa:.4f} outside [{low:.4f}, {high:.4f}]")
    return bad


def geometry_stats(views: Tensor, in_size: int, in_width: int = 0) -> dict[str, np.ndarray]:
    """Crop area fraction, log aspect ratio, flip and left edge of views of `coordinate_image(in_size, in_width)`."""
    boxes, flip = recover_boxes(views)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return {"area_fraction": (w * h / (in_size * (in_width or in_size))).numpy(),
            "log_aspect": torch.log(w / h).numpy(), "flip": flip.numpy(), "left": boxes[:, 0].numpy()}


def colour_stats(views: Tensor, image: Tensor) -> dict[str, np.ndarray]:
    """Per-view colour-jitter effects relative to the (uncropped) input image.

    The ratios are compared at 1% resolution: a fifth of the views are not jittered, which puts
    atoms at ratio ≈ 1, and torchvision's uint8 pipeline truncates to uint8 after every op (this
    module rounds once), which moves those atoms by < 0.5%: enough for KS at n = 2000 to tell the
    two apart, as it tells torchvision's own uint8 and float paths apart. Jitter ranges are tens of %.
    """
    x, x0 = views.float(), image.float().unsqueeze(0)

    def luma_std(v: Tensor) -> Tensor:
        return (0.2989 * v[:, 0] + 0.587 * v[:, 1] + 0.114 * v[:, 2]).flatten(1).std(dim=1)

    def chroma(v: Tensor) -> Tensor:
        return (v.amax(dim=1) - v.amin(dim=1)).mean(dim=(1, 2))

    def red_share(v: Tensor) -> Tensor:
        return v[:, 0].mean(dim=(1, 2)) / v.sum(dim=1).mean(dim=(1, 2))

    def percent(ratio: Tensor) -> np.ndarray:
        return np.round(ratio.numpy(), 2)

    return {
        "brightness_ratio": percent(x.mean(dim=(1, 2, 3)) / x0.mean()),
        "contrast_ratio": percent(luma_std(x) / luma_std(x0)),
        "chroma_ratio": percent(chroma(x) / chroma(x0)),
        "red_share": red_share(x).numpy(),  # moves with the hue shift
        "gray": is_gray(views).numpy(),
    }


GEOMETRY_RECIPE: dict[str, Any] = dict(output_size=16, **GEOMETRY_ONLY)
COLOUR_RECIPE: dict[str, Any] = dict(output_size=16, strength=0.5, min_scale=1.0, ratio=(1.0, 1.0), flip_p=0.0)


@pytest.fixture(scope="module")
def geometry_batch() -> Tensor:
    return coordinate_image(32).expand(STATS_N, -1, -1, -1).contiguous()


@pytest.fixture(scope="module")
def colour_image() -> Tensor:
    return random_images(1, 16, seed=3, low=30, high=226)[0]


@pytest.fixture(scope="module")
def reference_geometry(geometry_batch: Tensor) -> dict[str, np.ndarray]:
    torch.manual_seed(11)
    return geometry_stats(per_image_reference(geometry_batch, **GEOMETRY_RECIPE), 32)


@pytest.fixture(scope="module")
def reference_colour(colour_image: Tensor) -> dict[str, np.ndarray]:
    torch.manual_seed(12)
    batch = colour_image.expand(STATS_N, -1, -1, -1)
    return colour_stats(per_image_reference(batch, **COLOUR_RECIPE), colour_image)


# ----------------------------------------------------------------------------- shapes and validation


@pytest.mark.parametrize(("shape", "output_size"), [((4, 3, 32, 32), 16), ((2, 3, 20, 28), 24), ((1, 3, 16, 16), 16)])
def test_output_is_uint8_n_3_size_size(shape: tuple[int, ...], output_size: int) -> None:
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    v0, v1 = SimCLRAugment(output_size, blur_p=0.5).two_views(images)
    for view in (v0, v1):
        assert view.shape == (shape[0], 3, output_size, output_size)
        assert view.dtype == torch.uint8


def test_empty_batch_gives_empty_output() -> None:
    out = SimCLRAugment(8)(torch.empty(0, 3, 16, 16, dtype=torch.uint8))
    assert out.shape == (0, 3, 8, 8) and out.dtype == torch.uint8


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_wrong_dtype_raises(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match="uint8"):
        SimCLRAugment(8)(torch.zeros(2, 3, 8, 8, dtype=dtype))


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 1, 8, 8), (2, 4, 8, 8), (2, 8, 8, 3), (1, 2, 3, 8, 8)])
def test_wrong_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        SimCLRAugment(8)(torch.zeros(shape, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(output_size=0), "output_size"),
        (dict(output_size=8.0), "output_size"),
        (dict(strength=-0.1), "strength"),
        (dict(strength=float("nan")), "strength"),
        (dict(min_scale=1.5), "min_scale"),
        (dict(min_scale=0.0), "min_scale"),
        (dict(min_scale=0.6, max_scale=0.5), "min_scale"),
        (dict(max_scale=1.2), "max_scale"),
        (dict(ratio=(4 / 3, 3 / 4)), "ratio"),
        (dict(ratio=(0.0, 1.0)), "ratio"),
        (dict(flip_p=1.5), "flip_p"),
        (dict(jitter_p=-0.1), "jitter_p"),
        (dict(gray_p=2.0), "gray_p"),
        (dict(blur_p=-1.0), "blur_p"),
        (dict(blur_kernel_frac=0.0), "blur_kernel_frac"),
        (dict(blur_sigma=(2.0, 0.1)), "blur_sigma"),
        (dict(blur_sigma=(0.0, 1.0)), "blur_sigma"),
        (dict(output_size=1, blur_p=0.5), "output_size"),
    ],
)
def test_bad_constructor_argument_raises_naming_it(kwargs: dict[str, Any], name: str) -> None:
    full = {"output_size": 16, **kwargs}
    for build in (SimCLRAugment, reference_augment):
        with pytest.raises(ValueError, match=rf"^{name} must be .*; got"):
            build(**full)


def test_error_message_gives_range_and_value() -> None:
    with pytest.raises(ValueError, match=r"^min_scale must be in \(0, max_scale\]; got 1.5$"):
        SimCLRAugment(16, min_scale=1.5)


# ----------------------------------------------------------------------------- randomness


def test_two_views_of_an_image_differ() -> None:
    images = random_images(8, 16)
    v0, v1 = SimCLRAugment(16).two_views(images, torch.Generator().manual_seed(0))
    assert all(not torch.equal(a, b) for a, b in zip(v0, v1, strict=True))


def test_images_of_one_batch_get_different_crops() -> None:
    batch = coordinate_image(32).expand(16, -1, -1, -1)
    views = SimCLRAugment(16, **GEOMETRY_ONLY, flip_p=0.0)(batch, torch.Generator().manual_seed(1))
    boxes, _ = recover_boxes(views)
    distinct = {tuple(box) for box in boxes.round().int().tolist()}
    assert len(distinct) >= 15, boxes


def test_recovered_boxes_are_the_sampled_boxes() -> None:
    """Checks the test's own box recovery against the boxes SimCLRAugment drew."""
    aug = SimCLRAugment(16, **GEOMETRY_ONLY)
    batch = coordinate_image(32).expand(64, -1, -1, -1)
    params = aug.sample_params(64, 32, 32, torch.Generator().manual_seed(2))
    boxes, flip = recover_boxes(aug.apply(batch, params))
    torch.testing.assert_close(boxes, params.boxes, atol=0.35, rtol=0)
    assert torch.equal(flip, params.flip)


def test_identity_recipe_returns_input_exactly() -> None:
    images = random_images(8, 16)
    out = SimCLRAugment(16, **IDENTITY)(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, images)


def test_grayscale_fraction_is_gray_p_within_4_sigma() -> None:
    n, p = 4000, 0.2
    views = SimCLRAugment(8, jitter_p=0.0, gray_p=p)(random_images(n, 8), torch.Generator().manual_seed(4))
    tol = 4 * math.sqrt(p * (1 - p) / n)
    assert abs(is_gray(views).float().mean().item() - p) <= tol


def test_same_seed_gives_identical_output_and_different_seeds_differ() -> None:
    images = random_images(16, 16)
    aug = SimCLRAugment(16, blur_p=0.5)

    def views(seed: int) -> tuple[Tensor, Tensor]:
        return aug.two_views(images, torch.Generator().manual_seed(seed))

    a, b, c = views(5), views(5), views(6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_output_does_not_depend_on_chunk_size() -> None:
    aug = SimCLRAugment(16, blur_p=0.5)
    images = random_images(12, 20)
    params = aug.sample_params(12, 20, 20, torch.Generator().manual_seed(7))
    whole = aug.apply(images, params, chunk_pixels=1 << 20)
    assert torch.equal(aug.apply(images, params, chunk_pixels=5 * 16 * 16), whole)
    assert torch.equal(aug.apply(images, params, chunk_pixels=1), whole)


# ----------------------------------------------------------------------------- ops against torchvision


@pytest.mark.parametrize(
    ("ours", "theirs", "low", "high"),
    [
        (adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        (adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        (adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_colour_op_matches_torchvision_with_each_images_own_factor(
    ours: Callable[[Tensor, Tensor], Tensor], theirs: Callable[..., Tensor], low: float, high: float
) -> None:
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # float in [0, 1]
    factors = torch.linspace(low, high, 6)
    expected = torch.stack([theirs(img, float(f)) for img, f in zip(x, factors, strict=True)])
    torch.testing.assert_close(ours(x * 255, factors) / 255, expected, atol=1e-5, rtol=0)


def test_jitter_applies_each_images_factors_in_its_own_order_like_colorjitter() -> None:
    aug = SimCLRAugment(8, strength=1.0, min_scale=1.0, ratio=(1.0, 1.0), flip_p=0.0, jitter_p=1.0, gray_p=0.0)
    images = random_images(48, 8)
    params = aug.sample_params(48, 8, 8, torch.Generator().manual_seed(8))
    assert len({tuple(o) for o in params.order.tolist()}) > 10  # many different orders in one batch
    jitter = v2.ColorJitter(*aug.jitter)
    expected = torch.stack([
        jitter.transform(img.float() / 255, {
            "fn_idx": params.order[i].tolist(),
            "brightness_factor": float(params.factors[i, BRIGHTNESS]),
            "contrast_factor": float(params.factors[i, CONTRAST]),
            "saturation_factor": float(params.factors[i, SATURATION]),
            "hue_factor": float(params.factors[i, HUE]),
        })
        for i, img in enumerate(images)
    ])
    diff = aug.apply(images, params).float() - (expected * 255).round()
    assert diff.abs().max() <= 1


@pytest.mark.parametrize(("size", "scale", "ragged"), [(24, (0.08, 0.4), False), (24, (0.5, 1.0), False),
                                                    (16, (0.08, 1.0), True)])
def test_crop_is_torchvisions_resized_crop_bit_for_bit(size: int, scale: tuple[float, float], ragged: bool) -> None:
    """Up- and downscaling, a batch or whole images of several shapes: each crop is exactly
    torchvision's ``resized_crop`` of the same box (uint8, antialiased)."""
    gen = torch.Generator().manual_seed(9)
    if ragged:
        images: Any = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
                       for h, w in [(24, 40), (40, 24), (30, 30), (24, 40)] * 4]
        heights = torch.tensor([img.shape[1] for img in images], dtype=torch.float64)
        widths = torch.tensor([img.shape[2] for img in images], dtype=torch.float64)
    else:
        images = random_images(32, 24)
        heights, widths = torch.tensor(24.0), torch.tensor(24.0)
    boxes = sample_crop_boxes(len(images), heights, widths, scale, (3 / 4, 4 / 3), gen)
    out = crop_resize(images, boxes, size)
    assert out.dtype == torch.uint8 and out.shape == (len(images), 3, size, size)
    for img, box, view in zip(images, boxes.int().tolist(), out, strict=True):
        x1, y1, x2, y2 = box
        expected = TF.resized_crop(img, y1, x1, y2 - y1, x2 - x1, [size, size], antialias=True)
        assert torch.equal(view, expected)


def test_crop_falls_back_to_centre_crop_like_torchvision() -> None:
    # Scale 1 and ratio 1 never fit a 8 × 64 image: torchvision then takes the centred 8 × 8 crop.
    boxes = sample_crop_boxes(5, 8, 64, (1.0, 1.0), (1.0, 1.0))
    params = v2.RandomResizedCrop(8, scale=(1.0, 1.0), ratio=(1.0, 1.0)).make_params([torch.zeros(3, 8, 64)])
    x1, y1 = params["left"], params["top"]
    expected = torch.tensor([[x1, y1, x1 + params["width"], y1 + params["height"]]], dtype=torch.float32)
    assert torch.equal(boxes, expected.expand(5, -1))


@pytest.mark.parametrize(("size", "frac", "expected"), [(224, 0.1, 23), (96, 0.1, 11), (32, 0.1, 3), (8, 0.1, 3),
                                                        (64, 0.2, 13), (100, 0.1, 11)])
def test_blur_kernel_size_is_odd_about_frac_of_size_and_at_least_3(size: int, frac: float, expected: int) -> None:
    k = blur_kernel_size(size, frac)
    assert k == expected and k % 2 == 1 and k >= 3


def test_gaussian_blur_matches_torchvision_with_each_images_own_sigma() -> None:
    x = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0])
    expected = torch.stack(
        [TF.gaussian_blur(img, [7, 7], [float(s), float(s)]) for img, s in zip(x, sigma, strict=True)]
    )
    torch.testing.assert_close(gaussian_blur(x, sigma, 7), expected, atol=1e-5, rtol=0)


def test_blur_lowers_high_frequency_energy_of_noise() -> None:
    images = random_images(64, 32)
    recipe: dict[str, Any] = dict(IDENTITY, blur_kernel_frac=0.2)  # kernel 7 at 32 px
    sharp = SimCLRAugment(32, **recipe, blur_p=0.0)(images, torch.Generator().manual_seed(10))
    blurred = SimCLRAugment(32, **recipe, blur_p=1.0)(images, torch.Generator().manual_seed(10))
    assert torch.equal(sharp, images)
    e_sharp, e_blurred = high_frequency_energy(sharp), high_frequency_energy(blurred)
    assert (e_blurred <= e_sharp * 1.001).all()
    assert e_blurred.mean() < 0.5 * e_sharp.mean()


# ----------------------------------------------------------------------------- statistics vs torchvision


def test_crop_and_flip_statistics_match_per_image_torchvision(
    geometry_batch: Tensor, reference_geometry: dict[str, np.ndarray]
) -> None:
    views = SimCLRAugment(**GEOMETRY_RECIPE)(geometry_batch, torch.Generator().manual_seed(21))
    assert distribution_mismatches(geometry_stats(views, 32), reference_geometry) == []


def test_whole_image_crop_statistics_match_torchvision_on_photos_of_mixed_shapes() -> None:
    """The data path of whole photos: a ragged list of landscape (20 x 30) and portrait
    images, parameters from per-row keys; the landscape views' crops are distributed as torchvision's
    RandomResizedCrop on the whole landscape image, left edge included (a centre square never has
    crops starting left of x = 5)."""
    landscape, portrait = coordinate_image(20, 30), coordinate_image(30, 20)
    images = [landscape if i % 4 else portrait for i in range(STATS_N * 4 // 3)]
    keys = row_keys(seed=5, epoch=1, row_ids=np.arange(len(images)))
    views = SimCLRAugment(**GEOMETRY_RECIPE)(images, RowRandom(keys))
    ours = geometry_stats(views[[i % 4 != 0 for i in range(len(images))]], 20, 30)
    torch.manual_seed(25)
    ref = geometry_stats(per_image_reference(landscape.expand(STATS_N, -1, -1, -1), **GEOMETRY_RECIPE), 20, 30)
    assert distribution_mismatches(ours, ref) == []
    assert (ours["left"] < 4.5).mean() > 0.2


def test_a_rows_views_depend_on_its_key_not_on_its_batch() -> None:
    """Per-row keys: the same row in another batch, at another position, gets the same views."""
    images = random_images(12, 16)
    keys = row_keys(seed=3, epoch=2, row_ids=np.arange(100, 112))
    aug = SimCLRAugment(8, blur_p=0.5, blur_kernel_frac=0.3)
    whole = aug.two_views(images, RowRandom(keys))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))[:5]
    part = aug.two_views(images[order], RowRandom(keys[order.numpy()]))
    for w, p in zip(whole, part, strict=True):
        assert torch.equal(w[order], p)
    other_epoch = aug.two_views(images, RowRandom(row_keys(seed=3, epoch=3, row_ids=np.arange(100, 112))))
    assert not torch.equal(whole[0], other_epoch[0])
    assert not torch.equal(whole[0], whole[1])  # the second view draws further along each row's stream


def test_colour_statistics_match_per_image_torchvision(
    colour_image: Tensor, reference_colour: dict[str, np.ndarray]
) -> None:
    batch = colour_image.expand(STATS_N, -1, -1, -1)
    views = SimCLRAugment(**COLOUR_RECIPE)(batch, torch.Generator().manual_seed(22))
    assert distribution_mismatches(colour_stats(views, colour_image), reference_colour) == []


def test_statistics_comparison_detects_wrong_min_scale(
    geometry_batch: Tensor, reference_geometry: dict[str, np.ndarray]
) -> None:
    recipe = dict(GEOMETRY_RECIPE, min_scale=0.25)
    views = SimCLRAugment(**recipe)(geometry_batch, torch.Generator().manual_seed(23))
    bad = distribution_mismatches(geometry_stats(views, 32), reference_geometry)
    assert any(b.startswith("area_fraction") for b in bad)


def test_statistics_comparison_detects_batch_shared_parameters(
    geometry_batch: Tensor, colour_image: Tensor, reference_geometry: dict[str, np.ndarray],
    reference_colour: dict[str, np.ndarray]
) -> None:
    torch.manual_seed(24)
    geometry = geometry_stats(batch_shared_reference(geometry_batch, **GEOMETRY_RECIPE), 32)
    bad = distribution_mismatches(geometry, reference_geometry)
    assert {b.split(":")[0] for b in bad} >= {"area_fraction", "log_aspect", "flip"}
    colour = colour_stats(batch_shared_reference(colour_image.expand(STATS_N, -1, -1, -1), **COLOUR_RECIPE),
                          colour_image)
    bad = distribution_mismatches(colour, reference_colour)
    assert {b.split(":")[0] for b in bad} >= {"brightness_ratio", "gray"}


# ----------------------------------------------------------------------------- split into two stages

SPLIT_RECIPE: dict[str, Any] = dict(strength=1.0, blur_p=0.5, blur_kernel_frac=0.3)


def _ragged_photos(n: int) -> list[Tensor]:
    """Whole images of three shapes, as a batch of decoded photos is."""
    shapes = [(20, 30), (30, 20), (24, 24)]
    g = torch.Generator().manual_seed(4)
    return [torch.randint(0, 256, (3, *shapes[i % 3]), generator=g, dtype=torch.uint8) for i in range(n)]


@pytest.mark.parametrize("ragged", [False, True], ids=["batch_generator", "ragged_rowrandom"])
def test_call_is_the_crop_stage_then_the_colour_stage_bit_for_bit(ragged: bool) -> None:
    aug = SimCLRAugment(16, **SPLIT_RECIPE)
    images: Any = _ragged_photos(40) if ragged else random_images(40, 24)

    def source() -> Any:
        return RowRandom(row_keys(seed=1, epoch=2, row_ids=np.arange(40))) if ragged else \
            torch.Generator().manual_seed(9)

    fused = aug(images, source())
    crops, colour = aug.crop_stage(images, source())
    assert crops.dtype == torch.uint8 and crops.shape == (40, 3, 16, 16)
    assert torch.equal(aug.colour(crops, colour), fused)
    assert torch.equal(aug.colour(crops, colour, chunk_pixels=1), fused)  # chunking of the colour stage
    assert torch.equal(aug.colour(crops, ColourParams.from_columns(colour.columns("v0_"), "v0_")), fused)


def test_two_crop_stages_give_two_views_exactly() -> None:
    aug = SimCLRAugment(16, **SPLIT_RECIPE)
    images = _ragged_photos(12)
    keys = row_keys(seed=3, epoch=0, row_ids=np.arange(12))
    views = aug.two_views(images, RowRandom(keys))
    stages = aug.two_crop_stages(images, RowRandom(keys))
    for view, (crops, colour) in zip(views, stages, strict=True):
        assert torch.equal(aug.colour(crops, colour), view)


def test_colour_params_pack_into_small_numpy_columns() -> None:
    aug = SimCLRAugment(16, **SPLIT_RECIPE)
    colour = aug.sample_params(5, 20, 20, torch.Generator().manual_seed(0)).colour()
    cols = colour.columns("view0_")
    assert {k: (v.dtype, v.shape) for k, v in cols.items()} == {
        "view0_flip": (np.dtype(bool), (5,)), "view0_jitter": (np.dtype(bool), (5,)),
        "view0_order": (np.dtype(np.int8), (5, 4)), "view0_factors": (np.dtype(np.float32), (5, 4)),
        "view0_gray": (np.dtype(bool), (5,)), "view0_blur": (np.dtype(bool), (5,)),
        "view0_sigma": (np.dtype(np.float32), (5,)),
    }
    back = ColourParams.from_columns({k: torch.from_numpy(v) for k, v in cols.items()}, "view0_")
    for name in ("flip", "jitter", "order", "factors", "gray", "blur", "sigma"):
        assert torch.equal(getattr(back, name).long() if name == "order" else getattr(back, name),
                           getattr(colour, name))


def test_colour_stage_refuses_crops_of_another_size_or_count() -> None:
    aug = SimCLRAugment(16)
    colour = aug.sample_params(4, 20, 20, torch.Generator().manual_seed(0)).colour()
    with pytest.raises(ValueError, match=r"crops must be 16 x 16"):
        aug.colour(random_images(4, 20), colour)
    with pytest.raises(ValueError, match=r"params hold 4 rows for 3 crops"):
        aug.colour(random_images(3, 16), colour)
    with pytest.raises(ValueError, match=r"uint8"):
        aug.colour(random_images(4, 16).float(), colour)


def test_split_path_statistics_match_per_image_torchvision(
    geometry_batch: Tensor, colour_image: Tensor, reference_geometry: dict[str, np.ndarray],
    reference_colour: dict[str, np.ndarray]
) -> None:
    """The split path, parameters through numpy columns as they would travel, against the
    per-image torchvision recipe: crop/flip statistics and colour statistics."""
    def split(images: Tensor, recipe: dict[str, Any], seed: int) -> Tensor:
        aug = SimCLRAugment(**recipe)
        keys = row_keys(seed=seed, epoch=0, row_ids=np.arange(len(images)))
        crops, colour = aug.crop_stage(images, RowRandom(keys))
        return aug.colour(crops, ColourParams.from_columns(colour.columns()))

    geometry = geometry_stats(split(geometry_batch, GEOMETRY_RECIPE, 31), 32)
    assert distribution_mismatches(geometry, reference_geometry) == []
    colour = colour_stats(split(colour_image.expand(STATS_N, -1, -1, -1), COLOUR_RECIPE, 32), colour_image)
    assert distribution_mismatches(colour, reference_colour) == []


def test_aug_device_is_checked_and_auto_puts_the_colour_stage_on_a_gpu_only() -> None:
    with pytest.raises(ConfigError, match=r"aug\.device must be one of auto, data, train; got 'gpu'"):
        Config().replace({"aug.device": "gpu"})
    assert not colour_on_device(Config())
    assert colour_on_device(Config().replace({"train.use_gpu": True}))
    assert not colour_on_device(Config().replace({"train.use_gpu": True, "aug.device": "data"}))
    assert colour_on_device(Config().replace({"aug.device": "train"}))


def test_deferred_views_carry_crops_and_small_columns_and_finish_as_the_fused_views() -> None:
    images = random_images(6, 20)
    cfg = Config().replace({"data.image_size": 16, "aug.blur_p": 0.5})
    fused = two_views(images, cfg, torch.Generator().manual_seed(4))
    assert finish_views(fused, cfg) is fused  # nothing deferred: a no-op
    split = two_views(images, cfg.replace({"aug.device": "train"}), torch.Generator().manual_seed(4))
    assert split["view0"].dtype == torch.uint8 and split["view0"].shape == (6, 3, 16, 16)
    assert sum(v.numel() * v.element_size() for k, v in split.items() if "__" in k) <= 6 * 2 * 40
    finished = finish_views(split, cfg)
    assert set(finished) == {"view0", "view1"}
    assert torch.equal(finished["view0"], fused["view0"]) and torch.equal(finished["view1"], fused["view1"])


@pytest.mark.parametrize("mask_bits", ["10110", "11111", "01000", "10101", "00000", "1101101"])
@pytest.mark.parametrize("max_runs", [1, 4])
def test_apply_subset_on_slices_or_gathered_changes_exactly_the_selected_images(mask_bits: str, max_runs: int) -> None:
    """Run by run on slices (a few runs) or gathered and scattered (more runs, or max_runs=1): the same
    images change, each exactly as the op on it alone, and the others keep every bit."""
    x = torch.rand(len(mask_bits), 3, 6, 7) * 255
    mask = torch.tensor([c == "1" for c in mask_bits])
    factor = torch.linspace(0.5, 1.5, len(mask_bits))
    out = x.clone()
    apply_subset(out, mask, adjust_contrast, factor, max_runs=max_runs)
    for i, selected in enumerate(mask.tolist()):
        expected = adjust_contrast(x[i:i + 1].clone(), factor[i:i + 1])[0] if selected else x[i]
        assert torch.equal(out[i], expected), i
