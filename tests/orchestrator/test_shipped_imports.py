"""What Ray's own processes import when they unpickle a run: Ray Train's controller and dataset manager and
Ray Data's split coordinator receive the training stream's plan (orchestrator/data/stream.py's UDF with its
RowStore and the run's Config) and, through the TrainJob, every config section, but never make a view nor
train. Unpickling imports the module of every class and function in it, so those modules must not import
torch, torchvision or MLflow at their top: each would add seconds to every such process's start.

Read from the modules' top-level imports with ``ast`` (deferred imports inside functions and
``TYPE_CHECKING`` blocks are what keeps them light), followed through every module of this project they
reach."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from orchestrator.data import stream
from orchestrator.train import job, stopflag
from workloads.config import SHARED_SECTIONS
from workloads.methods import METHODS

OURS = ("orchestrator", "workloads")
HEAVY = ("torch", "torchvision", "mlflow", "ray.train.torch")


def shipped_modules() -> set[str]:
    """The modules whose objects a run's plan and its TrainJob carry into Ray's processes."""
    sections = {cls.__module__ for cls in SHARED_SECTIONS.values()}
    sections |= {cls.__module__ for m in METHODS.values() for cls in m.sections.values()}
    return sections | {stream.__name__, job.__name__, stopflag.__name__}


def top_level_imports(module: str) -> list[tuple[int, str]]:
    """(line, module) of each import run when ``module`` is imported: the module body's own statements,
    ``if``/``try`` blocks included, not function bodies nor ``if TYPE_CHECKING:``."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, module
    tree = ast.parse(Path(spec.origin).read_text())
    out: list[tuple[int, str]] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                out.extend((node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                out.append((node.lineno, node.module))
                out.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
            elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
    visit(tree.body)
    return out


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ``from a import b`` where b is a name, not a submodule
        return False


def heavy_chains(start: str, heavy: tuple[str, ...] = HEAVY) -> list[str]:
    """Each way ``start``'s import reaches a ``heavy`` module, as ``a -> b -> torch``, through our own modules
    (a package's ``__init__`` included: importing ``a.b`` runs ``a`` first)."""
    found: list[str] = []
    seen: set[str] = set()
    todo: list[tuple[str, list[str]]] = [(start, [start])]
    while todo:
        module, chain = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        for name in [*parents, *(name for _, name in top_level_imports(module))]:
            if name.split(".")[0] in OURS:
                if name not in seen and is_module(name):
                    todo.append((name, [*chain, name]))
            elif any(name == h or name.startswith(h + ".") for h in heavy):
                found.append(" -> ".join([*chain, name]))
    return found


@pytest.mark.parametrize("module", sorted(shipped_modules()))
def test_what_rays_processes_unpickle_imports_no_torch_torchvision_or_mlflow(module: str) -> None:
    assert heavy_chains(module) == []


def test_the_check_finds_a_heavy_import_through_our_modules() -> None:
    # the Trainer's module imports torch and the tracking code: the check must see it, and say how
    chains = heavy_chains("orchestrator.train.worker")
    assert any(c.startswith("orchestrator.train.worker -> ") and c.endswith(" -> torch") for c in chains), chains
    assert any("mlflow" in c for c in chains), chains


@pytest.mark.parametrize("module", ["workloads.methods", "orchestrator.train.worker", "orchestrator.cli.main"])
def test_the_methods_the_train_workers_and_the_cli_start_without_torchvision(module: str) -> None:
    # torchvision (and the torch._dynamo it imports) is imported where one of its ResNets is built or its
    # baseline augmentation is asked for, not by every process that imports the methods
    assert [c for c in heavy_chains(module) if "torchvision" in c] == []


@pytest.mark.parametrize("module", ["workloads.methods", "orchestrator.train.worker"])
def test_the_stream_tasks_and_the_train_workers_start_without_matplotlib(module: str) -> None:
    # every Ray Data task process imports every method and every train worker the Trainer; matplotlib is
    # imported where a figure is drawn (workloads/pictures.py: pyplot)
    assert heavy_chains(module, ("matplotlib",)) == []
