"""Every shell and Python example of README.md and docs/*.md runs, as written, on the demo data.

A fenced block opened with ```` ```bash ```` or ```` ```python ```` is an example; other fences
(output, YAML, ``console``) are not run. The blocks of one page run in order in one fresh
directory holding what ``sluice demo --with-target`` makes (on 20,000 rows), so a page may build
on its earlier blocks as a reader does. ``.venv/bin/sluice`` and ``.venv/bin/python`` there are
this checkout's; the bash blocks of a page share their exported variables, as one shell session
would. A block whose first line names a file (``# job.yaml``, ``# scoring.py``) is that
file: it is written there, not run. An HTML comment on the line before a block changes how it runs:

* ``<!-- docs-test: skip REASON -->`` — not run (it needs a server, a cluster or a network);
* ``<!-- docs-test: slow -->`` — run, and the page's test is marked ``slow``;
* ``<!-- docs-test: needs MODULE,… -->`` — run where those optional modules import, else not.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sluice.demo import prepare_demo
from support import SRC_ROOT

ROOT = SRC_ROOT.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
FILE_LINE = re.compile(r"# ([\w./-]+\.(?:py|yaml|yml|json|txt))\n")
RUN = ("bash", "python")
MARK = re.compile(r"<!-- docs-test: (skip|slow|needs)\s*(.*?)\s*-->\s*$")
BLOCK_TIMEOUT_S = 180


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str
    mark: str | None  # "skip", "slow", "needs" or None
    reason: str
    file: str | None  # the file the block is, written instead of run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The page's examples, in order."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        named = FILE_LINE.match(match[2])
        if match[1] not in RUN and named is None:
            continue  # output, or a configuration shown but not used
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        found.append(
            Block(page, line, match[1], match[2], mark[1] if mark else None, mark[2] if mark else "",
                  named[1] if named else None)
        )  # fmt: skip
    return found


def _param(page: Path) -> object:
    slow = any(b.mark == "slow" for b in blocks(page))
    return pytest.param(page, id=page.name, marks=[pytest.mark.slow] if slow else [])


def test_every_page_has_examples_and_every_skip_a_reason() -> None:
    examples = {page.name: blocks(page) for page in PAGES}
    assert [name for name, found in examples.items() if not found] == []
    assert [b.where for found in examples.values() for b in found if b.mark == "skip" and not b.reason] == []


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("docs-demo")
    prepare_demo(root, rows=20_000, files=2, with_target=True)
    summary = subprocess.run(
        [sys.executable, "-m", "sluice", "predict", "--model", "demo", "--repository", "models", "--input",
         "demo-data", "--output", "demo-output", "--key-column", "id", "--quiet"],
        check=False, cwd=root, env=_env(root), capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
    )  # fmt: skip
    assert summary.returncode == 0, summary.stderr
    return root


def _env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "COLUMNS", "PYTHONPATH"))}
    env.update(PYTHONPATH=str(SRC_ROOT), SLUICE_HOME=str(workdir / ".sluice-home"), PYTHONDONTWRITEBYTECODE="1")
    env["PATH"] = os.pathsep.join([str(workdir / ".venv" / "bin"), env.get("PATH", "")])
    return env


def _workdir(template: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "work"
    shutil.copytree(template, workdir)
    bin_dir = workdir / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    # scripts, not links: a link to the interpreter outside its venv would lose the venv's packages
    _script(bin_dir / "python", f'exec "{sys.executable}" "$@"')
    _script(bin_dir / "sluice", f'exec "{sys.executable}" -m sluice "$@"')
    for tool in ("moto_server",):  # the dev tools a page runs from .venv/bin
        (bin_dir / tool).symlink_to(Path(sys.executable).parent / tool)
    # the directory already holds what `make demo` makes; nothing an example runs may install anything
    _script(bin_dir / "make", '[ "$*" = demo ] && exit 0; echo "docs test: make $* is not run" >&2; exit 97')
    _script(bin_dir / "pip", 'echo "docs test: pip is not run" >&2; exit 97')
    return workdir


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(block: Block, workdir: Path, groups: list[int]) -> subprocess.CompletedProcess[str]:
    """Run one block; what it leaves running in the background (a server) lives on until the page ends."""
    logs = workdir.parent / "logs"
    logs.mkdir(exist_ok=True)
    # one shell session per page, as a reader has: what a block exports, the next one sees
    exported = logs / "exported.sh"
    script = f"[ -f {exported} ] && . {exported}\nset -euo pipefail\n{block.code}\nexport -p > {exported}\n"
    command = ["bash", "-c", script] if block.language == "bash" else [sys.executable, "-c", block.code]
    out_path, err_path = logs / f"{block.line}.out", logs / f"{block.line}.err"
    # files, not pipes: a server started with `&` keeps its output open after the block ends
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(command, cwd=workdir, env=_env(workdir), stdout=out, stderr=err, start_new_session=True)
        groups.append(proc.pid)
        try:
            proc.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill(proc.pid)
            proc.wait()
    return subprocess.CompletedProcess(command, proc.returncode, out_path.read_text(), err_path.read_text())


def _importable(modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m.strip()) is not None for m in modules.split(","))


def _kill(group: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


@pytest.mark.parametrize("page", [_param(page) for page in PAGES])
def test_the_page_examples_run(page: Path, demo_template: Path, tmp_path: Path) -> None:
    workdir = _workdir(demo_template, tmp_path)
    groups: list[int] = []
    try:
        for block in blocks(page):
            if block.mark == "skip" or (block.mark == "needs" and not _importable(block.reason)):
                continue
            if block.file is not None:
                (workdir / block.file).write_text(block.code, encoding="utf-8")
                continue
            result = _run(block, workdir, groups)
            assert result.returncode == 0, (
                f"{block.where} exited {result.returncode}\n--- block\n{block.code}--- stdout\n"
                f"{result.stdout[-3000:]}--- stderr\n{result.stderr[-3000:]}"
            )
    finally:
        for group in groups:  # the servers the page started
            _kill(group)
