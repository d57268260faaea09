"""The context encoder's network (Pathak et al. 2016): a ResNet on the image with a hole and a
transposed-convolution decoder back to the image; it knows nothing of masks, the loss or the loop.
`encoder` maps images (N, 3, S, S) to features (N, F): what kNN, the linear probe and the exported model use.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from workloads.decoders import upsampling_decoder
from workloads.encoders import build_encoder, feature_map


class InpaintModel(nn.Module):
    """Context encoder: ResNet encoder -> feature map -> up-convolutions -> the whole image (B, 3, H, W).

    Pathak et al.'s channel-wise fully-connected bottleneck is left out: at <= 8x8 feature maps the
    ResNet's receptive field already spans the image, so every output pixel can see all the context.
    The adversarial term is left out too (their L2-only variant); the loss is `workloads.masked.masked_mse`.
    """

    def __init__(self, encoder: nn.Module, num_features: int, image_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_size = image_size
        was_training = encoder.training
        encoder.eval()  # the dry run below must not move BatchNorm's running statistics
        with torch.no_grad():
            size = feature_map(encoder, torch.zeros(1, 3, image_size, image_size)).shape[-1]
        encoder.train(was_training)
        self.decoder = upsampling_decoder(num_features, size, image_size)
        for m in self.decoder.modules():
            if isinstance(m, nn.ConvTranspose2d | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # the reconstruction starts at 0, the normalised mean image, not at a random image of large
        # variance that the first steps would spend undoing
        last = self.decoder[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # N x F

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction (B, 3, H, W) of images whose hole was set to 0 (the normalised mean) by the caller."""
        out = self.decoder(feature_map(self.encoder, x))  # B x 3 x h·2^k x w·2^k
        if out.shape[-2:] != x.shape[-2:]:  # the map side did not double up to the image side exactly
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out  # B x 3 x H x W


def build_inpaint_model(arch: str, cifar_stem: bool, widths: tuple[int, ...], blocks: tuple[int, ...],
                        image_size: int) -> InpaintModel:
    encoder, num_features = build_encoder(arch, cifar_stem, widths=widths, blocks=blocks)
    return InpaintModel(encoder, num_features, image_size)
