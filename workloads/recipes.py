"""A method's named recipe by name: ``recipe("digits", "moco")``. Each method folder holds its own
recipes (``workloads/<method>/recipes.py``); ``RECIPES`` is SimCLR's, the default method's."""

from __future__ import annotations

from workloads.config import Config, ConfigError
from workloads.methods import method as find
from workloads.simclr.recipes import RECIPES

__all__ = ["RECIPES", "recipe"]


def recipe(name: str, method: str = "simclr") -> Config:
    """The named recipe of a method."""
    recipes = find(method).recipes
    if name not in recipes:
        known = ", ".join(recipes)
        raise ConfigError(f"unknown recipe {name!r}" + (f" for method {method!r}" if method != "simclr" else "")
                          + f"; choose one of {known}")
    return recipes[name]()
