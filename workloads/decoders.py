"""Decoders from a feature map back to an image, for the methods that reconstruct pixels (inpainting, the VAE)."""

from __future__ import annotations

from torch import nn


def upsampling_decoder(in_channels: int, in_size: int, out_size: int, min_channels: int = 32) -> nn.Sequential:
    """Stride-2 transposed convolutions (+ BN, ReLU) halving the width until the map is >= out_size, then a
    3x3 convolution to RGB: the context encoder's up-convolutional decoder (Pathak et al. 2016, §3.1)."""
    layers: list[nn.Module] = []
    channels, size = in_channels, in_size
    while size < out_size:
        out = max(channels // 2, min_channels)
        layers += [nn.ConvTranspose2d(channels, out, kernel_size=4, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        channels, size = out, size * 2
    layers.append(nn.Conv2d(channels, 3, kernel_size=3, padding=1))
    return nn.Sequential(*layers)
