"""``__all__`` is each package's public surface, and each module's ``__all__`` names what it defines.

A package's surface is what its ``__init__`` binds under a public name: what it defines, and what it
imports from a public Sluice module (also under ``if TYPE_CHECKING:``, where the lazily exported
names are declared for type checkers). Plumbing imports (``typing``, ``sluice._lazy``) are not part
of it, and explicit re-exports (``import x as x``) are.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

PACKAGES = [
    "sluice",
    "sluice.models",
    "sluice.data",
    "sluice.batch",
    "sluice.tune",
    "sluice.jobs",
    "sluice.backends",
    "sluice.serve",
    "sluice.stream",
    "sluice.train",
    "sluice.bench",
    "sluice.cli",
]
# importing it runs the command line
NOT_IMPORTABLE = {"sluice.__main__"}


def _is_public_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "sluice" and not any(part.startswith("_") for part in parts)


def _is_public_name(name: str) -> bool:
    return not name.startswith("_") or name == "__version__"


def _bound_names(body: list[ast.stmt], package: str) -> set[str]:
    names: set[str] = set()
    for stmt in body:
        if isinstance(stmt, ast.If):
            names |= _bound_names(stmt.body, package) | _bound_names(stmt.orelse, package)
        elif isinstance(stmt, ast.ImportFrom):
            module = stmt.module or ""
            if stmt.level:  # relative to the package this __init__ belongs to
                base = package.split(".")[: len(package.split(".")) - stmt.level + 1]
                module = ".".join([*base, module] if module else base)
            for alias in stmt.names:
                if _is_public_module(module) or alias.asname == alias.name:
                    names.add(alias.asname or alias.name)
        elif isinstance(stmt, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            names |= {target.id for target in stmt.targets if isinstance(target, ast.Name)}
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            names.add(stmt.target.id)
    return names


def package_surface(package: ModuleType) -> set[str]:
    """The public names a package's ``__init__.py`` binds."""
    assert package.__file__ is not None
    tree = ast.parse(Path(package.__file__).read_text())
    return {name for name in _bound_names(tree.body, package.__name__) if _is_public_name(name)}


def modules_of(package: ModuleType) -> list[ModuleType]:
    """The plain modules directly inside ``package`` (its subpackages have their own test)."""
    found = pkgutil.iter_modules(package.__path__, f"{package.__name__}.")
    return [importlib.import_module(m.name) for m in found if not m.ispkg and m.name not in NOT_IMPORTABLE]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_the_public_surface_of_the_package(name: str) -> None:
    package = importlib.import_module(name)
    exported = package.__all__
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    assert set(exported) == package_surface(package)
    for member in exported:
        assert getattr(package, member) is not None
    lazy = getattr(package, "_EXPORTS", {})
    assert set(lazy) <= set(exported), f"{name} exports lazily names its __all__ lacks"


@pytest.mark.parametrize("name", PACKAGES)
def test_each_module_lists_only_what_it_defines_or_reexports(name: str) -> None:
    for module in [importlib.import_module(name), *modules_of(importlib.import_module(name))]:
        exported = getattr(module, "__all__", None)
        if exported is None:
            continue
        assert len(exported) == len(set(exported)), f"{module.__name__}.__all__ repeats a name"
        for member in exported:
            assert hasattr(module, member), f"{module.__name__}.__all__ names {member!r}, which it lacks"
            value = getattr(module, member)
            if not (inspect.isclass(value) or inspect.isfunction(value)) or value.__module__ == module.__name__:
                continue
            # a re-export must be of a name its home module exports, not a helper it happened to import
            home = importlib.import_module(value.__module__)
            assert member in getattr(home, "__all__", ()), (
                f"{module.__name__}.__all__ names {member!r}, an import from {value.__module__} that it does not export"
            )


def test_the_surface_counts_definitions_reexports_and_lazy_declarations() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from sluice._lazy import lazy_exports\n"
        "from sluice._version import __version__ as __version__\n"
        "from sluice.models.base import Model\n"
        "LIMIT = 3\n"
        "_private = 4\n"
        "def helper() -> None: ...\n"
        "if TYPE_CHECKING:\n"
        "    from sluice.jobs.api import Job as Job\n"
    )
    names = {n for n in _bound_names(ast.parse(source).body, "sluice.x") if _is_public_name(n)}
    assert names == {"__version__", "Model", "LIMIT", "helper", "Job"}
