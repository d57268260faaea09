"""``simclr``: every command and its flags. ``main`` is the console script (pyproject.toml)."""

from orchestrator.cli.main import EXIT_USER_ERROR, build_parser, main

__all__ = ["EXIT_USER_ERROR", "build_parser", "main"]
