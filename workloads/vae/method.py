"""The variational autoencoder (Kingma & Welling 2014, arXiv:1312.6114) as a workload: one lightly augmented
view streams to the workers; the encoder gives q(z|x) = N(μ, σ²), one z is drawn by reparameterisation, the
decoder scores the image under p(x|z), and the loss is the negative ELBO with a β on the KL term (Higgins et
al. 2017). The representation is μ. Pictures: reconstructions, and samples decoded from the prior.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

from workloads import dist
from workloads.augment.views import one_view
from workloads.config import Config
from workloads.method import Images, Method, Net, normalize
from workloads.pictures import MAX_PICTURES, evaluating, model_device, pictured, reconstruction_grid
from workloads.rng import RandomSource
from workloads.sections import AugConfig
from workloads.vae.config import VAEConfig
from workloads.vae.loss import negative_elbo
from workloads.vae.model import VAEModel, build_vae_model
from workloads.vae.recipes import RECIPES


def _vae(model: nn.Module) -> VAEModel:
    if not isinstance(model, VAEModel):
        raise TypeError(f"the VAE workload needs the VAEModel from VAE.build_model; got {type(model).__name__}")
    return model


def worker_noise(n: int, latent_dim: int, device: torch.device) -> Tensor:
    """ε ~ N(0, I) for this worker's n rows: the global batch's noise is drawn on every worker from the same
    generator state (the same seed on every worker) and each takes its own slice, so no two workers use the
    same ε and W workers of n images draw what one process of W·n would."""
    world, rank = dist.world_size(), dist.rank()
    eps = torch.randn(world * n, latent_dim, device=device)  # (W·n, D), identical on every worker
    return eps[rank * n:(rank + 1) * n]  # (n, D)


def to_pixels(logits: Tensor) -> Tensor:
    """Decoder logits → uint8 images: the mean of p(x|z), sigmoid(ℓ), in [0, 255]."""
    return (torch.sigmoid(logits.float()) * 255.0).round().clamp(0, 255).to(torch.uint8)


class VAE(Method):
    """A convolutional VAE: a ResNet to (μ, log σ²), a transposed-convolution decoder, the β-weighted ELBO."""

    name = "vae"
    view_columns = ("view0",)
    recipes: dict[str, Callable[[], Config]] = RECIPES
    search = ("vae.beta=loguniform(0.25,4.0)", "vae.latent_dim=choice(16,32,64)")
    sections = {"aug": AugConfig, "vae": VAEConfig}  # noqa: RUF012

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        return {"view0": one_view(images, cfg, generator)}  # B x 3 x S x S uint8

    def build_model(self, cfg: Config) -> nn.Module:
        m = cfg.model
        return build_vae_model(m.arch, m.cifar_stem, m.widths, m.blocks, cfg.get(VAEConfig).latent_dim,
                               cfg.data.image_size)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        v = cfg.get(VAEConfig)
        images = batch["view0"]  # B x 3 x S x S uint8
        eps = worker_noise(images.shape[0], v.latent_dim, images.device)  # B x D
        logits, mu, logvar = net.forward(net.image(images), eps)  # B x 3 x S x S, B x D, B x D
        target = images.float() / 255.0  # pixels in [0, 1], the likelihood's support
        return negative_elbo(logits, target, mu, logvar, v.beta, v.likelihood, v.sigma)

    def pictures(self, model: nn.Module, images: Tensor, cfg: Config, folder: str) -> list[str]:
        """Inputs and their reconstructions (the decoder's mean at z = μ), and decoder means of z ~ N(0, I)."""
        core, v = _vae(model), cfg.get(VAEConfig)
        images = pictured(images, cfg.data.image_size)  # n x 3 x S x S uint8
        device = model_device(core)
        prior = torch.randn(2 * MAX_PICTURES, core.latent_dim,
                            generator=torch.Generator().manual_seed(cfg.train.seed))  # 2n x D
        with evaluating(core):
            recon = to_pixels(core.decode(core.encoder(normalize(images.to(device))))).cpu()  # n x 3 x S x S
            samples = to_pixels(core.decode(prior.to(device))).cpu()  # 2n x 3 x S x S
        recon_path = os.path.join(folder, "vae_reconstructions.png")
        reconstruction_grid([images, recon], ["input", "output"], recon_path,
                            f"VAE: inputs and reconstructions (decoder mean at z = μ), {v.likelihood} "
                            f"p(x|z), β = {v.beta:g}")
        samples_path = os.path.join(folder, "vae_samples.png")
        reconstruction_grid([samples[:MAX_PICTURES], samples[MAX_PICTURES:]], ["z ~ N(0, I)", ""], samples_path,
                            f"VAE: decoder means of {2 * MAX_PICTURES} draws from the prior, "
                            f"{v.latent_dim}-dimensional z")
        return [recon_path, samples_path]
