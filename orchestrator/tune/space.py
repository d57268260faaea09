"""The search space of ``simclr tune``: ``--search key=kind(values)`` texts parsed, checked against the
Config (every probe value must validate) and turned into Tune domains."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from ray import tune

from workloads.config import Config, ConfigError

# Fields the sweep owns or needs fixed across trials (resources, ASHA's max_t, where runs go).
FIXED_KEYS = ("train.name", "train.storage_path", "train.workers", "train.cpus_per_worker", "train.use_gpu",
              "train.epochs", "tracking.uri", "tracking.experiment")


KINDS = ("uniform", "loguniform", "randint", "choice", "grid")

_EXPR = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.DOTALL)

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Dimension:
    """One searched field: ``loss.temperature=loguniform(0.05,1.0)``."""

    key: str
    kind: str  # one of KINDS
    args: tuple[Any, ...]

    @property
    def expr(self) -> str:
        return f"{self.kind}({', '.join(_show(a) for a in self.args)})"

    def domain(self) -> Any:
        """The Tune search domain."""
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "randint":
            return tune.randint(*self.args)
        if self.kind == "choice":
            return tune.choice(list(self.args))
        return tune.grid_search(list(self.args))

    def probes(self) -> list[Any]:
        """Values that must all pass ``Config`` validation: the bounds, or every listed value."""
        if self.kind == "randint":
            return [self.args[0], self.args[1] - 1]
        return list(self.args)

    @property
    def numeric(self) -> bool:
        return all(isinstance(a, int | float) and not isinstance(a, bool) for a in self.args)


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | str) else repr(value)


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as a string; a numeric-looking string becomes a number."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
    return value


def parse_dimension(key: str, expr: str, flag: str = "--search") -> Dimension:
    """``("loss.temperature", "loguniform(0.05,1.0)")`` -> a Dimension; malformed input is a ConfigError."""
    where = f"{flag} {key}={expr}"
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"{where}: expected section.field=kind(values), e.g. {flag} loss.temperature=grid(0.1,0.5)")
    m = _EXPR.match(str(expr))
    if not m or m.group(1) not in KINDS:
        raise ConfigError(f"{where}: expected one of {', '.join(k + '(...)' for k in KINDS)}, "
                          f"e.g. loguniform(0.05,1.0) or grid(0.1,0.2,0.5)")
    kind, inner = m.group(1), m.group(2)
    try:
        raw = yaml.safe_load(f"[{inner}]")
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: cannot read the values ({str(err).splitlines()[0]})") from err
    args = tuple(_number(v) for v in raw)
    if not args:
        raise ConfigError(f"{where}: no values given")
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
            raise ConfigError(f"{where}: {kind} takes two numbers, low and high")
        low, high = args
        if not low < high:
            raise ConfigError(f"{where}: low must be below high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0")
        if kind == "randint":
            if not all(float(a).is_integer() for a in args):
                raise ConfigError(f"{where}: randint takes two integers (low inclusive, high exclusive)")
            args = (int(low), int(high))
        else:
            args = (float(low), float(high))
    return Dimension(key, kind, args)


def parse_search(texts: Sequence[str], flag: str = "--search") -> dict[str, Dimension]:
    """``["loss.temperature=loguniform(0.05,1.0)", ...]`` -> {key: Dimension}; a later key wins."""
    dims: dict[str, Dimension] = {}
    for text in texts:
        key, sep, expr = text.partition("=")
        if not sep:
            raise ConfigError(f"{flag} {text!r}: expected section.field=kind(values), "
                              f"e.g. {flag} loss.temperature=loguniform(0.05,1.0)")
        dims[key.strip()] = parse_dimension(key, expr, flag)
    return dims


def search_from_yaml(section: Any) -> list[str]:
    """The config file's ``search:`` section (``{loss.temperature: "grid(0.1,0.5)"}`` or nested) as texts."""
    if section is None:
        return []
    if not isinstance(section, dict):
        raise ConfigError("--config search: expected a mapping of section.field: kind(values)")
    texts: list[str] = []
    for key, value in section.items():
        if isinstance(value, dict):  # nested: {loss: {temperature: "..."}}
            texts.extend(f"{key}.{k}={v}" for k, v in value.items())
        else:
            texts.append(f"{key}={value}")
    return texts


def validate_space(cfg: Config, dims: Mapping[str, Dimension], search_alg: str) -> None:
    """Every key is a Config field the sweep may vary and every probe value passes Config's checks."""
    flat = cfg.to_flat_dict()
    for key, dim in dims.items():
        if key in FIXED_KEYS:
            raise ConfigError(f"--search {key}: fixed for the whole sweep (resources, ASHA's max_t and where runs "
                              f"go); set it with --set {key}=... instead")
        if key not in flat:
            try:  # let Config name the known keys
                cfg.replace({key: dim.probes()[0]})
            except ConfigError as err:
                raise ConfigError(f"--search {key}: {err}") from err
            raise ConfigError(f"--search {key}: not a config field")
        for value in dim.probes():
            try:
                cfg.replace({key: value})
            except ConfigError as err:
                raise ConfigError(f"--search {key}={dim.expr}: {err}") from err
        if search_alg == "optuna" and dim.kind == "grid":
            raise ConfigError(f"--search {key}={dim.expr}: --search-alg optuna does not take grid(...); "
                              f"use choice(...)")
        if search_alg == "grid" and dim.kind not in ("grid", "choice"):
            raise ConfigError(f"--search {key}={dim.expr}: --search-alg grid needs grid(...) or choice(...) "
                              f"values; use --search-alg random to sample {dim.kind}")


def param_space(dims: Mapping[str, Dimension], search_alg: str) -> dict[str, Any]:
    if search_alg == "grid":  # every listed value, choice(...) included
        return {k: tune.grid_search(list(d.args)) for k, d in dims.items()}
    return {k: d.domain() for k, d in dims.items()}

