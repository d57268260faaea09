"""Shared helpers of the bench scripts: machine facts, tables, the --json contract.

Each script prints its table(s) and ratios on stdout; with ``--json`` stdout carries exactly one JSON
object (settings, each side's figures, the ratios, the machine) and the tables go to stderr.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from typing import Any, TextIO


def machine() -> dict[str, Any]:
    """Cores, load and library versions: what BENCHMARKS.md records next to every figure."""
    import torch

    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    for name in ("torchvision", "ray"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load_now() -> float:
    """The 1-minute load average (other engineers' tests share these cores)."""
    return round(os.getloadavg()[0], 2)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table, so the output pastes into BENCHMARKS.md as it is."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def text_out(as_json: bool) -> TextIO:
    """Where human-readable output goes: stdout, or stderr when stdout is reserved for the JSON."""
    return sys.stderr if as_json else sys.stdout


def say(as_json: bool, *lines: str) -> None:
    out = text_out(as_json)
    for line in lines:
        out.write(line + "\n")
    out.flush()


def emit_json(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
