"""The README's table of exit codes holds for every command: one real run per code and command.

0 success · 1 a failure at run time · 2 a usage error or unusable input · 3 more failed records
than allowed · 4 a cancelled job or an output another run writes (tests/test_output_guard_lock.py) ·
130 interrupted (tests/test_interrupt.py sends the Ctrl-C) · 143 terminated (tests/test_signals.py).
"""

from __future__ import annotations

import gzip
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import typer

import sluice.jobs
from jobs_support import worker_env, write_inputs, write_spec
from sluice._net import free_loopback_port
from sluice.cli.main import app
from sluice.demo import make_demo_data, make_demo_model
from sluice.serve.server import ServerThread, ServeSettings
from support import SRC_ROOT, invoke, write_module


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exit-demo")
    make_demo_data(root / "demo-data", rows=2000, files=1)
    make_demo_model(root / "models", sample=2000)
    table = pq.read_table(root / "demo-data" / "demo-00.parquet").slice(0, 50)
    f0 = table.column("f0").to_numpy().copy()
    f0[[3, 7]] = np.nan  # two records the model cannot take
    (root / "bad").mkdir()
    pq.write_table(table.set_column(1, "f0", pa.array(f0)), root / "bad" / "bad.parquet")
    return root


@pytest.fixture(scope="module")
def server(demo: Path) -> Iterator[str]:
    with ServerThread(ServeSettings(repository=demo / "models", port=0, log_level="warning")) as running:
        running.wait_ready(timeout_s=30)
        yield f"http://{running.url}"


def _code(*args: str | Path) -> int:
    return invoke(*args).exit_code


# -- 0 ---------------------------------------------------------------------------------------


def test_0_success(demo: Path, server: str, tmp_path: Path) -> None:
    repo, data = demo / "models", demo / "demo-data"
    spec = write_spec(tmp_path / "job.json", model="demo", repository=str(repo), input=str(data),
                      output=str(tmp_path / "job-out"), key_column="id")  # fmt: skip
    codes = {
        "predict": _code("predict", "-m", "demo", "-r", repo, "-i", data, "-o", tmp_path / "o", "-q"),
        "demo": _code("demo", "--dir", tmp_path / "d", "--rows", "100", "--files", "1", "-q"),
        "tune": _code("tune", "-m", "demo", "-r", repo, "-i", data, "--sample-rows", "200", "--max-batch-size", "8"),
        "cost": _code("cost", "--rows", "1e6", "--deadline", "1h", "--rows-per-second", "1000", "--cores", "2"),
        "train plan": _code("train", "plan", "--params", "1M", "--workers", "2", "--bandwidth", "10Gbit"),
        "models list": _code("models", "list", "-r", repo),
        "models show": _code("models", "show", "demo", "-r", repo),
        "jobs submit --wait": _code("jobs", "submit", spec, "--wait", "-q", "--home", tmp_path / "home"),
        "jobs list": _code("jobs", "list", "--home", tmp_path / "home"),
        "routes show": _code("routes", "show", "demo", "--url", server),
        "bench serve": _code("bench", "serve", "--url", server, "--concurrency", "1", "--duration", "100ms"),
    }
    assert codes == dict.fromkeys(codes, 0)


# -- 1 ---------------------------------------------------------------------------------------


def test_1_failure_at_run_time(demo: Path, server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_module(tmp_path, "broken_exit_model", "def predict(x):\n    raise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)
    data = demo / "demo-data"
    small = tmp_path / "in"
    small.mkdir()
    # every file's header is checked at submit, so the second shard's read fails later: its
    # compressed stream is cut short past the header
    table = pq.read_table(data / "demo-00.parquet")
    pacsv.write_csv(table.slice(0, 10), small / "a.csv")
    pacsv.write_csv(table.slice(10, 20_000), tmp_path / "b.csv")
    whole = gzip.compress((tmp_path / "b.csv").read_bytes())
    (small / "b.csv.gz").write_bytes(whole[: len(whole) // 2])
    spec = write_spec(tmp_path / "fails.json", model="demo", repository=str(demo / "models"), input=str(small),
                      output=str(tmp_path / "job-out"), key_column="id", max_attempts=1,
                      batch_size=64)  # fmt: skip
    unreachable = f"http://127.0.0.1:{free_loopback_port()}"
    codes = {
        "predict": _code("predict", "-m", "broken_exit_model:predict", "-i", data, "-o", tmp_path / "o", "-q"),
        "jobs submit --wait": _code("jobs", "submit", spec, "--wait", "-q", "--home", tmp_path / "home"),
        "routes show": _code("routes", "show", "demo", "--url", unreachable),
        "ab report": _code("ab", "report", "demo", "--url", unreachable),
        "bench serve": _code("bench", "serve", "--url", server, "--rows", "100", "--duration", "100ms"),
    }
    assert codes == dict.fromkeys(codes, 1)


# -- 2 ---------------------------------------------------------------------------------------


def _leaf_commands() -> list[str]:
    def walk(path: str, command: object) -> Iterator[str]:
        children = getattr(command, "commands", {})
        if path and (not children or path == "train"):
            yield path
        for name, child in sorted(children.items()):
            yield from walk(f"{path} {name}".strip(), child)

    return list(walk("", typer.main.get_command(app)))


@pytest.mark.parametrize("path", _leaf_commands())
def test_2_an_unknown_flag_on_every_command(path: str) -> None:
    result = invoke(*path.split(), "--no-such-flag")
    assert result.exit_code == 2
    assert "No such option: --no-such-flag" in result.output


def test_2_unusable_input(demo: Path, server: str, tmp_path: Path) -> None:
    repo, data = demo / "models", demo / "demo-data"
    nowhere = tmp_path / "nowhere"
    codes = {
        "predict": _code("predict", "-m", "demo", "-r", repo, "-i", nowhere, "-o", tmp_path / "o"),
        "tune": _code("tune", "-m", "demo", "-r", repo, "-i", nowhere),
        "cost": _code("cost", "--rows", "lots", "--deadline", "1h", "--rows-per-second", "1"),
        "train": _code("train", "--input", data, "--target", "y", "--model", "m", "--strategy", "allgather"),
        "train plan": _code("train", "plan", "--params", "many", "--workers", "2", "--bandwidth", "10Gbit"),
        "models show": _code("models", "show", "nope", "-r", repo),
        "jobs submit": _code("jobs", "submit", nowhere, "--home", tmp_path / "home"),
        "jobs status": _code("jobs", "status", "0123abcd", "--home", tmp_path / "home"),
        "routes set": _code("routes", "set", "demo", "--weights", "1=50,9=50", "--url", server),
        "routes show": _code("routes", "show", "nope", "--url", server),
        "ab report": _code("ab", "report", "nope", "--url", server),
        "bench serve": _code("bench", "serve", "--url", server, "-m", "nope"),
        "serve": _code("serve", "-r", nowhere),
    }
    assert codes == dict.fromkeys(codes, 2)


def test_2_routes_set_a_refused_change_names_the_reason(demo: Path, server: str) -> None:
    result = invoke("routes", "set", "demo", "--weights", "1=50,9=50", "--url", server)
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: POST {server}/v2/models/demo/routes answered 400: model 'demo' has no version 9; versions: [1]\n"
    )


def test_2_serve_with_its_port_in_use(demo: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(SRC_ROOT)}
        result = subprocess.run(
            [sys.executable, "-m", "sluice", "serve", "-r", str(demo / "models"), "--port", str(port),
             "--log-level", "error"],
            check=False, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"error: could not serve on 127.0.0.1:{port} (is the port in use?): choose another --port"
    )


# -- 3 and 4 ---------------------------------------------------------------------------------


def test_3_more_failed_records_than_allowed(demo: Path, tmp_path: Path) -> None:
    repo, bad = demo / "models", demo / "bad"
    spec = write_spec(tmp_path / "job.json", model="demo", repository=str(repo), input=str(bad),
                      output=str(tmp_path / "job-out"), key_column="id")  # fmt: skip
    codes = {
        "predict": _code("predict", "-m", "demo", "-r", repo, "-i", bad, "-o", tmp_path / "o", "--key-column", "id"),
        "jobs submit --wait": _code("jobs", "submit", spec, "--wait", "-q", "--home", tmp_path / "home"),
    }
    assert codes == dict.fromkeys(codes, 3)
    allowed = _code("predict", "-m", "demo", "-r", repo, "-i", bad, "-o", tmp_path / "o2", "--key-column", "id",
                    "--max-error-fraction", "0.1", "-q")  # fmt: skip
    assert allowed == 0


def test_4_a_cancelled_job(models: Any, tmp_path: Path) -> None:
    write_inputs(tmp_path / "in", 16, 400)
    spec = write_spec(tmp_path / "job.json", model=str(models.onnx), input=str(tmp_path / "in"),
                      output=str(tmp_path / "out"), key_column="id", batch_size=1)  # fmt: skip
    home = tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sluice", "jobs", "submit", str(spec), "--wait", "-q", "--slots", "1",
         "--home", str(home)],
        env=worker_env(home), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        job = sluice.jobs.get(job_id, store=home)
        while job.status().shards_done < 1 and proc.poll() is None:
            time.sleep(0.02)
        assert invoke("jobs", "cancel", job_id, "--home", home).exit_code == 0
        assert proc.wait(timeout=60) == 4
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert job.status().state.value == "CANCELLED"


def test_the_readme_table_is_the_one_tested_here() -> None:
    readme = (SRC_ROOT.parent / "README.md").read_text()
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    codes = [int(m) for m in re.findall(r"^\| (\d+) +\|", table, flags=re.MULTILINE)]
    assert codes == [0, 1, 2, 3, 4, 130, 143]
