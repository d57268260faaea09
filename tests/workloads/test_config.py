"""Config: typed, validated on construction, errors name the dotted field and the allowed range."""

from __future__ import annotations

import re
from typing import Any

import pytest

from workloads.augment.views import AugConfig
from workloads.config import Config, ConfigError
from workloads.contrastive import LossConfig
from workloads.methods import recipe
from workloads.simclr.recipes import RECIPES


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("loss.temperature", 0.0, "loss.temperature must be > 0"),
        ("loss.temperature", -0.5, "loss.temperature must be > 0"),
        ("data.source", "imagenet21k", "data.source must be one of"),
        ("data.image_size", 2, "data.image_size must be >= 4"),
        ("data.holdout_fraction", 1.0, "data.holdout_fraction must be in [0, 1)"),
        ("data.bad_images", "ignore", "data.bad_images must be 'skip' or 'fail'"),
        ("aug.strength", -1.0, "aug.strength must be in [0, 4]"),
        ("aug.min_scale", 0.0, "aug.min_scale must be in (0, 1]"),
        ("aug.flip_p", 1.5, "aug.flip_p must be a probability in [0, 1]"),
        ("model.arch", "vgg16", "model.arch must be one of"),
        ("model.widths", [], "model.widths must be a non-empty list"),
        ("model.blocks", [1], "model.blocks must be a list of positive ints as long as model.widths"),
        ("model.proj_layers", 4, "model.proj_layers must be 2 or 3"),
        ("optim.name", "adam", "optim.name must be one of lars, sgd, adamw"),
        ("optim.lr", 0.0, "optim.lr must be > 0"),
        ("optim.momentum", 1.0, "optim.momentum must be in [0, 1)"),
        ("train.epochs", 0, "train.epochs must be >= 1"),
        ("train.workers", 0, "train.workers must be >= 1"),
        ("train.precision", "fp16", "train.precision must be one of auto, fp32, bf16"),
        ("train.max_failures", -2, "train.max_failures must be >= -1"),
        ("eval.knn_k", 0, "eval.knn_k must be >= 1"),
        ("tracking.experiment", "", "tracking.experiment must be a non-empty name"),
    ],
)
def test_bad_value_raises_naming_the_field_and_range(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        Config().replace({key: value})


def test_batch_smaller_than_two_per_worker_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"train.batch_size / train.workers must be >= 2"):
        Config().replace({"train.batch_size": 2, "train.workers": 2})


def test_batch_not_divisible_by_workers_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"train.batch_size \(9\) must be divisible by train.workers \(2\)"):
        Config().replace({"train.batch_size": 9, "train.workers": 2})


def test_source_that_needs_a_path_names_the_missing_field() -> None:
    with pytest.raises(ConfigError, match="data.root must be set for source 'cifar10'"):
        Config().replace({"data.source": "cifar10"})
    with pytest.raises(ConfigError, match="data.uri must be set for source 'parquet'"):
        Config().replace({"data.source": "parquet"})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.epochs", "ten", "train.epochs must be an integer"),
        ("train.epochs", 2.5, "train.epochs must be an integer"),
        ("train.use_gpu", "False", "train.use_gpu must be true or false"),  # never bool("False") == True
        ("loss.temperature", "hot", "loss.temperature must be a number"),
        ("loss.temperature", True, "loss.temperature must be a number"),
        ("model.widths", 16, "model.widths must be a list"),
        ("data.source", ["digits"], "data.source must be a string"),
    ],
)
def test_wrong_type_raises_naming_the_field(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        Config().replace({key: value})


def test_unknown_keys_and_sections_are_rejected_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'loss.temprature'; known keys of loss: temperature, gather"):
        Config().replace({"loss.temprature": 0.1})
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer'"):
        Config.from_dict({"optimizer": {"lr": 1.0}})
    with pytest.raises(ConfigError, match=r"loss must be a mapping"):
        Config.from_dict({"loss": 0.5})


def test_integers_are_accepted_for_float_fields_and_lists_become_tuples() -> None:
    cfg = Config().replace({"loss.temperature": 1, "model.widths": [8, 16], "model.blocks": [1, 2]})
    assert cfg.get(LossConfig).temperature == 1.0 and isinstance(cfg.get(LossConfig).temperature, float)
    assert cfg.model.widths == (8, 16) and cfg.model.blocks == (1, 2)


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipes_are_valid_and_round_trip_through_dicts(name: str) -> None:
    cfg = recipe(name)
    assert Config.from_dict(cfg.to_dict()) == cfg
    flat = cfg.to_flat_dict()
    assert flat["loss.temperature"] == cfg.get(LossConfig).temperature
    assert all("." in k or k == "method" for k in flat)


def test_recipes_follow_the_reference_values() -> None:
    cifar, imagenet = recipe("cifar10"), recipe("imagenet")
    assert (cifar.model.arch, cifar.model.cifar_stem, cifar.train.batch_size) == ("resnet18", True, 512)
    cifar_aug, imagenet_aug = cifar.get(AugConfig), imagenet.get(AugConfig)
    assert (cifar.get(LossConfig).temperature, cifar_aug.strength, cifar_aug.blur_p) == (0.5, 0.5, 0.0)
    assert (cifar.optim.name, cifar.optim.lr) == ("lars", 1.0)
    imagenet_tau = imagenet.get(LossConfig).temperature
    assert (imagenet.model.arch, imagenet.train.batch_size, imagenet_tau) == ("resnet50", 4096, 0.1)
    assert (imagenet.optim.lr, imagenet.optim.lr_scaling, imagenet.optim.weight_decay) == (0.075, "sqrt", 1e-6)
    assert (imagenet_aug.strength, imagenet_aug.blur_p) == (1.0, 0.5)


def test_unknown_recipe_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown recipe 'mnist'; choose one of digits, cifar10, imagenet"):
        recipe("mnist")

