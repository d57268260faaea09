"""The VAE's networks (Kingma & Welling 2014, arXiv:1312.6114, §3 and Appendix C, with convolutions for the
MLPs): a ResNet encoder to the posterior's (μ, log σ²), and a decoder from z back to one logit per pixel.

``encoder`` maps images to μ: the features kNN, the linear probe and the exported model use.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from workloads.decoders import upsampling_decoder
from workloads.encoders import build_encoder, feature_map


class VAEEncoder(nn.Module):
    """q(z|x): a ResNet's pooled features, then two linear layers to μ and log σ² (K&W Eq. 9's MLP outputs)."""

    def __init__(self, trunk: nn.Module, num_features: int, latent_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.mu = nn.Linear(num_features, latent_dim)
        self.logvar = nn.Linear(num_features, latent_dim)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(x)  # N x F
        return self.mu(h), self.logvar(h)  # N x D each

    def forward(self, x: Tensor) -> Tensor:
        return self.mu(self.trunk(x))  # μ: N x D, the representation


class VAEModel(nn.Module):
    """Encoder q(z|x) and decoder p(x|z): z (N, D) → a feature map → up-convolutions → logits (N, 3, S, S)."""

    def __init__(self, trunk: nn.Module, num_features: int, latent_dim: int, image_size: int) -> None:
        super().__init__()
        was_training = trunk.training
        trunk.eval()  # the dry run below must not move BatchNorm's running statistics
        with torch.no_grad():
            channels, side = feature_map(trunk, torch.zeros(1, 3, image_size, image_size)).shape[1:3]
        trunk.train(was_training)
        self.encoder = VAEEncoder(trunk, num_features, latent_dim)
        self.latent_dim, self.image_size = latent_dim, image_size
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, channels * side * side),
            nn.Unflatten(1, (channels, side, side)),  # N x C x h x h, the encoder's last map shape
            nn.ReLU(inplace=True),
            upsampling_decoder(channels, side, image_size),  # N x 3 x S x S (or larger if S is not h·2^k)
        )
        for m in self.decoder.modules():
            if isinstance(m, nn.ConvTranspose2d | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # μ: N x D

    def decode(self, z: Tensor) -> Tensor:
        """p(x|z) as one logit per pixel (N, 3, S, S); the pixel's mean is its sigmoid."""
        out = self.decoder(z)
        if out.shape[-1] != self.image_size:  # the map side did not double up to the image side exactly
            out = nn.functional.interpolate(out, size=(self.image_size, self.image_size), mode="bilinear",
                                            align_corners=False)
        return out

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(logits (N, 3, S, S), μ (N, D), log σ² (N, D)) with z = μ + σ·ε, the reparameterisation (K&W §2.4)."""
        mu, logvar = self.encoder.posterior(x)  # N x D each
        z = mu + torch.exp(0.5 * logvar) * eps.to(mu.dtype)  # N x D
        return self.decode(z), mu, logvar


def build_vae_model(arch: str, cifar_stem: bool, widths: tuple[int, ...], blocks: tuple[int, ...],
                    latent_dim: int, image_size: int) -> VAEModel:
    trunk, num_features = build_encoder(arch, cifar_stem, widths=widths, blocks=blocks)
    return VAEModel(trunk, num_features, latent_dim, image_size)
