"""Backbones for every ResNet method: torchvision ResNets (optionally with the CIFAR stem) and a small ResNet
for tests and the digits recipes.

Every encoder maps images (N, 3, H, W) to features (N, F); the classifier (`fc`) is removed because
SimCLR evaluates the backbone's pooled features (Chen et al. 2020, §2.1 and appendix B.9).
``feature_map`` is an encoder's forward without the pooling, for decoders that need the map.

torchvision is imported where one of its ResNets is built, not at the top: every process that imports
the methods without building one (the stream's tasks, the train workers of the digits recipes, the
driver) starts without it, and its import (which pulls in torch._dynamo) is over a second of CPU each.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

TORCHVISION_ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
ARCHS: tuple[str, ...] = (*TORCHVISION_ARCHS, "small_resnet")


def _init_conv_bn(module: nn.Module) -> None:
    """Initialise like torchvision's ResNet: Kaiming-normal convs (fan_out), BN weight 1 and bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet's basic block (He et al. 2016, Fig. 2 left): conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then
    ReLU. torchvision's ``BasicBlock`` computes the same with the same parameter names (conv1, bn1, conv2,
    bn2, downsample), so the small ResNet's checkpoints and tests hold across the two."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)  # N x out_ch x H/stride x W/stride
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class SmallResNet(nn.Module):
    """A few-stage ResNet of basic blocks, small enough to train in tests on a CPU.

    Stem conv3x3(3 → widths[0]) + BN + ReLU at stride 1 (the CIFAR stem), then one stage per entry of
    `widths`: stage i has `blocks[i]` BasicBlocks, stride 1 for the first stage and 2 after.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128), blocks: tuple[int, ...] = (1, 1, 1)) -> None:
        super().__init__()
        _check_widths_blocks(widths, blocks)
        self.stem = nn.Sequential(
            conv3x3(3, widths[0]),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for i, (width, n_blocks) in enumerate(zip(widths, blocks, strict=True)):
            stages.append(_make_stage(in_ch, width, n_blocks, stride=1 if i == 0 else 2))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[-1]
        _init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)  # N x widths[0] x H x W
        x = self.stages(x)  # N x widths[-1] x H/2^(S-1) x W/2^(S-1)
        return torch.flatten(self.pool(x), 1)  # N x widths[-1]


def _check_widths_blocks(widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
    if len(widths) == 0:
        raise ValueError("widths must name at least one stage width, e.g. widths=(32, 64, 128).")
    if len(widths) != len(blocks):
        raise ValueError(
            f"widths and blocks must have one entry per stage; got len(widths)={len(widths)} and "
            f"len(blocks)={len(blocks)}. Give both the same length, e.g. widths=(32, 64), blocks=(1, 1)."
        )
    if any(w <= 0 for w in widths):
        raise ValueError(f"widths entries must be positive channel counts; got widths={widths}.")
    if any(b <= 0 for b in blocks):
        raise ValueError(f"blocks entries must be positive block counts; got blocks={blocks}.")


def _make_stage(in_ch: int, out_ch: int, n_blocks: int, stride: int) -> nn.Sequential:
    """`n_blocks` BasicBlocks; the first changes stride/channels, with a 1x1 conv+BN shortcut if needed."""
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_ch))
    layers: list[nn.Module] = [BasicBlock(in_ch, out_ch, stride=stride, downsample=downsample)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(n_blocks - 1)]
    return nn.Sequential(*layers)


def _torchvision_resnet(arch: str, cifar_stem: bool) -> tuple[nn.Module, int]:
    from torchvision.models import resnet  # here, not at the top (the module's docstring)

    net = getattr(resnet, arch)(weights=None)
    num_features = net.fc.in_features
    net.fc = nn.Identity()
    if cifar_stem:
        # 3x3 stride-1 conv and no max-pool keep 32 px inputs at 32x32 into layer1 instead of 8x8
        # (SimCLR appendix B.9; lightly/solo-learn CIFAR backbones).
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return net, num_features


def build_encoder(
    arch: str,
    cifar_stem: bool,
    widths: tuple[int, ...] = (32, 64, 128),
    blocks: tuple[int, ...] = (1, 1, 1),
) -> tuple[nn.Module, int]:
    """Build a randomly initialised backbone and return (encoder: (N,3,H,W) → (N,F), F).

    `cifar_stem` applies to the torchvision ResNets (use it for images of 64 px and less);
    `small_resnet` always has a stride-1 3x3 stem. `widths`/`blocks` apply to `small_resnet` only.
    """
    _check_widths_blocks(widths, blocks)  # checked for every arch so a bad config fails early
    if arch == "small_resnet":
        net = SmallResNet(widths=tuple(widths), blocks=tuple(blocks))
        return net, net.num_features
    if arch in TORCHVISION_ARCHS:
        return _torchvision_resnet(arch, cifar_stem)
    raise ValueError(f"Unknown arch {arch!r}; choose one of {', '.join(ARCHS)}.")


def feature_map(encoder: nn.Module, x: Tensor) -> Tensor:
    """A ResNet encoder's last feature map (N, F, h, w): its forward without the global pooling."""
    if isinstance(encoder, SmallResNet):
        return encoder.stages(encoder.stem(x))  # N x F x h x w
    from torchvision.models import resnet  # imported already where one of its ResNets was built

    if isinstance(encoder, resnet.ResNet):
        x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))
        return encoder.layer4(encoder.layer3(encoder.layer2(encoder.layer1(x))))  # N x F x h x w
    raise NotImplementedError(f"a feature map needs a ResNet encoder (small_resnet or resnet*); got "
                              f"{type(encoder).__name__}")
