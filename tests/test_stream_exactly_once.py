"""Exactly once across SIGKILL at every commit phase, and SIGTERM finishing the group in flight.

Real `sluice stream` processes; a failpoint SIGKILLs the process at an exact phase of a group;
the restarted stream must leave every source record in the sink once, with the batch run's prediction.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sluice.errors import ConfigError
from sluice.stream.failpoints import POINTS, StreamFailpoints
from stream_support import (
    batch_table,
    error_records,
    land,
    land_files,
    manifest,
    run_stream_process,
    sink_table,
    stream_command,
    stream_env,
)
from support import listing, make_table

SEED = 20261203
FILES, ROWS = 8, 120  # 25 micro-batches of 40, about 13 groups: more than the kills use up


def _source_with_a_bad_record(source: Path) -> None:
    land_files(source, FILES, ROWS)
    rows = make_table(5, start=10_000).to_pylist()
    rows[2]["f1"] = "oops"
    lines = [json.dumps(r) for r in rows]
    source.joinpath("in-zz.jsonl").write_text("\n".join(lines) + "\n")


def _args(models, source: Path, sink: Path) -> list[str | Path]:
    # 40-row micro-batches, at most 2 per group: each file spans several groups, so kills land mid-file
    return [
        "-m", models.onnx, "--source", source, "--sink", sink, "--key-column", "id", "--batch-size", "40",
        "--max-group", "2", "--once", "-q",
    ]  # fmt: skip


def _assert_exactly_once(sink: Path, models, source: Path, tmp_path: Path) -> None:
    got = sink_table(sink)
    expected = batch_table(models.onnx, source, tmp_path / "batch")
    assert got.num_rows == FILES * ROWS + 4
    assert got.equals(expected)
    errors = error_records(sink)
    assert [(e["source"], e["row"], e["key"], e["field"]) for e in errors] == [
        (str(source / "in-zz.jsonl"), 2, 10_002, "f1")
    ]
    assert errors == error_records(tmp_path / "batch")  # the batch run's error record, word for word
    written = manifest(sink)
    assert (written["records"], written["records_failed"]) == (FILES * ROWS + 4, 1)
    assert sorted(p.name for p in sink.glob("part-*.parquet")) == [
        f"part-{i:05d}.parquet" for i in range(written["groups"])
    ]
    assert listing(sink / "_pending") == []


def _kill_plan(rng: random.Random) -> list[tuple[str, int]]:
    """Every phase once at a seeded visit, then three more seeded kills."""
    plan = [(point, rng.randint(1, 2)) for point in POINTS]
    rng.shuffle(plan)
    return plan + [(rng.choice(POINTS), rng.randint(1, 2)) for _ in range(3)]


TRIALS = 5


@pytest.mark.slow
def test_sigkill_at_every_phase_then_restart_gives_every_record_once(tmp_path: Path, models) -> None:
    """Five seeded trials, each in a folder of its own and checked against a batch run of its records."""
    for trial in range(TRIALS):
        work = tmp_path / f"trial-{trial}"
        source, sink = work / "in", work / "out"
        _source_with_a_bad_record(source)
        killed = []
        for point, visit in _kill_plan(random.Random(SEED + trial)):
            done = run_stream_process(*_args(models, source, sink), failpoints=f"{point}={visit}")
            killed.append((point, done.returncode))
        assert [code for _, code in killed] == [-signal.SIGKILL] * len(killed), (trial, killed)
        done = run_stream_process(*_args(models, source, sink))
        assert done.returncode == 0, done.stderr
        _assert_exactly_once(sink, models, source, work)


@pytest.mark.slow
def test_sigkill_between_the_manifest_and_the_part_rolls_the_part_forward(tmp_path: Path, models) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    _source_with_a_bad_record(source)
    done = run_stream_process(*_args(models, source, sink), failpoints="group.committed=1")
    assert done.returncode == -signal.SIGKILL
    assert manifest(sink)["groups"] == 1
    assert listing(sink / "_pending") == ["part-00000.parquet"]  # committed, not yet in place
    assert list(sink.glob("part-*")) == []  # readers never saw it half-committed
    done = run_stream_process(*_args(models, source, sink))
    assert done.returncode == 0, done.stderr
    _assert_exactly_once(sink, models, source, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_commits_the_group_in_flight_and_exits_0(tmp_path: Path, models, stop: signal.Signals) -> None:
    source, sink = tmp_path / "in", tmp_path / "out"
    land_files(source, 2, ROWS)
    args = ["-m", models.onnx, "--source", source, "--sink", sink, "--key-column", "id", "--poll-interval-ms", "10"]
    proc = subprocess.Popen(
        stream_command(*args), env=stream_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_until(lambda: (sink / "_stream.json").exists() and manifest(sink)["records"] == 2 * ROWS, proc)
        land(make_table(ROWS, start=5000), source, "in-late.parquet")  # lands while the stream runs
        _wait_until(lambda: manifest(sink)["records"] == 3 * ROWS, proc)
        proc.send_signal(stop)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "records 360" in stderr  # the last status line
    assert sink_table(sink).equals(batch_table(models.onnx, source, tmp_path / "batch"))
    assert listing(sink / "_pending") == []


def _wait_until(condition, proc: subprocess.Popen[str], deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"sluice stream exited with {proc.returncode}: {proc.communicate()}")
        time.sleep(0.02)
    pytest.fail("the stream did not get there in time")


def test_failpoints_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"unknown failpoint\(s\) \['group.nope'\]; known: group.read"):
        StreamFailpoints({"group.nope": 1})
