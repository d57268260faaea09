"""Adding a method is one folder plus one line in the methods table: a tiny method defined here, with its own config
section and cross-field rule, registered, resolved from the command line's sources and trained for a
step through the real Trainer (on CPU without Ray, as tests/orchestrator/test_trainer.py)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from test_trainer import STEPS, TINY, FakeShard, Reports, local_env  # the Trainer driven without Ray
from torch import Tensor, nn
from torch.nn import functional as F

from orchestrator.config_io import resolve
from orchestrator.train.job import TrainJob
from orchestrator.train.trainer import Trainer
from workloads.config import Config, ConfigError, check
from workloads.method import Images, Method, Net
from workloads.methods import METHODS, register, unregister
from workloads.rng import RandomSource


@dataclass
class MeanColourConfig:
    """The tiny method's own section, ``colour``."""

    section: ClassVar[str] = "colour"
    weight: float = 1.0  # scales the loss
    pool: int = 2  # average-pooling window before the linear encoder; must divide data.image_size

    def __post_init__(self) -> None:
        check(self.weight > 0.0, self.section, "weight", "> 0", self.weight)
        check(self.pool >= 1, self.section, "pool", ">= 1", self.pool)


class MeanColourModel(nn.Module):
    def __init__(self, size: int, pool: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.AvgPool2d(pool), nn.Flatten(), nn.Linear(3 * (size // pool) ** 2, 8))
        self.head = nn.Linear(8, 3)

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)  # N x 8

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))  # N x 3


def mean_colour_digits() -> Config:
    return Config(method="mean_colour").replace({"colour.weight": 2.0})


class MeanColour(Method):
    """Predict each view's mean colour: a stand-in for a new self-supervised method."""

    name = "mean_colour"
    view_columns = ("view0",)
    recipes = {"digits": mean_colour_digits}  # noqa: RUF012
    search = ("colour.weight=uniform(0.5,2.0)",)
    sections = {"colour": MeanColourConfig}  # noqa: RUF012

    def check_config(self, cfg: Config) -> None:
        super().check_config(cfg)
        pool = cfg.get(MeanColourConfig).pool
        if cfg.data.image_size % pool:
            raise ConfigError(f"colour.pool must divide data.image_size ({cfg.data.image_size}); got {pool}")

    def views(self, images: Images, cfg: Config, generator: RandomSource) -> dict[str, Tensor]:
        assert isinstance(images, Tensor)
        return {"view0": images}

    def build_model(self, cfg: Config) -> nn.Module:
        return MeanColourModel(cfg.data.image_size, cfg.get(MeanColourConfig).pool)

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        x = net.image(batch["view0"])  # B x 3 x S x S
        return cfg.get(MeanColourConfig).weight * F.mse_loss(net.forward(x), x.mean(dim=(2, 3)))


@pytest.fixture
def registered() -> Iterator[Method]:
    m = register(MeanColour())  # the one line a new method adds to the table in workloads/methods.py
    try:
        yield m
    finally:
        unregister(m.name)


def test_a_registered_method_owns_its_section_keys_and_params(registered: Method) -> None:
    cfg = resolve("digits", method_name="mean_colour", sets=["colour.pool=4"])
    colour = cfg.get(MeanColourConfig)
    assert (cfg.method, colour.weight, colour.pool) == ("mean_colour", 2.0, 4)  # its recipe, then --set
    flat = cfg.to_flat_dict()
    assert flat["colour.pool"] == 4 and not any(k.startswith(("loss.", "moco.", "mae.", "aug.")) for k in flat)
    assert not any(k.startswith("colour.") for k in Config().to_flat_dict())  # a SimCLR run logs none of it
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"colour.pool must divide data.image_size \(16\); got 3"):
        cfg.replace({"colour.pool": 3})
    with pytest.raises(ConfigError, match=r"colour.weight must be > 0"):
        cfg.replace({"colour.weight": 0.0})


def test_a_registered_method_trains_a_step_through_the_trainer(registered: Method, tmp_path: Path) -> None:
    cfg = Config(method="mean_colour").replace(
        {**TINY, "train.storage_path": str(tmp_path), "train.name": "run", "colour.pool": 4})
    job = TrainJob(config=cfg, run_id="r", tracking_uri="", steps_per_epoch=STEPS)
    trainer = Trainer(job, local_env(FakeShard(registered.view_columns, STEPS, 8, 4), Reports(tmp_path / "run")))
    trainer.setup()
    before = [p.detach().clone() for p in trainer.core.parameters()]
    batch = next(iter(trainer.env.dataset("train").iter_torch_batches()))
    loss = trainer.train_step(batch, epoch=1, step=1)
    assert math.isfinite(loss.item()) and trainer.state.global_step == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.core.parameters(), strict=True))
    assert trainer.run_epoch(1) and trainer.state.epoch == 1


def test_unregistering_leaves_the_built_in_methods() -> None:
    assert tuple(METHODS) == ("simclr", "moco", "mae", "inpaint", "swav", "byol", "vae",
                              "barlowtwins", "vicreg", "dino")
    known = "simclr, moco, mae, inpaint, swav, byol, vae, barlowtwins, vicreg, dino"
    with pytest.raises(ConfigError, match=f"config.method must be one of {known}"):
        Config(method="mean_colour")


class BlackedOut(MeanColour):
    """A method whose batch is finished on the device: its views blacked out there, so its loss sees zeros."""

    name = "blacked_out"
    recipes = {}  # noqa: RUF012

    def __init__(self) -> None:
        self.seen: list[int] = []  # the pixel sum of each batch the loss got

    def finish_batch(self, batch: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
        return {**batch, "view0": torch.zeros_like(batch["view0"])}

    def loss(self, net: Net, batch: dict[str, Tensor], cfg: Config) -> Tensor:
        self.seen.append(int(batch["view0"].sum()))
        return super().loss(net, batch, cfg)


def test_the_trainer_hands_the_loss_the_batch_its_method_finished(tmp_path: Path) -> None:
    m = register(BlackedOut())
    try:
        cfg = Config(method=m.name).replace({**TINY, "train.storage_path": str(tmp_path), "train.name": "run"})
        job = TrainJob(config=cfg, run_id="r", tracking_uri="", steps_per_epoch=STEPS)
        trainer = Trainer(job, local_env(FakeShard(m.view_columns, STEPS, 8, 4), Reports(tmp_path / "run")))
        trainer.setup()
        batch = next(iter(trainer.env.dataset("train").iter_torch_batches()))
        trainer.train_step(batch, epoch=1, step=1)
        assert int(batch["view0"].sum()) > 0 and m.seen == [0]
    finally:
        unregister(m.name)
