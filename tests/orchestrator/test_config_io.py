"""Config from the command line: recipe <- YAML <- --set <- flags, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config_io import parse_assignment, resolve
from workloads.config import Config, ConfigError
from workloads.contrastive import LossConfig
from workloads.methods import DEFAULT_METHOD
from workloads.moco.config import MoCoConfig
from workloads.sections import MAEConfig


def test_set_values_are_read_as_yaml() -> None:
    assert parse_assignment("loss.temperature=0.2") == ("loss.temperature", 0.2)
    assert parse_assignment("model.widths=[8, 16]") == ("model.widths", [8, 16])
    assert parse_assignment("train.use_gpu=false") == ("train.use_gpu", False)
    assert parse_assignment("data.root=/data/cifar") == ("data.root", "/data/cifar")


@pytest.mark.parametrize("text", ["loss.temperature", "=0.2", "loss..temperature=1", "loss.temp-erature=1",
                                  "model.widths=[8,", "a b=1"])
def test_malformed_set_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--set"):
        parse_assignment(text)


def test_precedence_recipe_then_yaml_then_set_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("recipe: cifar10\nloss:\n  temperature: 0.3\ntrain:\n  epochs: 7\n  batch_size: 64\n")
    cfg = resolve("", str(path), ["loss.temperature=0.25"], {"train.epochs": 3})
    assert cfg.model.arch == "resnet18"  # from the YAML's recipe
    assert cfg.get(LossConfig).temperature == 0.25  # --set beats the YAML
    assert cfg.train.epochs == 3  # flags beat --set
    assert cfg.train.batch_size == 64  # the YAML beats the recipe


def test_default_recipe_is_digits() -> None:
    cfg = resolve()
    assert cfg.data.source == "digits" and cfg.model.arch == "small_resnet"


def test_malformed_yaml_missing_file_and_non_mapping_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML") as err:
        resolve("", str(bad))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="no such file"):
        resolve("", str(tmp_path / "missing.yaml"))
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        resolve("", str(scalar))


def test_unknown_key_in_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  temprature: 0.3\n")
    with pytest.raises(ConfigError, match="unknown key 'loss.temprature'"):
        resolve("", str(path))


def test_method_picks_whose_recipe_is_the_base(tmp_path: Path) -> None:
    assert resolve("digits", method_name="moco").method == "moco"
    moco = resolve("digits", method_name="moco").get(MoCoConfig)
    assert moco.queue_size == 1024  # MoCo's digits recipe, not the default
    assert resolve("", "", ["method=mae"]).model.arch == "vit"  # --set method=... too
    path = tmp_path / "c.yaml"
    path.write_text("method: mae\nmae: {mask_ratio: 0.6}\n")
    cfg = resolve("", str(path))
    assert cfg.method == "mae" and cfg.get(MAEConfig).mask_ratio == 0.6 and cfg.model.arch == "vit"
    assert resolve("", str(path), method_name="inpaint").method == "inpaint"  # the flag beats the YAML


def test_unknown_recipe_of_a_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown recipe 'imagenet' for method 'mae'; choose one of digits, cifar10"):
        resolve("imagenet", method_name="mae")


def test_a_yaml_or_set_key_of_another_methods_section_is_a_one_line_error_naming_its_method(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("moco:\n  queue_size: 4096\n")
    for args in ({"config_path": str(path)}, {"sets": ["moco.queue_size=4096"]}):
        with pytest.raises(ConfigError, match="key 'moco.queue_size' belongs to method 'moco', not to this config's "
                                              "method 'simclr'") as err:
            resolve(**args)
        assert "\n" not in str(err.value)
    assert resolve(config_path=str(path), method_name="moco").get(MoCoConfig).queue_size == 4096


def test_the_default_method_is_named_once() -> None:
    assert resolve().method == DEFAULT_METHOD == Config().method
