"""The VAE against Kingma & Welling: the ELBO by hand and per element, the KL in closed form, μ as the
features, the reparameterised noise across workers, pictures and checkpoints."""

from __future__ import annotations

import io
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from workloads.config import Config, ConfigError
from workloads.method import Net, normalize
from workloads.methods import METHODS
from workloads.optim import build_optimizer
from workloads.vae.config import VAEConfig
from workloads.vae.loss import gaussian_kl, log_likelihood, negative_elbo
from workloads.vae.method import VAE, worker_noise
from workloads.vae.model import VAEModel
from workloads.vae.recipes import vae_cifar10, vae_digits

SIZE = 8


def test_negative_elbo_equals_a_hand_computation_bernoulli() -> None:
    """One image of two pixels, a one-dimensional latent.

    Pixel means sigmoid(0) = 1/2 and sigmoid(log 3) = 3/4 for pixels x = 1 and x = 0:
    log p(x|z) = log(1/2) + log(1 − 3/4) = −log 8. μ = 1, log σ² = 0: KL = ½(1 + 1 − 1 − 0) = ½.
    With β = 2: −ELBO_β = log 8 + 2·½ = log 8 + 1.
    """
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    mu, logvar = torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[0.0]], dtype=torch.float64)
    loss = negative_elbo(logits, target, mu, logvar, beta=2.0, likelihood="bernoulli")
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(math.log(8.0) + 1.0, abs=1e-12)


def test_negative_elbo_equals_a_hand_computation_gaussian() -> None:
    """Two images of one pixel each, σ = 0.1 and a two-dimensional latent.

    Image 1: mean sigmoid(0) = 0.5, x = 0.7: −log N(0.7; 0.5, 0.01) = 0.2²/0.02 + log 0.1 + ½ log 2π
    = 2 + log 0.1 + ½ log 2π; μ = (0, 0), log σ² = (log 2, 0): KL = ½(2 − 1 − log 2) = ½(1 − log 2).
    Image 2: mean 0.5, x = 0.5: −log p = log 0.1 + ½ log 2π; μ = (3, 4), log σ² = 0: KL = ½·25 = 12.5.
    β = 1; the loss is the mean of the two.
    """
    logits = torch.zeros(2, 1, dtype=torch.float64)
    target = torch.tensor([[0.7], [0.5]], dtype=torch.float64)
    mu = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    logvar = torch.tensor([[math.log(2.0), 0.0], [0.0, 0.0]], dtype=torch.float64)
    const = math.log(0.1) + 0.5 * math.log(2 * math.pi)
    expected = ((2.0 + const + 0.5 * (1 - math.log(2.0))) + (const + 12.5)) / 2
    loss = negative_elbo(logits, target, mu, logvar, beta=1.0, likelihood="gaussian", sigma=0.1)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def naive_negative_elbo(logits: Tensor, target: Tensor, mu: Tensor, logvar: Tensor, beta: float,
                        likelihood: str, sigma: float) -> Tensor:
    """−ELBO_β element by element in float64, straight from K&W Eq. 10 and Appendix B."""
    total = torch.zeros((), dtype=torch.float64)
    n = logits.shape[0]
    for i in range(n):
        log_p = torch.zeros((), dtype=torch.float64)
        for ell, x in zip(logits[i].flatten().double(), target[i].flatten().double(), strict=True):
            m = 1.0 / (1.0 + torch.exp(-ell))
            if likelihood == "bernoulli":
                log_p = log_p + x * torch.log(m) + (1 - x) * torch.log(1 - m)
            else:
                log_p = log_p - (x - m) ** 2 / (2 * sigma**2) - math.log(sigma * math.sqrt(2 * math.pi))
        kl = torch.zeros((), dtype=torch.float64)
        for u, lv in zip(mu[i].double(), logvar[i].double(), strict=True):
            kl = kl + 0.5 * (u**2 + torch.exp(lv) - 1 - lv)
        total = total + (-log_p + beta * kl)
    return total / n


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_negative_elbo_and_its_gradients_match_the_element_by_element_reference(likelihood: str, beta: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 2, 2, generator=g).requires_grad_()
    target = torch.rand(3, 3, 2, 2, generator=g)
    mu = torch.randn(3, 4, generator=g).requires_grad_()
    logvar = (0.5 * torch.randn(3, 4, generator=g)).requires_grad_()
    refs = [t.detach().double().requires_grad_() for t in (logits, mu, logvar)]
    loss = negative_elbo(logits, target, mu, logvar, beta, likelihood, 0.3)
    expected = naive_negative_elbo(refs[0], target, refs[1], refs[2], beta, likelihood, 0.3)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, atol=1e-4, rtol=1e-5)
    loss.backward()
    expected.backward()
    for t, r in zip((logits, mu, logvar), refs, strict=True):
        assert t.grad is not None
        torch.testing.assert_close(t.grad.double(), r.grad, atol=1e-5, rtol=1e-5)


def test_kl_is_torch_distributions_closed_form() -> None:
    g = torch.Generator().manual_seed(1)
    mu, logvar = (torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(2))
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected.sum(dim=1))


def test_negative_elbo_computes_in_float32_under_autocast_and_rejects_bad_inputs() -> None:
    logits, target, mu, logvar = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.randn(2, 5), torch.randn(2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert negative_elbo(logits.bfloat16(), target, mu.bfloat16(), logvar.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="same shape"):
        log_likelihood(logits, target[:1], "bernoulli")
    with pytest.raises(ValueError, match="likelihood must be"):
        log_likelihood(logits, target, "laplace")
    with pytest.raises(ValueError, match="mu and logvar"):
        negative_elbo(logits, target, mu, logvar[:, :4])
    with pytest.raises(ConfigError, match="vae.likelihood"):
        vae_digits().replace({"vae.likelihood": "laplace"})


# --- the model and the method -------------------------------------------------------------------------


def _cfg(**overrides: Any) -> Config:
    return Config().replace({"method": "vae", "data.image_size": SIZE, "model.widths": [8, 16], "model.blocks": [1, 1],
                             "vae.latent_dim": 4, **overrides})


def _build(cfg: Config, seed: int = 0) -> VAEModel:
    torch.manual_seed(seed)
    model = VAE().build_model(cfg)
    assert isinstance(model, VAEModel)
    return model.train()


def _net(model: VAEModel) -> Net:
    return Net(forward=model, core=model, image=normalize, autocast=nullcontext)


def _images(n: int, seed: int = 0) -> Tensor:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_features_and_the_encoder_are_mu_and_zero_noise_decodes_mu() -> None:
    model = _build(_cfg()).eval()
    x = normalize(_images(4))
    mu, logvar = model.encoder.posterior(x)
    assert mu.shape == logvar.shape == (4, 4)
    assert torch.equal(model.encoder(x), mu) and torch.equal(model.features(x), mu)
    logits, mu2, _ = model(x, torch.zeros(4, 4))
    assert logits.shape == (4, 3, SIZE, SIZE)
    torch.testing.assert_close(logits, model.decode(mu))
    assert torch.equal(mu2, mu)


def test_loss_is_the_negative_elbo_of_the_models_outputs_and_reaches_every_parameter() -> None:
    cfg = _cfg(**{"vae.beta": 0.5})
    model = _build(cfg)
    images = _images(6)
    torch.manual_seed(3)
    loss = VAE().loss(_net(model), {"view0": images}, cfg)
    torch.manual_seed(3)
    logits, mu, logvar = model(normalize(images), torch.randn(6, 4))
    torch.testing.assert_close(loss, negative_elbo(logits, images.float() / 255, mu, logvar, beta=0.5))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_one_process_noise_is_the_generators_next_draw() -> None:
    torch.manual_seed(7)
    eps = worker_noise(5, 3, torch.device("cpu"))
    torch.manual_seed(7)
    assert torch.equal(eps, torch.randn(5, 3))


def test_pictures_write_reconstructions_and_prior_samples(tmp_path: Path) -> None:
    cfg = _cfg()
    paths = VAE().pictures(_build(cfg), _images(8), cfg, str(tmp_path))
    assert [Path(p).name for p in paths] == ["vae_reconstructions.png", "vae_samples.png"]
    assert all(Path(p).stat().st_size > 0 for p in paths)


def test_checkpoint_round_trip_gives_the_same_model_and_optimiser() -> None:
    cfg = _cfg()
    model = _build(cfg)
    optimizer = build_optimizer("adamw", VAE().param_groups(model, cfg), lr=1e-3, weight_decay=0.0)
    for step in (1, 2):
        loss = VAE().loss(_net(model), {"view0": _images(8, seed=step)}, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    fresh = _build(cfg, seed=9)
    fresh.load_state_dict(saved["model"])
    fresh_optimizer = build_optimizer("adamw", VAE().param_groups(fresh, cfg), lr=1e-3, weight_decay=0.0)
    fresh_optimizer.load_state_dict(saved["optimizer"])
    for m, opt in ((model, optimizer), (fresh, fresh_optimizer)):
        torch.manual_seed(0)
        loss = VAE().loss(_net(m), {"view0": _images(8, seed=3)}, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for name, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_vae_is_registered_and_needs_a_resnet() -> None:
    assert isinstance(METHODS["vae"], VAE)
    with pytest.raises(ConfigError, match="model.arch must be a ResNet for method 'vae'"):
        vae_digits().replace({"model.arch": "vit"})


@pytest.mark.parametrize("recipe", [vae_digits, vae_cifar10])
def test_recipes_and_default_search_space_validate(recipe: Any) -> None:
    from orchestrator.tune.space import parse_search

    cfg = recipe()
    assert cfg.method == "vae" and cfg.get(VAEConfig).beta == 1.0 and cfg.get(VAEConfig).likelihood == "bernoulli"
    for key, dim in parse_search(VAE.search).items():
        for value in dim.probes():
            assert cfg.replace({key: value}).to_flat_dict()[key] == value
