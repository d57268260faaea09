"""The methods the orchestrator can train, one line each: name -> workload (see workloads/method.py).

Registering a method also tells ``Config`` its sections and checks (``workloads/registry.py``).
"""

from __future__ import annotations

from typing import cast

from workloads import registry
from workloads.byol.method import BYOL
from workloads.config import Config, ConfigError
from workloads.inpaint.method import Inpaint
from workloads.mae.method import MAE
from workloads.method import Method
from workloads.moco.method import MoCo
from workloads.simclr.method import SimCLR
from workloads.swav.method import SwAV
from workloads.vae.method import VAE

# the registry's dict itself, typed for the orchestrator: every entry is registered through `register`
METHODS = cast("dict[str, Method]", registry.METHODS)


def register(m: Method) -> Method:
    """Add a method (tests add their own; remove it with ``registry.unregister``)."""
    if not isinstance(m, Method):
        raise TypeError(f"a method is a workloads.method.Method; got {type(m).__name__}")
    return registry.register(m)


register(SimCLR())
register(MoCo())
register(MAE())
register(Inpaint())
register(SwAV())
register(BYOL())
register(VAE())


def unregister(name: str) -> None:
    registry.unregister(name)


def method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {name!r}")
    return METHODS[name]


def recipe(name: str, method_name: str = "simclr") -> Config:
    """A method's named recipe: ``recipe("digits", "moco")``."""
    recipes = method(method_name).recipes
    if name not in recipes:
        of = f" for method {method_name!r}" if method_name != "simclr" else ""
        raise ConfigError(f"unknown recipe {name!r}{of}; choose one of {', '.join(recipes)}")
    return recipes[name]()
