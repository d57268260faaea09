"""The VAE's config section, ``vae``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from workloads.fields import check, check_choices


@dataclass
class VAEConfig:
    """Variational autoencoder (Kingma & Welling 2014, arXiv:1312.6114), with Higgins et al.'s β on the KL."""

    section: ClassVar[str] = "vae"
    latent_dim: int = 32  # size of z; μ is the feature that kNN, the linear probe and the exported model use
    beta: float = 1.0  # weight of KL(q(z|x) ‖ N(0, I)); 1 is the ELBO itself (Kingma & Welling)
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"  # p(x|z) of pixels in [0, 1]; bernoulli: K&W's MNIST
    sigma: float = 0.1  # gaussian: the fixed standard deviation of every pixel, in [0, 1] pixel units

    def __post_init__(self) -> None:
        check_choices(self)
        s = self.section
        check(self.latent_dim >= 1, s, "latent_dim", ">= 1", self.latent_dim)
        check(self.beta >= 0.0, s, "beta", ">= 0 (1: the ELBO)", self.beta)
        check(self.sigma > 0.0, s, "sigma", "> 0", self.sigma)
