"""One grammar across commands: help that reads the same everywhere, one meaning per flag name,
old spellings that still work with a note, tables whole off a terminal, and ``bench serve``'s reasons."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from sluice._net import free_loopback_port
from sluice.bench.loadgen import NO_ANSWER, HttpRequest, closed_loop
from sluice.cli.grammar import Renamed, rewrite_renamed
from sluice.cli.main import app
from sluice.demo import make_demo_data, make_demo_model
from sluice.serve.server import ServerThread, ServeSettings
from support import SRC_ROOT, invoke


def _commands() -> Iterator[tuple[str, Any]]:
    def walk(path: str, command: Any) -> Iterator[tuple[str, Any]]:
        yield path, command
        for name, child in sorted(getattr(command, "commands", {}).items()):
            yield from walk(f"{path} {name}".strip(), child)

    yield from walk("", typer.main.get_command(app))


COMMANDS = [path for path, _ in _commands()]


def test_the_walk_sees_every_command() -> None:
    assert {"predict", "tune", "train", "train plan", "bench serve", "jobs submit", "routes set", "ab report"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("path", COMMANDS)
def test_help_has_one_style(path: str) -> None:
    result = invoke(*path.split(), "--help")
    assert result.exit_code == 0, result.output
    text = result.stdout
    # typer's lower-case type names (and "<bool>" on flags that take no value) are never shown
    assert re.findall(r"<(?:str|int|float|bool|path)[^>]*>", text) == []
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage
    command = dict(_commands())[path]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    for argument in arguments:
        assert re.search(rf"\b{argument.name.upper()}\b", usage), usage
    assert ("Arguments" in text) == bool(arguments)


def test_flags_show_no_value_and_values_are_upper_case_words() -> None:
    text = invoke("predict", "--help").stdout
    assert re.search(r"--overwrite\s+Replace existing output", text), text
    assert re.search(r"--workers\s+N\s", text)
    assert re.search(r"--spec\s+PATH\s", text)
    assert re.search(r"--max-error-fraction\s+NUMBER\s", text)
    assert re.search(r"--slots\s+N \[1<=x<=64\]", invoke("jobs", "worker", "--help").stdout)


def _options() -> dict[str, dict[str, Any]]:
    """Option name → {command path: the click option}."""
    found: dict[str, dict[str, Any]] = {}
    for path, command in _commands():
        for param in command.params:
            for name in getattr(param, "opts", ()):
                if name.startswith("--"):
                    found.setdefault(name, {})[path] = param
    return found


def test_json_prints_to_stdout_on_every_command() -> None:
    commands = _options()["--json"]
    assert {"predict", "tune", "bench serve", "cost", "jobs list", "routes show", "ab report", "train plan"} <= set(
        commands
    )
    assert {path: p.is_flag for path, p in commands.items()} == dict.fromkeys(commands, True)


def test_one_meaning_per_flag_name() -> None:
    options = _options()
    # train speaks as every other command does: --input data, --model NAME
    assert {"train", "predict", "tune"} <= set(options["--input"]) and {"train", "predict"} <= set(options["--model"])
    # --exclude is "not copied to the output", on predict only; train's "not a feature" has its own name
    assert sorted(options["--exclude"]) == ["predict"]
    assert sorted(options["--exclude-features"]) == ["train"]
    assert "--data" not in options and "--model-name" not in options
    assert "--json-file" in options


# -- old spellings -------------------------------------------------------------------------

RENAMED = {"--data": Renamed("--input"), "--json": Renamed("--json-file", only_with_value=True)}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data", "d/", "--target", "y"], ["--input", "d/", "--target", "y"]),
        (["--data=d/"], ["--input=d/"]),
        (["--json", "out.json", "-m", "x"], ["--json-file", "out.json", "-m", "x"]),
        (["--json=out.json"], ["--json-file=out.json"]),
        (["--json", "-m", "x"], ["--json", "-m", "x"]),  # the new flag, no value
        (["-m", "x", "--json"], ["-m", "x", "--json"]),
        (["plan", "--data", "x"], ["plan", "--data", "x"]),  # a subcommand's own flags are its own
        (["--", "--data"], ["--", "--data"]),
    ],
)
def test_rewrite_renamed(args: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert rewrite_renamed(args, RENAMED, lambda arg: arg == "plan") == expected
    notes = capsys.readouterr().err
    assert notes == "".join(
        f"warning: {old} is deprecated; use {new} instead\n"
        for old, new in (("--data", "--input"), ("--json VALUE", "--json-file"))
        if args != expected and old.split()[0] in "".join(args)
    )


def test_train_old_spellings_still_work_with_a_note(tmp_path: Path) -> None:
    result = invoke("train", "--data", tmp_path, "--target", "y", "--model-name", "m", "--exclude", "id",
                    "--strategy", "allgather")  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.splitlines()[:3] == [
        "warning: --data is deprecated; use --input instead",
        "warning: --model-name is deprecated; use --model instead",
        "warning: --exclude is deprecated; use --exclude-features instead",
    ]
    assert "invalid training config: strategy: Input should be 'ddp'" in result.stderr
    assert "Deprecated spellings, still accepted: --data → --input" in " ".join(
        invoke("train", "--help").stdout.split()
    )


def test_train_names_missing_flags_as_they_are_spelled_now(tmp_path: Path) -> None:
    result = invoke("train", "--target", "y")
    assert result.exit_code == 2
    assert "error: --input, --model required (or give them in a --config file)" in result.stderr


# -- a demo server and data ----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grammar-demo")
    make_demo_data(root / "demo-data", rows=3000, files=1)
    make_demo_model(root / "models", sample=2000)
    return root


def _piped(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``sluice ARGS`` in its own process, stdout and stderr pipes (no terminal)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "sluice", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tune_tables_are_whole_through_a_pipe(demo: Path) -> None:
    result = _piped("tune", "-m", "demo", "-i", "demo-data", "--key-column", "id", "--sample-rows", "1000",
                    "--max-batch-size", "64", "--price-per-hour", "0.5", cwd=demo)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    rows = [line for line in result.stdout.splitlines() if re.search(r"│\s+\d+ │", line)]
    assert rows and all(re.search(r"│ +[\d,]+ │ +[\d.]+ │ +[\d.]+ │ +[\d.]+ MiB │", line) for line in rows), rows


def test_cost_table_is_whole_through_a_pipe(demo: Path) -> None:
    result = _piped("cost", "--rows", "1e9", "--deadline", "2h", "--rows-per-second", "19788", "--cores", "2",
                    cwd=demo)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout
    assert "measured 19,788 rows/s on 2 cores (--rows-per-second)" in result.stdout


def test_tune_json_on_stdout_and_json_file_and_the_old_spelling(demo: Path, tmp_path: Path) -> None:
    common = ("-m", "demo", "-r", str(demo / "models"), "-i", str(demo / "demo-data"), "--key-column", "id",
              "--sample-rows", "500", "--max-batch-size", "16")  # fmt: skip
    printed = invoke("tune", *common, "--json")
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout)["sample_rows"] == 500
    old = invoke("tune", *common, "--json", tmp_path / "old.json")
    assert old.exit_code == 0, old.output
    assert old.stderr.startswith("warning: --json VALUE is deprecated; use --json-file instead\n")
    assert json.loads((tmp_path / "old.json").read_text())["sample_rows"] == 500
    assert "choice:" in old.stdout


def test_tune_png_without_matplotlib_fails_before_measuring(demo: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('blocked for the test')\n")
    env_path = os.pathsep.join([str(blocker), str(SRC_ROOT)])
    result = subprocess.run(
        [sys.executable, "-m", "sluice", "tune", "-m", "demo", "-i", "demo-data", "--plot", "x.png"],
        check=False, cwd=demo, env={**os.environ, "PYTHONPATH": env_path}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        "error: Writing a PNG plot needs the Python package 'matplotlib', which is not installed. "
        "Install it from the Sluice checkout with: make install-plot (or .venv/bin/pip install -e '.[plot]')\n"
    )
    assert result.stdout == ""  # nothing was measured


# -- bench serve ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(demo: Path) -> Iterator[ServerThread]:
    with ServerThread(ServeSettings(repository=demo / "models", port=0, log_level="warning")) as running:
        running.wait_ready(timeout_s=30)
        yield running


def test_bench_serve_takes_name_at_version(server: ServerThread) -> None:
    result = invoke("bench", "serve", "--url", f"http://{server.url}", "-m", "demo@1", "--concurrency", "1",
                    "--duration", "200ms", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    level = json.loads(result.stdout)["levels"][0]
    assert level["statuses"] == {"200": level["requests"]} and level["reasons"] == {}


def test_bench_serve_all_failing_says_why_and_exits_1(server: ServerThread) -> None:
    result = invoke("bench", "serve", "--url", f"http://{server.url}", "-m", "demo", "--rows", "100",
                    "--concurrency", "1", "--duration", "200ms")  # fmt: skip
    assert result.exit_code == 1
    reason = (
        "inference request batch-size must be <= 64 for 'demo' (the request has 100 rows; the limit is the "
        "model's max_batch_size, set in its model.yaml as 'batching: {max_batch_size: N}')"
    )
    assert f"400: {reason}" in result.stdout.splitlines()
    assert result.stderr == f"error: no request succeeded: 400: {reason}\n"


def test_bench_serve_rejects_a_malformed_reference() -> None:
    result = invoke("bench", "serve", "-m", "demo@")
    assert result.exit_code == 2
    assert result.stderr == "error: --model 'demo@': expected NAME, NAME@VERSION, NAME@LABEL or NAME/versions/V\n"


def test_no_answer_is_status_599_with_its_reason() -> None:
    request = HttpRequest.post(f"http://127.0.0.1:{free_loopback_port()}/", b"{}")
    result = asyncio.run(closed_loop(request, 1, 0.05))
    assert set(result.statuses) == {NO_ANSWER} == {599}
    assert result.reasons[NO_ANSWER].startswith("ConnectionRefusedError: ")
    assert result.to_dict()["reasons"] == {"599": result.reasons[NO_ANSWER]}


def test_serve_help_names_the_row_limit_and_its_setting() -> None:
    text = " ".join(invoke("serve", "--help").stdout.split())
    assert "at most the model's max_batch_size rows (default 64; model.yaml 'batching: {max_batch_size: N}')" in (
        text.replace("│ ", "").replace(" │", "")
    )


def test_every_command_whose_errors_name_trust_type_accepts_it() -> None:
    assert {"predict", "tune", "models show"} <= set(_options()["--trust-type"])


def test_demo_with_target_writes_a_labelled_training_set(tmp_path: Path) -> None:
    import pyarrow.dataset as ds

    result = invoke("demo", "--dir", tmp_path, "--rows", "200", "--files", "1", "--with-target", "-q")
    assert result.exit_code == 0, result.output
    table = ds.dataset(tmp_path / "demo-train").to_table()
    assert table.num_rows == 20_000
    assert table.column_names == ["id", *(f"f{i}" for i in range(32)), "churned"]
    assert set(table.column("churned").to_pylist()) == {0, 1}
