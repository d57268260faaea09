"""Config: typed, validated on construction, errors name the dotted field and the allowed range."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

import pytest

from workloads.config import SHARED_SECTIONS, Config, ConfigError, DataConfig
from workloads.contrastive import LossConfig
from workloads.methods import DEFAULT_METHOD, METHODS, recipe
from workloads.moco.config import MoCoConfig
from workloads.sections import AugConfig
from workloads.simclr.recipes import RECIPES
from workloads.swav.config import SwAVConfig


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
        ("tracking.register", "team/encoder", "tracking.register must be a registered model's name, without '/'"),
        ("tracking.register_alias", "latest", "tracking.register_alias must be letters, digits, '_' or '-', not"),
        ("tracking.register_alias", "v3", "tracking.register_alias must be letters, digits, '_' or '-', not"),
        ("tracking.register_alias", "to ship", "tracking.register_alias must be letters, digits, '_' or '-', not"),
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


@pytest.mark.parametrize("name", list(METHODS))
def test_a_config_holds_the_shared_sections_and_its_own_methods_only(name: str) -> None:
    cfg = recipe("digits", name)
    own = list(METHODS[name].sections)
    assert list(cfg.to_dict()) == ["method", *SHARED_SECTIONS, *own]
    assert {key.split(".")[0] for key in cfg.to_flat_dict()} == {"method", *SHARED_SECTIONS, *own}


def test_a_simclr_config_has_no_other_methods_sections() -> None:
    sections = {"data", "model", "optim", "train", "eval", "tracking", "aug", "loss"}
    assert set(Config().to_dict()) == {"method", *sections} and Config().method == DEFAULT_METHOD == "simclr"
    assert Config.from_dict({}).method == DEFAULT_METHOD


@pytest.mark.parametrize(("name", "key", "owners"), [
    ("simclr", "moco.queue_size", "method 'moco'"),
    ("simclr", "mae.mask_ratio", "methods 'mae', 'inpaint'"),
    ("simclr", "multicrop.small_crops", "methods 'swav', 'dino'"),
    ("byol", "loss.temperature", "methods 'simclr', 'moco'"),
    ("mae", "vae.beta", "method 'vae'"),
])
def test_a_key_of_another_methods_section_names_the_key_and_the_method_that_reads_it(
        name: str, key: str, owners: str) -> None:
    expected = f"key '{key}' belongs to {owners}, not to this config's method '{name}'"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        recipe("digits", name).replace({key: 1})
    section, field = key.split(".")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        Config.from_dict({**recipe("digits", name).to_dict(), section: {field: 1}})


def test_a_section_no_method_reads_is_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'colour'; known keys of config: method, data, model, optim, "
                                          "train, eval, tracking, aug, loss"):
        Config.from_dict({"colour": {"weight": 1.0}})
    with pytest.raises(ConfigError, match="key 'swav' belongs to method 'swav'"):
        Config(swav=SwAVConfig())


def test_a_saved_config_drops_the_sections_its_method_does_not_read() -> None:
    saved = {**Config().to_dict(), "moco": {"queue_size": 7}, "vae": {"beta": 2.0}}
    assert Config.from_saved(saved) == Config()
    with pytest.raises(ConfigError, match="key 'moco.queue_size' belongs to method 'moco'"):
        Config.from_dict(saved)
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        Config.from_saved({**saved, "bogus": {}})


def test_switching_method_keeps_the_shared_and_common_sections_and_defaults_the_new_ones() -> None:
    cfg = recipe("digits").replace({"aug.strength": 0.9})
    moco = cfg.replace({"method": "moco"})
    assert moco.get(AugConfig).strength == 0.9 and moco.get(LossConfig) == cfg.get(LossConfig)
    assert moco.get(MoCoConfig) == MoCoConfig() and moco.train == cfg.train
    byol = cfg.replace({"method": "byol"})
    assert list(byol.to_dict()) == ["method", *SHARED_SECTIONS, "aug", "byol"]
    with pytest.raises(ConfigError, match="key 'loss.temperature' belongs to methods 'simclr', 'moco'"):
        cfg.replace({"method": "byol", "loss.temperature": 0.1})


def test_get_returns_the_typed_section_and_names_a_section_the_method_does_not_read() -> None:
    cfg = recipe("digits", "swav")
    assert cfg.get(SwAVConfig) is cfg.section("swav") and cfg.get(DataConfig) is cfg.data
    with pytest.raises(LookupError, match="method 'swav' reads no LossConfig section"):
        cfg.get(LossConfig)


def _choice_fields() -> list[tuple[str, str, str, tuple[Any, ...]]]:
    """(method, section, field, choices) of every Literal field of every method's config."""
    out = []
    for name, m in METHODS.items():
        for section, cls in {**SHARED_SECTIONS, **m.sections}.items():
            hints = typing.get_type_hints(cls)
            out += [(name, section, f.name, typing.get_args(hints[f.name])) for f in dataclasses.fields(cls)
                    if typing.get_origin(hints[f.name]) is typing.Literal]
    return out


def test_the_choice_fields_are_literals() -> None:
    fields = {f"{section}.{field}" for _, section, field, _ in _choice_fields()}
    assert fields == {"data.source", "data.bad_images", "model.arch", "model.proj_layers", "optim.name",
                      "optim.lr_scaling", "train.precision", "train.channels_last", "aug.device",
                      "moco.momentum_schedule", "byol.momentum_schedule", "vae.likelihood"}


@pytest.mark.parametrize(("name", "section", "field", "choices"), _choice_fields(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_a_choice_outside_the_literal_is_rejected_listing_every_choice(
        name: str, section: str, field: str, choices: tuple[Any, ...]) -> None:
    bad = 99 if isinstance(choices[0], int) else "bogus"
    with pytest.raises(ConfigError, match=f"{section}.{field} must be ") as err:
        recipe("digits", name).replace({f"{section}.{field}": bad})
    assert all(str(choice) in str(err.value) for choice in choices) and str(err.value).endswith(f"got {bad!r}")
    assert getattr(recipe("digits", name).section(section), field) in choices


def test_an_integer_choice_is_read_as_an_integer() -> None:
    cfg = Config().replace({"model.proj_layers": 3.0})
    assert cfg.model.proj_layers == 3 and type(cfg.model.proj_layers) is int
    with pytest.raises(ConfigError, match="model.proj_layers must be an integer"):
        Config().replace({"model.proj_layers": True})
