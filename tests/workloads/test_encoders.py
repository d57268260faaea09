"""Backbones and the SimCLR model: shapes, the CIFAR stem, SmallResNet config, head layout, errors."""

from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import ResNet

from workloads.encoders import ARCHS, BasicBlock, SmallResNet, build_encoder
from workloads.heads import ProjectionHead
from workloads.simclr.model import SimCLRModel, build_simclr_model

EXPECTED_FEATURES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "small_resnet": 128}


def test_archs_lists_every_supported_name() -> None:
    assert set(ARCHS) == set(EXPECTED_FEATURES)


@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_maps_images_to_n_by_f_features(arch: str) -> None:
    torch.manual_seed(0)
    encoder, num_features = build_encoder(arch, cifar_stem=True)
    assert num_features == EXPECTED_FEATURES[arch]
    encoder.eval()
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_features)
    assert torch.isfinite(out).all()


def test_cifar_stem_is_3x3_stride1_conv_without_maxpool() -> None:
    encoder, _ = build_encoder("resnet18", cifar_stem=True)
    assert isinstance(encoder, ResNet)
    conv1 = encoder.conv1
    assert isinstance(conv1, nn.Conv2d)
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert conv1.bias is None
    assert isinstance(encoder.maxpool, nn.Identity)
    assert isinstance(encoder.fc, nn.Identity)
    with torch.no_grad():
        stem_out = encoder.maxpool(encoder.conv1(torch.randn(1, 3, 32, 32)))
    assert stem_out.shape[-2:] == (32, 32)  # spatial resolution kept into layer1


def test_imagenet_stem_is_kept_without_cifar_stem() -> None:
    encoder, num_features = build_encoder("resnet18", cifar_stem=False)
    assert isinstance(encoder, ResNet)
    assert encoder.conv1.kernel_size == (7, 7) and encoder.conv1.stride == (2, 2)
    assert isinstance(encoder.maxpool, nn.MaxPool2d)
    assert isinstance(encoder.fc, nn.Identity)
    encoder.eval()
    with torch.no_grad():
        assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, num_features)


def test_small_resnet_honours_widths_and_blocks() -> None:
    encoder, num_features = build_encoder("small_resnet", True, widths=(8, 16), blocks=(2, 3))
    assert num_features == 16
    assert isinstance(encoder, SmallResNet)
    stages: list[Any] = list(encoder.stages)
    assert [len(stage) for stage in stages] == [2, 3]
    assert all(isinstance(b, BasicBlock) for stage in stages for b in stage)
    first, second = stages[0][0], stages[1][0]
    assert first.conv1.stride == (1, 1) and first.downsample is None  # 8 -> 8 channels at stride 1
    assert second.conv1.stride == (2, 2) and second.conv1.out_channels == 16
    assert isinstance(second.downsample, nn.Sequential)
    assert isinstance(second.downsample[0], nn.Conv2d) and second.downsample[0].kernel_size == (1, 1)
    assert isinstance(second.downsample[1], nn.BatchNorm2d)
    encoder.eval()
    with torch.no_grad():
        assert encoder(torch.randn(3, 3, 16, 16)).shape == (3, 16)


def test_small_resnet_stride2_stage_gets_shortcut_even_at_equal_width() -> None:
    # the shape changes through the stride alone, so the identity path needs the 1x1 stride-2 conv
    net = SmallResNet(widths=(8, 8), blocks=(1, 1))
    stages: list[Any] = list(net.stages)
    assert stages[1][0].downsample is not None


@pytest.mark.parametrize(
    ("widths", "blocks", "field"),
    [
        ((8, 16), (1,), "len(widths)"),
        ((8, 0), (1, 1), "widths"),
        ((8, 16), (1, -1), "blocks"),
        ((), (), "widths"),
    ],
)
def test_bad_widths_or_blocks_raise_naming_the_field(
    widths: tuple[int, ...], blocks: tuple[int, ...], field: str
) -> None:
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        build_encoder("small_resnet", True, widths=widths, blocks=blocks)


def test_unknown_arch_raises_listing_allowed_names() -> None:
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50, small_resnet"):
        build_encoder("vit_b_16", True)


def test_features_come_before_the_head_and_forward_gives_projections() -> None:
    torch.manual_seed(0)
    model = build_simclr_model("small_resnet", True, widths=(8, 16), blocks=(1, 1), proj_dim=32)
    assert isinstance(model, SimCLRModel)
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        h = model.features(x)
        z = model(x)
        assert h.shape == (4, 16)
        assert z.shape == (4, 32)
        torch.testing.assert_close(h, model.encoder(x))
        torch.testing.assert_close(z, model.head(h))


def test_proj_hidden_dim_defaults_to_feature_width() -> None:
    model = build_simclr_model("small_resnet", True, widths=(8, 24), blocks=(1, 1))
    linears = [m for m in model.head.modules() if isinstance(m, nn.Linear)]
    assert (linears[0].in_features, linears[0].out_features) == (24, 24)
    assert linears[-1].out_features == 128
    model = build_simclr_model("small_resnet", True, widths=(8, 24), blocks=(1, 1), proj_hidden_dim=40)
    assert model.head.layers[0].out_features == 40


@pytest.mark.parametrize("num_layers", [2, 3])
def test_head_has_num_layers_linears_with_bn_relu_between(num_layers: int) -> None:
    head = ProjectionHead(16, 32, out_dim=8, num_layers=num_layers)
    kinds = [type(m) for m in head.layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * (num_layers - 1) + [nn.Linear]
    linears = [m for m in head.layers if isinstance(m, nn.Linear)]
    assert all(lin.bias is None for lin in linears[:-1])  # BN follows, so no bias
    assert linears[-1].bias is not None and linears[-1].out_features == 8
    assert head(torch.randn(5, 16)).shape == (5, 8)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_layers": 1}, "num_layers"),
        ({"num_layers": 4}, "num_layers"),
        ({"out_dim": 0}, "out_dim"),
        ({"hidden_dim": -1}, "hidden_dim"),
        ({"in_dim": 0}, "in_dim"),
    ],
)
def test_head_rejects_bad_sizes_naming_the_field(kwargs: dict[str, int], field: str) -> None:
    args = {"in_dim": 16, "hidden_dim": 32, "out_dim": 8, "num_layers": 2} | kwargs
    with pytest.raises(ValueError, match=field):
        ProjectionHead(**args)


@pytest.mark.parametrize(("in_ch", "out_ch", "stride"), [(8, 8, 1), (8, 16, 2)])
def test_the_small_resnets_block_is_torchvisions_basic_block(in_ch: int, out_ch: int, stride: int) -> None:
    """The same parameter names and shapes, and the same output from the same weights, in train and eval mode."""
    def shortcut() -> nn.Module | None:
        if stride == 1 and in_ch == out_ch:
            return None
        return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    torch.manual_seed(0)
    ours, theirs = BasicBlock(in_ch, out_ch, stride, shortcut()), resnet.BasicBlock(in_ch, out_ch, stride, shortcut())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    for p in theirs.parameters():
        nn.init.normal_(p)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(4, in_ch, 12, 12)
    for mode in (True, False):
        ours.train(mode)
        theirs.train(mode)
        torch.testing.assert_close(ours(x.clone()), theirs(x.clone()))
