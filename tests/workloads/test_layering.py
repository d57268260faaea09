"""The layering of workloads/: a method folder (workloads/<method>/) imports shared modules only, never another
method's folder, nor the methods table (which imports every folder); a shared module imports no method folder,
except the table itself. Read from every module's imports with ``ast`` (deferred and type-only imports
included), so a new import that crosses a line fails here, not in a reader's head."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import workloads
from workloads.methods import METHODS

PACKAGE = "workloads"
TABLE = "workloads.methods"  # the one shared module that imports method folders


def method_folders() -> set[str]:
    """The folders of the methods in the table: ``simclr`` for ``workloads.simclr.method.SimCLR``."""
    names = (type(m).__module__.split(".") for m in METHODS.values())
    return {parts[1] for parts in names if parts[0] == PACKAGE and len(parts) > 2}


def module_name(root: Path, path: Path) -> str:
    """``workloads.simclr.loss`` for root/simclr/loss.py; ``workloads.augment`` for root/augment/__init__.py."""
    parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) of every import in ``tree``; ``from a import b`` gives ``a`` and ``a.b`` (b may be a
    submodule), relative imports resolved against ``module``."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def folder_of(module: str) -> str:
    """``simclr`` for ``workloads.simclr.loss``; "" outside the package or for a top-level module."""
    parts = module.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else ""


def violations(root: Path, folders: set[str]) -> list[str]:
    """Every import under ``root`` (the package's folder) that crosses the layering, one per import line and
    reason, as ``path:line: importer imports target (why)``."""
    found: dict[tuple[str, int, str], str] = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(root, path)
        owner = folder_of(name) if folder_of(name) in folders else ""
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in imported(tree, name, path.name == "__init__.py"):
            to = folder_of(target)
            if owner and to in folders and to != owner:
                why = f"method folder {owner!r} imports method folder {to!r}"
            elif owner and target == TABLE:
                why = f"method folder {owner!r} imports the methods table"
            elif not owner and name != TABLE and to in folders:
                why = f"shared module imports method folder {to!r}"
            else:
                continue
            where = str(path.relative_to(root.parent))
            found.setdefault((where, line, why), f"{where}:{line}: {name} imports {target} ({why})")
    return [found[key] for key in sorted(found)]


def test_every_method_of_the_table_has_a_folder_of_its_own() -> None:
    assert method_folders() == {"simclr", "moco", "mae", "inpaint", "swav", "byol", "vae",
                                "barlowtwins", "vicreg", "dino"}


def test_method_folders_import_only_shared_modules_and_shared_modules_no_method_folder() -> None:
    root = Path(workloads.__file__).parent
    assert violations(root, method_folders()) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(("files", "expected"), [
    ({"a/method.py": "from workloads.b.loss import x\n"}, "method folder 'a' imports method folder 'b'"),
    ({"a/method.py": "import workloads.b.loss\n"}, "method folder 'a' imports method folder 'b'"),
    ({"a/method.py": "from workloads import b\n"}, "method folder 'a' imports method folder 'b'"),
    ({"a/model.py": "from ..b import loss\n"}, "method folder 'a' imports method folder 'b'"),
    ({"a/model.py": "def f() -> None:\n    from workloads.b.loss import x\n"},
     "method folder 'a' imports method folder 'b'"),
    ({"a/method.py": "from workloads.methods import METHODS\n"}, "method folder 'a' imports the methods table"),
    ({"views.py": "from workloads.a.model import Model\n"}, "shared module imports method folder 'a'"),
    ({"augment/ops.py": "from workloads.b import loss\n"}, "shared module imports method folder 'b'"),
])
def test_a_planted_violation_is_found(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    root = tmp_path / PACKAGE
    _write(root, {"__init__.py": "", "a/__init__.py": "", "b/__init__.py": "", "b/loss.py": "x = 1\n", **files})
    found = violations(root, {"a", "b"})
    assert len(found) == 1 and expected in found[0], found


def test_what_the_layering_allows_is_not_a_violation(tmp_path: Path) -> None:
    root = tmp_path / PACKAGE
    _write(root, {
        "__init__.py": "", "b/__init__.py": "",
        "a/__init__.py": "from workloads.a import loss\n",
        "a/method.py": "from workloads.a.loss import x\nfrom workloads.config import Config\nfrom . import loss\n",
        "a/loss.py": "from workloads.augment.views import two_views\nfrom workloads import dist\n",
        "methods.py": "from workloads.a.method import A\nfrom workloads.b.method import B\n",
        "config.py": "def table() -> None:\n    from workloads import methods\n",
    })
    assert violations(root, {"a", "b"}) == []
