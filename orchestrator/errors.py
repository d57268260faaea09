"""User-facing errors: the CLI prints their message as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input the user can fix: a missing path, an unknown dataset, an impossible resource ask."""


class BadImageError(UserError):
    """An image that cannot be decoded, under ``data.bad_images=fail``."""
