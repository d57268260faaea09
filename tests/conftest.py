"""Fixtures shared by every test package; the settings themselves live in simclr_testing.py (a
module name of its own: `from conftest import ...` would be ambiguous with tests/cluster/conftest.py)."""

from __future__ import annotations

from simclr_testing import tiny

__all__ = ["tiny"]
