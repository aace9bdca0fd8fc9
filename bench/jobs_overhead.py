"""What the job service costs: the same job via ``sluice.predict`` and via ``sluice jobs``, and resuming after a kill.

The demo data (N rows × 32 float features in Parquet files) and the demo logistic regression
run four ways: in process through ``sluice.predict`` and ``sluice.jobs.submit(...).wait()``, and
as commands (``sluice predict`` and ``sluice jobs submit --wait``, wall time including the
interpreter's start). Rows/s are medians of ``--repeats`` runs; the ratio is to the first row
of the same kind. Then a ``sluice jobs worker`` is SIGKILLed half-way through a job and a new one
started: how long until the dead worker's shard is taken over, how long the rest takes, and how
many rows had to be redone. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median

from sluice.batch import predict
from sluice.demo import make_demo_data, make_demo_model
from sluice.jobs import JobState, submit
from sluice.jobs.sqlite import SqliteJobStore

DATA_DIR = Path(__file__).resolve().parent / ".data"
BATCH_SIZE = 4096  # fixed for every run, so no run pays for (or skips) batch-size tuning


def _data(rows: int, files: int) -> Path:
    directory = DATA_DIR / f"jobs-{rows}-{files}"
    make_demo_data(directory, rows=rows, files=files)
    return directory


def _repository() -> Path:
    repository = DATA_DIR / "models"
    make_demo_model(repository)
    return repository


def _fields(data: Path, repository: Path, output: Path) -> dict[str, object]:
    return {
        "model": "demo",
        "repository": str(repository),
        "input": str(data),
        "output": str(output),
        "key_column": "id",
        "batch_size": BATCH_SIZE,
        "overwrite": True,
    }


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _command(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "sluice", *args], check=True, env=env, capture_output=True)


def measure(data: Path, repository: Path, rows: int, repeats: int, work: Path) -> list[tuple[str, float]]:
    """Median wall seconds of each way to run the job."""
    env = {**os.environ, "SLUICE_HOME": str(work / "home")}
    spec = work / "job.json"
    spec.write_text(json.dumps(_fields(data, repository, work / "out-cli-job")))

    def in_process_job() -> None:
        status = submit(_fields(data, repository, work / "out-job"), store=work / "home").wait()
        assert status.state is JobState.SUCCEEDED, status.message

    flags = ["--model", "demo", "--repository", str(repository), "--input", str(data), "--key-column", "id"]
    flags += ["--batch-size", str(BATCH_SIZE), "--overwrite", "-q"]
    ways: list[tuple[str, Callable[[], object]]] = [
        ("sluice.predict (in process)", lambda: predict(**_fields(data, repository, work / "out-predict"))),  # type: ignore[arg-type]
        ("sluice.jobs.submit().wait() (in process)", in_process_job),
        ("sluice predict (command)", lambda: _command("predict", *flags, "--output", str(work / "out-cli"), env=env)),
        ("sluice jobs submit --wait (command)", lambda: _command("jobs", "submit", str(spec), "--wait", "-q", env=env)),
    ]
    return [(name, median(_timed(action) for _ in range(repeats))) for name, action in ways]


def resume_after_kill(data: Path, repository: Path, work: Path) -> dict[str, float]:
    """Kill a worker once half of the shards are done; time the takeover and the rest."""
    home = work / "home-kill"
    env = {**os.environ, "SLUICE_HOME": str(home)}
    job = submit(_fields(data, repository, work / "out-kill"), store=home)
    store = SqliteJobStore(home / "jobs.db")
    worker = [sys.executable, "-m", "sluice", "jobs", "worker", "--until-idle", "--slots", "1", "--poll", "0.05"]
    victim = subprocess.Popen(worker, env=env, stderr=subprocess.DEVNULL)
    total = job.status().shards_total
    while job.status().shards_done < total // 2:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    killed_at = time.time()
    victim.wait()
    started = time.perf_counter()
    subprocess.run(worker, check=True, env=env, stderr=subprocess.DEVNULL)
    rest_s = time.perf_counter() - started
    final = job.status()
    assert final.state is JobState.SUCCEEDED, final.message
    attempts = store.attempts(job.id)
    retaken = [a for a in attempts if a["started_at"] > killed_at]
    lost = {a["idx"] for a in attempts if a["outcome"] == "LOST"}
    return {
        "shards": float(total),
        "takeover_s": min(a["started_at"] for a in retaken) - killed_at,
        "rest_s": rest_s,
        "rows_redone": float(sum(s.rows for s in job.shards() if s.index in lost)),
        "lost_attempts": float(len(lost)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=8, help="Parquet files, one shard each")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data, repository = _data(args.rows, args.files), _repository()
    with tempfile.TemporaryDirectory(prefix="sluice-jobs-bench-") as tmp:
        work = Path(tmp)
        results = measure(data, repository, args.rows, args.repeats, work)
        kill = resume_after_kill(data, repository, work)
    cores = os.cpu_count()
    print(f"{args.rows:,} rows, {args.files} shards, batch size {BATCH_SIZE}, median of {args.repeats}, {cores} cores")
    print(f"| {'way':<42} | {'seconds':>8} | {'rows/s':>11} | {'ratio':>6} |")
    print(f"|{'-' * 44}|{'-' * 10}|{'-' * 13}|{'-' * 8}|")
    for i, (name, seconds) in enumerate(results):
        base = results[0 if i < 2 else 2][1]
        print(f"| {name:<42} | {seconds:>8.2f} | {args.rows / seconds:>11,.0f} | {base / seconds:>6.2f} |")
    print()
    print(f"resume after SIGKILL of a worker half-way ({kill['shards']:.0f} shards, 1 slot):")
    print(f"| {'takeover by a new worker (from the kill)':<42} | {kill['takeover_s']:>8.2f} s |")
    print(f"| {'new worker: start to job SUCCEEDED':<42} | {kill['rest_s']:>8.2f} s |")
    print(f"| {'rows redone (the shard in flight)':<42} | {kill['rows_redone']:>10,.0f} |")
    print(f"| {'attempts lost':<42} | {kill['lost_attempts']:>10.0f} |")


if __name__ == "__main__":
    main()
