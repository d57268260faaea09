"""Masked image modelling: masks, patches, the masked loss against a naive loop, the MAE encoder's
blindness to masked patches, and both workloads' loss, gradients and pictures on the digits recipes."""

from __future__ import annotations

import math
import statistics
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from PIL import Image

from workloads.config import Config
from workloads.inpaint.method import Inpaint
from workloads.inpaint.model import build_inpaint_model
from workloads.mae.method import MAE
from workloads.mae.model import MAEModel, build_mae_model
from workloads.masked import masked_mse
from workloads.masks import (
    block_mask,
    mask_pixels,
    num_masked,
    patchify,
    random_patch_mask,
    unpatchify,
    visible_index,
)
from workloads.method import Method, Net, normalize
from workloads.vit import ViT


def _patches(b: int, length: int, p: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, p, generator=g), torch.randn(b, length, p, generator=g)  # pred, target


def _digits_batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    """n uint8 16 px images that look like upscaled digits: a bright blob on black."""
    g = torch.Generator().manual_seed(seed)
    small = (torch.rand(n, 1, 8, 8, generator=g) > 0.6).float() * 255.0
    big = torch.nn.functional.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)  # n x 3 x 16 x 16


# ----------------------------------------------------------------------------- the loss


def naive_masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> float:
    """MAE's loss written patch by patch in float64: mean over masked patches of the per-patch MSE."""
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for i in range(pred.shape[1]):
            if not mask[b, i]:
                continue
            t = [float(v) for v in target[b, i]]
            if norm_pix:
                mean, var = statistics.fmean(t), statistics.variance(t)
                t = [(v - mean) / math.sqrt(var + 1e-6) for v in t]
            total += statistics.fmean((float(p) - v) ** 2 for p, v in zip(pred[b, i], t, strict=True))
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize(("b", "length", "p", "ratio"), [(1, 4, 3, 0.5), (3, 16, 12, 0.75), (5, 64, 48, 0.3)])
def test_masked_mse_equals_naive_per_patch_loop(b: int, length: int, p: int, ratio: float, norm_pix: bool) -> None:
    pred, target = _patches(b, length, p)
    mask = random_patch_mask(b, length, ratio, torch.Generator().manual_seed(1))
    got = masked_mse(pred, target, mask, norm_pix)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(naive_masked_mse(pred, target, mask, norm_pix), rel=1e-5)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_masked_mse_counts_only_masked_patches(norm_pix: bool) -> None:
    pred, target = _patches(4, 16, 12)
    mask = random_patch_mask(4, 16, 0.75, torch.Generator().manual_seed(0))
    base = masked_mse(pred, target, mask, norm_pix)

    visible_changed = pred.clone()
    visible_changed[~mask] = torch.randn(int((~mask).sum()), 12) * 100.0
    visible_changed[0, (~mask[0]).nonzero()[0, 0]] = float("inf")  # not even inf leaks in
    assert torch.equal(masked_mse(visible_changed, target, mask, norm_pix), base)

    masked_changed = pred.clone()
    b, i = mask.nonzero()[0].tolist()
    masked_changed[b, i] += 1.0
    assert not torch.equal(masked_mse(masked_changed, target, mask, norm_pix), base)

    leaf = pred.clone().requires_grad_(True)
    masked_mse(leaf, target, mask, norm_pix).backward()
    assert leaf.grad is not None
    assert torch.count_nonzero(leaf.grad[~mask]) == 0
    assert torch.count_nonzero(leaf.grad[mask]) > 0


def test_masked_mse_is_float32_under_bf16_inputs() -> None:
    pred, target = _patches(2, 16, 12)
    mask = random_patch_mask(2, 16, 0.5, torch.Generator().manual_seed(0))
    got = masked_mse(pred.bfloat16(), target, mask)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(masked_mse(pred.bfloat16().float(), target, mask).item())


def test_masked_mse_rejects_mismatched_shapes() -> None:
    pred, target = _patches(2, 16, 12)
    with pytest.raises(ValueError, match="pred and target"):
        masked_mse(pred, target[:, :8], torch.ones(2, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        masked_mse(pred, target, torch.ones(2, 16))


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("length", [4, 16, 49, 64, 196])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.6, 0.75, 0.9])
def test_random_patch_mask_masks_exactly_round_ratio_in_every_image(length: int, ratio: float) -> None:
    mask = random_patch_mask(32, length, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (32, length) and mask.dtype == torch.bool
    expected = min(max(round(ratio * length), 1), length - 1)
    assert num_masked(length, ratio) == expected
    assert (mask.sum(dim=1) == expected).all()


def test_random_patch_mask_differs_between_images_and_repeats_with_the_seed() -> None:
    mask = random_patch_mask(16, 64, 0.75, torch.Generator().manual_seed(0))
    assert len({tuple(row.tolist()) for row in mask}) == 16
    assert torch.equal(mask, random_patch_mask(16, 64, 0.75, torch.Generator().manual_seed(0)))
    # every patch is masked with probability ~ratio over many images (no positional bias)
    many = random_patch_mask(4000, 16, 0.75, torch.Generator().manual_seed(1)).float().mean(dim=0)
    assert torch.allclose(many, torch.full((16,), 0.75), atol=0.03)


@pytest.mark.parametrize("grid", [4, 8, 16])
@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_block_mask_is_one_rectangle_covering_about_ratio(grid: int, ratio: float) -> None:
    mask = block_mask(200, grid, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (200, grid * grid) and mask.dtype == torch.bool
    cells = mask.view(200, grid, grid)
    for m in cells:
        rows, cols = m.any(dim=1).nonzero().squeeze(1), m.any(dim=0).nonzero().squeeze(1)
        h, w = len(rows), len(cols)
        assert int(m.sum()) == h * w  # a full rectangle ...
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w  # ... of adjacent rows and columns
        assert abs(h * w - ratio * grid * grid) <= h / 2 + 0.5  # width = round(area / h)
    coverage = mask.float().mean(dim=1)
    assert abs(coverage.mean().item() - ratio) < 0.03
    assert len({tuple(row.tolist()) for row in mask}) >= 8  # placed and shaped per image


def test_visible_index_keeps_grid_order_and_restores() -> None:
    mask = random_patch_mask(4, 16, 0.75, torch.Generator().manual_seed(0))
    keep, restore = visible_index(mask)
    assert keep.shape == (4, 4)
    for b in range(4):
        assert keep[b].tolist() == (~mask[b]).nonzero().squeeze(1).tolist()
    order = torch.cat([keep, mask.nonzero()[:, 1].view(4, 12)], dim=1)  # visible first, then masked
    assert torch.equal(order.gather(1, restore), torch.arange(16).expand(4, 16))
    uneven = mask.clone()
    uneven[0] = False
    with pytest.raises(ValueError, match="same number of visible patches"):
        visible_index(uneven)


# ----------------------------------------------------------------------------- patches


@pytest.mark.parametrize(("size", "p", "c"), [(16, 2, 3), (32, 4, 3), (12, 3, 1), (8, 8, 3)])
def test_patchify_unpatchify_round_trip(size: int, p: int, c: int) -> None:
    images = torch.randn(3, c, size, size)
    patches = patchify(images, p)
    assert patches.shape == (3, (size // p) ** 2, p * p * c)
    assert torch.equal(unpatchify(patches, p, channels=c), images)


def test_patchify_layout_is_row_major_patches_of_row_col_channel() -> None:
    images = torch.randn(2, 3, 8, 8)
    patches = patchify(images, 4)  # 2 x 4 x 48
    for i in range(2):
        for j in range(2):
            block = images[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4]  # 2 x 3 x 4 x 4
            assert torch.equal(patches[:, 2 * i + j], block.permute(0, 2, 3, 1).reshape(2, 48))


def test_mask_pixels_covers_the_masked_patches() -> None:
    mask = random_patch_mask(2, 16, 0.5, torch.Generator().manual_seed(0))
    hole = mask_pixels(mask, 3)  # 2 x 1 x 12 x 12
    assert hole.shape == (2, 1, 12, 12)
    per_patch = patchify(hole.expand(-1, 3, -1, -1).float(), 3)  # 2 x 16 x 27
    assert torch.equal(per_patch.amin(dim=-1).bool(), mask) and torch.equal(per_patch.amax(dim=-1).bool(), mask)


# ----------------------------------------------------------------------------- the MAE encoder


def _tiny_mae(seed: int = 0) -> MAEModel:
    torch.manual_seed(seed)
    return build_mae_model(16, 4, dim=32, depth=2, heads=2, decoder_dim=16, decoder_depth=1, decoder_heads=2)


def test_mae_encoder_sees_only_visible_patches() -> None:
    model = _tiny_mae().eval()
    x = torch.randn(3, 3, 16, 16)
    mask = random_patch_mask(3, 16, 0.75, torch.Generator().manual_seed(0))
    hole = mask_pixels(mask, 4).expand(-1, 3, -1, -1)
    scrambled = torch.where(hole, torch.randn_like(x) * 10.0, x)  # only masked pixels change
    with torch.no_grad():
        tokens = model.encoder.forward_visible(x, mask)
        assert tokens.shape == (3, 1 + 4, 32)  # class token + the 4 visible patches
        torch.testing.assert_close(model.encoder.forward_visible(scrambled, mask), tokens, rtol=0, atol=1e-6)
        torch.testing.assert_close(model(scrambled, mask), model(x, mask), rtol=0, atol=1e-6)
        visible_changed = torch.where(hole, x, x + 1.0)
        assert not torch.allclose(model.encoder.forward_visible(visible_changed, mask), tokens)


def test_vit_features_are_the_mean_patch_token_at_any_grid() -> None:
    encoder = _tiny_mae().encoder.eval()
    assert isinstance(encoder, ViT)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = encoder(x)
        nothing_masked = encoder.encode_kept(x, torch.arange(16).expand(2, 16))  # 2 x 17 x 32
        assert features.shape == (2, 32)
        torch.testing.assert_close(features, nothing_masked[:, 1:].mean(dim=1))
        assert encoder(torch.randn(2, 3, 24, 24)).shape == (2, 32)  # eval images stored larger still embed


def test_mae_model_predicts_every_patch() -> None:
    model = _tiny_mae()
    mask = random_patch_mask(2, 16, 0.5, torch.Generator().manual_seed(0))
    assert model(torch.randn(2, 3, 16, 16), mask).shape == (2, 16, 4 * 4 * 3)


def test_inpaint_model_reconstructs_the_image_size() -> None:
    torch.manual_seed(0)
    model = build_inpaint_model("small_resnet", True, (8, 16), (1, 1), image_size=12)
    assert model(torch.randn(2, 3, 12, 12)).shape == (2, 3, 12, 12)
    assert model.encoder(torch.randn(2, 3, 12, 12)).shape == (2, 16)


# ----------------------------------------------------------------------------- the workloads


def _net(model: torch.nn.Module) -> Net:
    return Net(forward=model, core=model, image=normalize, autocast=nullcontext)


@pytest.mark.parametrize("workload", [MAE(), Inpaint()], ids=lambda m: m.name)
def test_loss_runs_and_every_parameter_gets_a_gradient_on_the_digits_recipe(workload: Method) -> None:
    cfg = workload.recipes["digits"]()
    assert cfg.method == workload.name
    batch = workload.views(_digits_batch(8), cfg, torch.Generator().manual_seed(0))
    assert set(batch) == {*workload.view_columns, "mask"}
    assert batch["view0"].dtype == torch.uint8 and batch["view0"].shape == (8, 3, 16, 16)
    grid = cfg.data.image_size // cfg.model.patch_size
    assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (8, grid * grid)
    torch.manual_seed(0)
    model = workload.build_model(cfg)
    loss = workload.loss(_net(model), batch, cfg)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    # DDP without find_unused_parameters needs every parameter in the graph
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    encoder = model.get_submodule("encoder")  # what kNN, the linear probe and the export use
    with torch.no_grad():
        assert encoder(normalize(batch["view0"])).shape[0] == 8


def test_mae_views_mask_exactly_the_ratio() -> None:
    cfg = MAE.recipes["digits"]()
    batch = MAE().views(_digits_batch(16), cfg, torch.Generator().manual_seed(0))
    assert (batch["mask"].sum(dim=1) == round(0.75 * 64)).all()


def test_inpaint_model_input_has_the_hole_zeroed() -> None:
    """The context encoder never sees the hidden pixels: its input is the same whatever they are."""
    workload = Inpaint()
    cfg = workload.recipes["digits"]()
    batch = workload.views(_digits_batch(8), cfg, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = workload.build_model(cfg)
    seen: list[torch.Tensor] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return model(x)

    net = Net(forward=forward, core=model, image=normalize, autocast=nullcontext)
    hole = mask_pixels(batch["mask"], cfg.model.patch_size)  # 8 x 1 x 16 x 16
    filled = {**batch, "view0": batch["view0"].masked_fill(hole, 255)}
    workload.loss(net, batch, cfg)
    workload.loss(net, filled, cfg)
    assert torch.equal(seen[0], seen[1])
    assert (seen[0].masked_select(hole) == 0).all()


@pytest.mark.parametrize("workload", [MAE(), Inpaint()], ids=lambda m: m.name)
@pytest.mark.parametrize("norm_pix", [False, True])
def test_pictures_write_one_png(workload: Method, norm_pix: bool, tmp_path: Path) -> None:
    cfg: Config = workload.recipes["digits"]().replace({"mae.norm_pix_loss": norm_pix})
    torch.manual_seed(0)
    model = workload.build_model(cfg)
    model.train()
    paths = workload.pictures(model, _digits_batch(10), cfg, str(tmp_path))
    assert len(paths) == 1 and paths[0].endswith(".png")
    with Image.open(paths[0]) as png:
        assert png.format == "PNG" and png.width > 300
    assert model.training  # left as it was found


@pytest.mark.parametrize("workload", [MAE(), Inpaint()], ids=lambda m: m.name)
def test_recipes_build_and_search_names_a_mae_field(workload: Method) -> None:
    for name, make in workload.recipes.items():
        cfg = make()
        assert cfg.method == workload.name, name
        assert cfg.data.image_size % cfg.model.patch_size == 0, name
        assert cfg.optim.name == "adamw", name
    assert workload.search and all(s.startswith("mae.mask_ratio=uniform(") for s in workload.search)
