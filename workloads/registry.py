"""The registered methods, as far as the config needs them: each one's name, the config sections it
reads and its cross-field checks.

Data only, importing nothing of this project, so that ``workloads/config.py`` can read it without an
import loop. ``workloads/methods.py`` fills it, one line per method; a test may register its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar


class Registered(Protocol):
    """What ``Config`` reads of a method (``workloads.method.Method`` has all of it)."""

    @property
    def name(self) -> str: ...

    @property
    def sections(self) -> Mapping[str, type]:
        """Config section name -> its dataclass (every field defaulted), e.g. ``{"moco": MoCoConfig}``."""
        ...

    def check_config(self, cfg: Any) -> None:
        """Cross-field rules; raises ``ConfigError`` naming the field and the fix."""
        ...


M = TypeVar("M", bound=Registered)

# name -> method, in registration order (the order of the CLI's choices and of error messages)
METHODS: dict[str, Registered] = {}


def register(method: M) -> M:
    """Add a method; a section two methods share (``loss``, ``mae``) must be the same dataclass."""
    if not method.name or method.name in METHODS:
        raise ValueError(f"a method needs a new, non-empty name; got {method.name!r} "
                         f"(registered: {', '.join(METHODS)})")
    known = section_types()
    for section, cls in method.sections.items():
        if known.get(section, cls) is not cls:
            raise ValueError(f"method {method.name!r}: section {section!r} is already {known[section].__name__}, "
                             f"not {cls.__name__}; share the dataclass or choose another section name")
    METHODS[method.name] = method
    return method


def default_method() -> str:
    """The method a config without one trains: the first registered ("" before any is)."""
    return next(iter(METHODS), "")


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def section_types() -> dict[str, type]:
    """Every registered method's sections: name -> dataclass, in registration order."""
    types: dict[str, type] = {}
    for method in METHODS.values():
        for section, cls in method.sections.items():
            types.setdefault(section, cls)
    return types
