"""The field machinery under ``Config``: its error, the checks every section runs, and the conversion between
plain dicts (YAML, ``--set``, Ray, MLflow) and the typed dataclasses, with errors that name the dotted field.

A choice field is typed ``Literal[...]``: its choices are the type's arguments (``typing.get_args``), checked
by ``check_choices`` in the section's ``__post_init__``, so they are written once, where the field is."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and the fix."""


def check(ok: bool, section: str, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{section}.{name} must be {rule}; got {value!r}")


def choices(tp: Any) -> tuple[Any, ...]:
    """The values a ``Literal[...]`` type allows; () for any other type."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else ()


def describe_choices(allowed: tuple[Any, ...]) -> str:
    """``'skip' or 'fail'``, ``2 or 3``; ``one of lars, sgd, adamw`` for more than two."""
    if len(allowed) == 2:
        return " or ".join(repr(v) for v in allowed)
    return "one of " + ", ".join(str(v) for v in allowed)


def check_choices(section: Any) -> None:
    """Every ``Literal`` field of a section dataclass holds one of its choices (``section.section`` names it)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        allowed = choices(hints[f.name])
        value = getattr(section, f.name)
        if allowed and not any(value == v and type(value) is type(v) for v in allowed):
            check(False, section.section, f.name, describe_choices(allowed), value)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``"a.b"``; unknown sections are caught by ``from_dict``."""
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"malformed key {dotted!r}: expected section.field, e.g. loss.temperature")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


def from_plain(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of fields; got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key {name!r}; known keys of {where}: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        dotted = f"{prefix}.{name}" if prefix else name
        kwargs[name] = coerce(hints[name], value, dotted)
    try:
        return cls(**kwargs)
    except TypeError as err:  # pragma: no cover - every field has a default
        raise ConfigError(f"{where}: {err}") from err


def coerce(tp: Any, value: Any, dotted: str) -> Any:
    """Check and convert one value to its field's type; errors name the dotted field."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_plain(tp, value, dotted)
    allowed = choices(tp)
    if allowed:  # converted to the choices' type here; which choice is checked by the section (check_choices)
        return coerce(type(allowed[0]), value, dotted)
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{dotted} must be a list; got {value!r}")
        return tuple(coerce(item_tp, v, dotted) for v in value)
    if origin in (typing.Union, types.UnionType):  # pragma: no cover - no optional fields yet
        raise ConfigError(f"{dotted}: unsupported type {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{dotted} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{dotted} must be an integer; got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{dotted} must be a number; got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # a run name like 2024 read from YAML
        raise ConfigError(f"{dotted} must be a string; got {value!r}")
    raise ConfigError(f"{dotted}: unsupported type {tp}")  # pragma: no cover
