"""Library errors name parameters as the Python API spells them; the CLI shows its flags instead.

Each case runs the same mistake twice, through ``sluice.predict`` and through ``sluice predict``,
and checks both whole messages.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import typer

import sluice
from sluice.cli.main import app
from sluice.cli.runtime import FLAGS, error_message, flag_text
from sluice.errors import (
    BindError,
    ConfigError,
    DataError,
    ErrorFractionExceeded,
    MissingDependency,
    OutputConflict,
    SluiceError,
)
from support import SRC_ROOT, invoke, make_table, write_table

# -- the spelling rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "params", "expected"),
    [
        ("pass `overwrite=True` to replace it", ("overwrite",), "pass --overwrite to replace it"),
        ("or use `device='cpu'`", ("device",), "or use --device cpu"),
        ('or use `device="cpu"`', ("device",), "or use --device cpu"),
        ("add your own with `prices=FILE`", ("prices",), "add your own with --prices FILE"),
        ("or pass `trusted_types` for each", ("trusted_types",), "or pass --trust-type for each"),
        (
            "choose them with `features`, or pass identifiers through with `key_column`/`include`",
            ("features", "key_column", "include"),
            "choose them with --features, or pass identifiers through with --key-column/--include",
        ),
        # only the parameters the error lists: a column named like a parameter stays as written
        ("`features` names column `include`", ("features",), "--features names column `include`"),
        # not a parameter the CLI has a flag for, or not a parameter at all
        (
            "`max_attempts` is 0; see `sluice jobs worker`",
            ("max_attempts",),
            "`max_attempts` is 0; see `sluice jobs worker`",
        ),
        ("takes 4 features per row", ("features",), "takes 4 features per row"),
    ],
)
def test_flag_text(text: str, params: tuple[str, ...], expected: str) -> None:
    assert flag_text(text, params) == expected


def test_flag_text_without_params_spells_every_known_parameter() -> None:
    # free text from the library, as `sluice tune` prints a choice's reason and `sluice jobs` a job's errors
    reason = "its p99 53.20 ms > `max_latency_ms` 50; peak memory 1,610 MiB > `memory_limit` 1,024 MiB"
    assert (
        flag_text(reason) == "its p99 53.20 ms > --max-latency-ms 50; peak memory 1,610 MiB > --memory-limit 1,024 MiB"
    )
    assert flag_text("more than `max_error_fraction` 0.0; `retries` left") == (
        "more than --max-error-fraction 0.0; `retries` left"
    )


def test_every_flag_in_the_table_is_an_option_of_a_command() -> None:
    options: set[str] = set()

    def walk(command: Any) -> None:
        options.update(opt for param in command.params for opt in getattr(param, "opts", ()))
        for child in getattr(command, "commands", {}).values():
            walk(child)

    walk(typer.main.get_command(app))
    assert sorted(set(FLAGS.values()) - options) == []


# -- the library's messages ----------------------------------------------------------------

FLAG = re.compile(r"(?<![\w-])--[a-z]")


@dataclass(frozen=True)
class Raise:
    where: str
    text: str
    params: tuple[str, ...] | None  # None: not a literal tuple of strings


def _library_raises() -> Iterator[Raise]:
    for path in sorted((SRC_ROOT / "sluice").rglob("*.py")):
        if "cli" in path.relative_to(SRC_ROOT / "sluice").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                yield _describe(node.exc, f"{path.relative_to(SRC_ROOT)}:{node.lineno}")


def _describe(exc: ast.expr, where: str) -> Raise:
    text = "".join(n.value for n in ast.walk(exc) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    params: tuple[str, ...] | None = ()
    for call in (n for n in ast.walk(exc) if isinstance(n, ast.Call)):
        for keyword in call.keywords:
            if keyword.arg == "params":
                elements = keyword.value.elts if isinstance(keyword.value, ast.Tuple) else []
                names = [e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]
                params = tuple(names) if names and len(names) == len(elements) else None
    return Raise(where, text, params)


def test_no_library_error_names_a_flag() -> None:
    raises = list(_library_raises())
    assert len(raises) > 100  # the scan sees the library's raise statements
    assert [(r.where, r.text) for r in raises if FLAG.search(r.text)] == []


def test_every_parameter_an_error_lists_is_named_in_it_and_has_a_flag() -> None:
    listed = [r for r in _library_raises() if r.params]
    assert len(listed) >= 15
    assert [(r.where, p) for r in listed for p in r.params or () if f"`{p}" not in r.text] == []
    assert [(r.where, p) for r in listed for p in r.params or () if p not in FLAGS] == []


def test_an_error_from_another_process_renders_with_flags() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(DataError("`key_column` 'x' is not a column", params=("key_column",))))
    assert error_message(error) == "--key-column 'x' is not a column"


def test_missing_dependency_names_the_backend_parameter() -> None:
    error = MissingDependency("pyspark", "spark", "`backend='spark'`", params=("backend",))
    assert str(error) == (
        "`backend='spark'` needs the Python package 'pyspark', which is not installed. "
        "Install it from the Sluice checkout with: make install-spark (or .venv/bin/pip install -e '.[spark]')"
    )
    assert error_message(error) == (
        "--backend spark needs the Python package 'pyspark', which is not installed. "
        "Install it from the Sluice checkout with: make install-spark (or .venv/bin/pip install -e '.[spark]')"
    )


# -- the same mistake through the API and through the CLI ----------------------------------


@dataclass(frozen=True)
class Case:
    error: type[SluiceError]
    api: str  # the message of the Python API's exception; {input}, {out} filled in
    cli: str  # what `sluice predict` prints
    params: tuple[str, ...]
    options: dict[str, Any]  # sluice.predict keyword arguments
    flags: tuple[str, ...]  # the same, as flags
    prepare: Callable[[Path, Any, Path], None] | None = None  # (tmp_path, models, output) before each run


COLUMNS = "columns: ['id', 'name', 'f0', 'f1', 'f2', 'f3']"


def _nan_row(tmp_path: Path, models: Any, out: Path) -> None:
    table = make_table(4)
    f0 = table.column("f0").to_numpy().copy()
    f0[1] = np.nan
    write_table(table.set_column(2, "f0", pa.array(f0)), tmp_path / "in.parquet")


def _other_job(tmp_path: Path, models: Any, out: Path) -> None:
    sluice.predict(str(models.zipmap_onnx), str(tmp_path / "in.parquet"), str(out), key_column="id")


CASES = {
    "key_column": Case(
        DataError,
        f"`key_column` 'nope' is not a column of the input; {COLUMNS}",
        f"--key-column 'nope' is not a column of the input; {COLUMNS}",
        ("key_column",),
        {"key_column": "nope"},
        ("--key-column", "nope"),
    ),
    "include": Case(
        DataError,
        f"`include` names column(s) ['zz'] that the input does not have; {COLUMNS}",
        f"--include names column(s) ['zz'] that the input does not have; {COLUMNS}",
        ("include",),
        {"key_column": "id", "include": ["zz"]},
        ("--key-column", "id", "--include", "zz"),
    ),
    "passthrough clash": Case(
        ConfigError,
        "column(s) ['label'] would be both passed through and written as model outputs; "
        "leave them out with `exclude` or `include`",
        "column(s) ['label'] would be both passed through and written as model outputs; "
        "leave them out with --exclude or --include",
        ("exclude", "include"),
        {"key_column": "id", "include": ["label"]},
        ("--key-column", "id", "--include", "label"),
        lambda tmp_path, models, out: write_table(
            make_table(2).append_column("label", pa.array([1, 2])), tmp_path / "in.parquet"
        ),
    ),
    "features": Case(
        BindError,
        "model input 'X' takes 4 features per row but the data has 5 numeric columns (id, f0, f1, f2, f3); "
        "choose them with `features`, or pass identifiers through with `key_column`/`include`",
        "model input 'X' takes 4 features per row but the data has 5 numeric columns (id, f0, f1, f2, f3); "
        "choose them with --features, or pass identifiers through with --key-column/--include",
        ("features", "key_column", "include"),
        {},
        (),
    ),
    "overwrite": Case(
        OutputConflict,
        "{out} holds the output of a different job (other model, input or options); "
        "pass `overwrite=True` to replace it, or choose another output directory",
        "{out} holds the output of a different job (other model, input or options); "
        "pass --overwrite to replace it, or choose another output directory",
        ("overwrite",),
        {"key_column": "id"},
        ("--key-column", "id"),
        _other_job,
    ),
    "max_error_fraction": Case(
        ErrorFractionExceeded,
        "1 of 4 records failed (25.00%), more than `max_error_fraction` 0.1; "
        "see the _errors/errors-*.jsonl files in {out}",
        "1 of 4 records failed (25.00%), more than --max-error-fraction 0.1; "
        "see the _errors/errors-*.jsonl files in {out}",
        ("max_error_fraction",),
        {"key_column": "id", "max_error_fraction": 0.1},
        ("--key-column", "id", "--max-error-fraction", "0.1"),
        _nan_row,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_api_names_the_parameter_and_cli_the_flag(tmp_path: Path, models, name: str) -> None:
    case = CASES[name]
    src = tmp_path / "in.parquet"
    write_table(make_table(2), src)
    api_out, cli_out = tmp_path / "api-out", tmp_path / "cli-out"
    for out in (api_out, cli_out):
        if case.prepare is not None:
            case.prepare(tmp_path, models, out)
    with pytest.raises(case.error) as info:
        sluice.predict(str(models.onnx), str(src), str(api_out), **case.options)
    assert str(info.value) == case.api.format(out=api_out)
    assert info.value.params == case.params

    result = invoke("predict", "-m", models.onnx, "-i", src, "-o", cli_out, "-q", *case.flags)
    assert result.exit_code == case.error.exit_code, result.output
    assert result.stderr.splitlines()[0] == "error: " + case.cli.format(out=cli_out)  # a summary table may follow


def test_unknown_input_format_api_and_cli(tmp_path: Path, models) -> None:
    src = tmp_path / "in.txt"
    src.write_text("f0,f1\n1,2\n")
    expected = (
        f"cannot tell the format of {src} from its extension; expected .parquet, .csv or .jsonl "
        "(optionally compressed), or pass {}"
    )
    with pytest.raises(DataError) as info:
        sluice.predict(str(models.onnx), str(src), str(tmp_path / "out"))
    assert (str(info.value), info.value.params) == (expected.format("`input_format`"), ("input_format",))
    result = invoke("predict", "-m", models.onnx, "-i", src, "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert " ".join(result.stderr.split()) == "error: " + expected.format("--input-format")


def test_pickle_refusal_api_and_cli(tmp_path: Path, models) -> None:
    expected = (
        f"{models.pickle} is a pickle/joblib file, and loading one runs whatever code it contains. "
        "Save the model with skops (skops.io.dump) instead, or pass {} if you created this file "
        "yourself or fully trust its source."
    )
    with pytest.raises(SluiceError) as info:
        sluice.load_model(str(models.pickle))
    assert (str(info.value), info.value.params) == (expected.format("`trust_pickle=True`"), ("trust_pickle",))
    result = invoke("models", "show", models.pickle)
    assert result.exit_code == 2
    assert " ".join(result.stderr.split()) == "error: " + expected.format("--trust-pickle")
