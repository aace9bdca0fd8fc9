"""The layering of the packages is a checked fact: import-linter's contracts, and what `import` loads.

The contracts live in pyproject.toml (``[tool.importlinter]``); ``make lint`` runs them too.
"""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
ENGINES = ("torch", "transformers", "pyspark", "ray")


def _lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        check=False,
        capture_output=True,
        text=True,
        cwd=src.parent,
        env=env,
        timeout=120,
    )


def test_every_contract_is_kept() -> None:
    result = _lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 7 kept, 0 broken." in result.stdout


def test_an_import_inside_a_function_breaks_the_layers(tmp_path: Path) -> None:
    """A lazy import counts: data reaching into models from a function body is reported."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "sluice", src / "sluice", ignore=shutil.ignore_patterns("__pycache__"))
    location = src / "sluice" / "data" / "location.py"
    lines = location.read_text().splitlines()
    lines += ["", "", "def _signature_of(name: str) -> object:", "    from sluice.models import load_model", ""]
    location.write_text("\n".join(lines))
    result = _lint_imports(src)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Contracts: 6 kept, 1 broken." in result.stdout
    assert "Packages depend only downward: cli on top, the leaf modules at the bottom BROKEN" in result.stdout
    assert "sluice.data is not allowed to import sluice.models:" in result.stdout
    assert f"- sluice.data.location -> sluice.models (l.{len(lines) - 1})" in result.stdout


def test_data_knows_nothing_of_models() -> None:
    graph = grimp.build_graph("sluice")
    assert graph.find_shortest_chain(importer="sluice.data", imported="sluice.models", as_packages=True) is None
    assert graph.find_shortest_chain(importer="sluice.models", imported="sluice.data", as_packages=True) is None


def test_the_training_loop_does_not_import_its_launcher() -> None:
    graph = grimp.build_graph("sluice")
    assert graph.direct_import_exists(importer="sluice.train.launch", imported="sluice.train.loop")
    assert graph.find_shortest_chain(importer="sluice.train.loop", imported="sluice.train.launch") is None
    assert graph.find_shortest_chain(importer="sluice.train.values", imported="sluice.train.loop") is None


@pytest.mark.parametrize(
    "module",
    [
        "sluice",
        "sluice.models",
        "sluice.data",
        "sluice.batch",
        "sluice.batch.run",
        "sluice.tune.api",
        "sluice.jobs.worker",
        "sluice.jobs.http",
        "sluice.backends.api",
        "sluice.backends.spark",
        "sluice.backends.ray",
        "sluice.serve",
        "sluice.serve.server",
        "sluice.serve.app",
        "sluice.train",
        "sluice.train.launch",
        "sluice.cli.main",
    ],
)
def test_importing_loads_no_optional_engine(module: str) -> None:
    """torch, pyspark and ray load when a training run, a Spark job or a Ray job starts, not before."""
    code = (
        f"import sys, {module}\n"
        f"engines = {ENGINES!r}\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & set(engines)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _contract(contract_id: str) -> dict[str, Any]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["id"] == contract_id]
    return dict(contract)


def _top_level_modules() -> set[str]:
    return {f"sluice.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "src" / "sluice")])}


@pytest.mark.parametrize(
    ("contract_id", "exempt"),
    [
        ("cli-on-top", {"sluice.cli", "sluice.__main__"}),
        ("optional-engines", {"sluice.cli", "sluice.__main__", "sluice.backends", "sluice.train"}),
    ],
)
def test_forbidden_contracts_cover_every_module_below(contract_id: str, exempt: set[str]) -> None:
    """A new module is checked from the day it lands: these contracts list their sources by name."""
    assert set(_contract(contract_id)["source_modules"]) == _top_level_modules() - exempt


def test_imports_under_type_checking_are_not_excluded() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config.get("exclude_type_checking_imports", False) is False
