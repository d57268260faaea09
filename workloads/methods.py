"""The methods the orchestrator can train: one table, name -> workload (as solo-learn's ``METHODS``), the
default method, and a method's named recipe.

Adding a method is a folder, workloads/<name>/, with its section dataclasses, recipes and ``Method``
subclass (importing shared modules only, never another method's folder), and one line in ``METHODS``.
``Config`` reads this table for a method's sections and rules; a test may ``register`` a method of its own.
"""

from __future__ import annotations

from workloads.barlowtwins.method import BarlowTwins
from workloads.byol.method import BYOL
from workloads.config import SHARED_SECTIONS, Config
from workloads.dino.method import DINO
from workloads.fields import ConfigError
from workloads.inpaint.method import Inpaint
from workloads.mae.method import MAE
from workloads.method import Method
from workloads.moco.method import MoCo
from workloads.simclr.method import SimCLR
from workloads.swav.method import SwAV
from workloads.vae.method import VAE
from workloads.vicreg.method import VICReg

DEFAULT_METHOD = "simclr"  # what a config, the CLI and `recipe` train when no method is named

# name -> method, in the order of the CLI's choices and of error messages
METHODS: dict[str, Method] = {
    "simclr": SimCLR(),
    "moco": MoCo(),
    "mae": MAE(),
    "inpaint": Inpaint(),
    "swav": SwAV(),
    "byol": BYOL(),
    "vae": VAE(),
    "barlowtwins": BarlowTwins(),
    "vicreg": VICReg(),
    "dino": DINO(),
}


def check_method(m: Method, others: dict[str, Method]) -> None:
    """A method fits beside ``others``: a new name, sections not named as shared ones, and a section that
    two methods share (``loss``, ``mae``) declared with the same dataclass by both."""
    if not isinstance(m, Method):
        raise TypeError(f"a method is a workloads.method.Method; got {type(m).__name__}")
    if not m.name or m.name in others:
        raise ValueError(f"a method needs a new, non-empty name; got {m.name!r} (registered: {', '.join(others)})")
    for section, cls in m.sections.items():
        if section in SHARED_SECTIONS or section == "method":
            raise ValueError(f"method {m.name!r}: a section may not be named {section!r} (a shared section "
                             f"or the method's key)")
        for other in others.values():
            if other.sections.get(section, cls) is not cls:
                raise ValueError(f"method {m.name!r}: section {section!r} is {other.sections[section].__name__} in "
                                 f"method {other.name!r}, not {cls.__name__}; share the dataclass or rename it")


def register(m: Method) -> Method:
    """Add a method to the table (tests add their own; ``unregister`` removes it)."""
    check_method(m, METHODS)
    METHODS[m.name] = m
    return m


def unregister(name: str) -> None:
    METHODS.pop(name, None)


def method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {name!r}")
    return METHODS[name]


def recipe(name: str, method_name: str = DEFAULT_METHOD) -> Config:
    """A method's named recipe: ``recipe("digits", "moco")``."""
    recipes = method(method_name).recipes
    if name not in recipes:
        of = f" for method {method_name!r}" if method_name != DEFAULT_METHOD else ""
        raise ConfigError(f"unknown recipe {name!r}{of}; choose one of {', '.join(recipes)}")
    return recipes[name]()


for _name, _method in METHODS.items():
    if _name != _method.name:
        raise ValueError(f"METHODS[{_name!r}] is method {_method.name!r}")
    check_method(_method, {k: v for k, v in METHODS.items() if k != _name})
