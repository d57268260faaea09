"""The workload interface: every method in the dict, its recipes, views and one training step."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
import torch
from torch import nn

from workloads.config import Config, ConfigError
from workloads.contrastive import LossConfig
from workloads.method import Method, Net, denormalize, normalize
from workloads.methods import METHODS, method, recipe
from workloads.optim import build_optimizer
from workloads.simclr.loss import nt_xent

METHOD_NAMES = ("simclr", "moco", "mae", "inpaint", "swav", "byol", "vae", "barlowtwins", "vicreg", "dino")


def test_the_dict_holds_every_method_the_config_accepts() -> None:
    assert tuple(METHODS) == METHOD_NAMES
    assert all(recipe("digits", name).method == name for name in METHODS)
    assert all(m.name == name for name, m in METHODS.items())


def test_unknown_method_names_the_known_ones() -> None:
    known = "simclr, moco, mae, inpaint, swav, byol, vae, barlowtwins, vicreg, dino"
    with pytest.raises(ConfigError, match=f"method must be one of {known}; got 'ibot'"):
        method("ibot")
    with pytest.raises(ConfigError, match="config.method must be one of"):
        Config.from_dict({"method": "ibot"})


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_has_digits_and_cifar10_recipes_of_its_own(name: str) -> None:
    for r in ("digits", "cifar10"):
        cfg = recipe(r, name)
        assert cfg.method == name
        assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_default_search_space_parses_and_validates(name: str) -> None:
    from orchestrator.tune.space import parse_search, validate_space

    m = method(name)
    assert m.search
    validate_space(recipe("digits", name), parse_search(m.search), "random")


def test_params_leave_out_other_methods_sections() -> None:
    flat = recipe("digits").to_flat_dict()
    assert not any(k.startswith(("moco.", "mae.")) for k in flat)
    assert "moco.queue_size" in recipe("digits", "moco").to_flat_dict()
    assert "mae.mask_ratio" in recipe("digits", "inpaint").to_flat_dict()


def test_vit_is_for_mae_and_mae_needs_a_vit() -> None:
    with pytest.raises(ConfigError, match="model.arch must be a ResNet for method 'simclr'"):
        recipe("digits").replace({"model.arch": "vit"})
    with pytest.raises(ConfigError, match="model.arch must be 'vit' for method 'mae'"):
        Config.from_dict({**recipe("digits", "mae").to_dict(), "model": {"arch": "small_resnet"}})
    with pytest.raises(ConfigError, match="model.patch_size must be a divisor of data.image_size"):
        recipe("digits", "mae").replace({"model.patch_size": 3})


def test_normalize_and_denormalize_round_trip() -> None:
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(denormalize(normalize(x)), x)


def _net(model: nn.Module) -> Net:
    return Net(forward=model, core=model, image=normalize, autocast=nullcontext)


def _tiny(name: str) -> Config:
    overrides: dict[str, Any] = {"data.image_size": 8, "model.widths": [8, 16], "model.blocks": [1, 1]}
    if name == "mae":
        overrides = {"data.image_size": 8, "model.vit_dim": 16, "model.vit_depth": 1, "model.vit_heads": 2,
                     "mae.decoder_dim": 8, "mae.decoder_depth": 1, "mae.decoder_heads": 2}
    if name == "moco":
        overrides["moco.queue_size"] = 32
    if name == "byol":
        overrides.update({"model.proj_hidden_dim": 16, "byol.pred_hidden_dim": 16})
    return recipe("digits", name).replace(overrides)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_views_then_a_step_then_features(name: str) -> None:
    """The orchestrator's calls in its order, on one CPU process: views, loss, step, after_step, features."""
    m, cfg = method(name), _tiny(name)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
    views = m.views(images, cfg, torch.Generator().manual_seed(1))
    for col in m.view_columns:
        assert views[col].dtype == torch.uint8 and views[col].shape == (8, 3, 8, 8)
    assert all(v.dtype in (torch.uint8, torch.bool) for v in views.values())
    model = m.build_model(cfg)
    opt = build_optimizer("sgd", m.trainable(model), lr=0.1, weight_decay=0.0)
    loss = m.loss(_net(model), views, cfg)
    assert loss.ndim == 0 and torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    m.after_step(model, 1, 10, cfg)
    model.eval()
    feats = model.get_submodule("encoder")(normalize(views[m.view_columns[0]]))
    assert feats.ndim == 2 and feats.shape[0] == 8
    assert torch.equal(feats, model.features(normalize(views[m.view_columns[0]])))


def test_simclr_method_loss_is_the_loss_the_loop_computed_before_the_interface() -> None:
    """SimCLR on the interface: cat views -> model -> chunk -> nt_xent, as train_loop did inline."""
    m, cfg = method("simclr"), _tiny("simclr")
    torch.manual_seed(0)
    model = m.build_model(cfg)
    views = m.views(torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8), cfg, torch.Generator().manual_seed(0))
    z0, z1 = model(normalize(torch.cat([views["view0"], views["view1"]]))).chunk(2)
    expected = nt_xent(z0, z1, cfg.get(LossConfig).temperature, gather=cfg.get(LossConfig).gather)
    assert torch.equal(m.loss(_net(model), views, cfg), expected)


def test_chunk_rows_auto_chunks_only_large_worker_batches() -> None:
    loss = recipe("digits").get(LossConfig)
    assert loss.rows_per_chunk(256) == 0 and loss.rows_per_chunk(4096) == 1024
    assert loss.__class__(chunk_rows=0).rows_per_chunk(4096) == 0
    assert loss.__class__(chunk_rows=64).rows_per_chunk(8) == 64


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_finish_batch_gives_the_views_whatever_device_ran_their_colour_stage(name: str) -> None:
    """aug.device=train leaves two-view methods' colour stage to ``finish_batch`` on the device: finished, the
    batch is the one aug.device=data streams; other methods' batches pass through as they are."""
    m = method(name)
    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    streamed = {}
    for device in ("data", "train"):
        cfg = _tiny(name).replace({"aug.device": device, "aug.blur_p": 0.5, "aug.flip_p": 0.5})
        streamed[device] = m.views(images, cfg, torch.Generator().manual_seed(2))
    deferred = any("__" in key for key in streamed["train"])
    assert deferred == (name in ("simclr", "moco", "byol", "barlowtwins", "vicreg"))
    finished = m.finish_batch(streamed["train"], cfg)
    assert finished.keys() == streamed["data"].keys()
    assert all(torch.equal(finished[k], streamed["data"][k]) for k in finished)
    unchanged = m.finish_batch(streamed["data"], cfg)  # nothing deferred
    assert unchanged.keys() == streamed["data"].keys()
    assert all(torch.equal(unchanged[k], streamed["data"][k]) for k in unchanged)


def test_the_default_finish_batch_returns_the_batch_unchanged() -> None:
    batch = {"view0": torch.zeros(2, 3, 4, 4, dtype=torch.uint8), "view0__flip": torch.ones(2, dtype=torch.bool)}
    assert Method().finish_batch(batch, Config()) is batch
