"""Config from the command line: a recipe, then a YAML file, then ``--set section.field=value``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from workloads.config import Config, ConfigError, set_dotted
from workloads.methods import DEFAULT_METHOD, recipe


def parse_assignment(text: str, flag: str = "--set") -> tuple[str, Any]:
    """``"loss.temperature=0.2"`` -> ``("loss.temperature", 0.2)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"{flag} {text!r}: expected section.field=value, e.g. {flag} loss.temperature=0.2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{flag} {text!r}: the value is not valid YAML ({_first_line(err)})") from err
    return key, value


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"--config: no such file {path!r}") from err
    except OSError as err:
        raise ConfigError(f"--config: cannot read {path!r}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: malformed YAML ({_first_line(err)})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any], prefix: str = "") -> None:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, f"{prefix}{key}.")
        else:
            base[key] = value


def resolve(recipe_name: str = "", config_path: str = "", sets: Sequence[str] = (),
            extra: dict[str, Any] | None = None, method_name: str = "",
            file_data: dict[str, Any] | None = None) -> Config:
    """Method's recipe (default ``digits``, or the YAML's ``recipe:``) <- YAML <- ``--set`` <- flags.

    The method (``--method``, else a ``--set method=...``, else the YAML's ``method:``, else the default)
    picks whose recipe is the base: ``--method moco --recipe digits`` is MoCo's digits recipe.
    ``file_data`` is an already-loaded YAML (``simclr tune`` takes its ``search:`` section out first).
    """
    file_data = dict(file_data) if file_data is not None else (load_yaml(config_path) if config_path else {})
    name = recipe_name or str(file_data.pop("recipe", "") or "digits")
    file_data.pop("recipe", None)
    assignments = [parse_assignment(text) for text in sets]
    set_method = [value for key, value in assignments if key == "method"]
    chosen = method_name or (str(set_method[-1]) if set_method else str(file_data.get("method", "") or DEFAULT_METHOD))
    data = recipe(name, chosen).to_dict()
    _merge(data, file_data)
    for key, value in assignments:
        set_dotted(data, key, value)
    for key, value in (extra or {}).items():
        set_dotted(data, key, value)
    data["method"] = chosen
    return Config.from_dict(data)
