"""Two real ``sluice predict`` processes on one output: the second stops at once (exit 4) naming
the first, nothing of the first run is touched, and a crashed run's lock blocks nobody."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gate_support import Gate, finish, gate_inputs, wait_until
from s3_support import moto_s3
from sluice.batch.layout import OutputLayout
from sluice.batch.outputlock import LOCK, OutputLock
from sluice.data.location import resolve_location
from sluice.errors import OutputInUse
from support import listing

SIZES = (6, 40, 40)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    """The model's gate; whatever the test started is killed at its end."""
    opened = Gate(tmp_path)
    yield opened
    opened.close()


def _args(src: Path, out: Path | str, *extra: str) -> list[str]:
    return [
        "predict", "-m", "gate_model:predict", "-i", str(src), "-o", str(out), "--key-column", "id",
        "--batch-size", "2", "--workers", "2", "-q", *extra,
    ]  # fmt: skip


def _part_columns(out: Path) -> set[tuple[str, ...]]:
    return {tuple(pq.read_schema(p).names) for p in sorted(out.glob("part-*.parquet"))}


@pytest.mark.slow
def test_a_second_run_on_a_busy_output_stops_and_names_the_first(tmp_path: Path, gate: Gate) -> None:
    gate_inputs(tmp_path / "in", SIZES)
    out = tmp_path / "out"
    first = gate.start(_args(tmp_path / "in", out, "--include", "f0"), tmp_path)
    wait_until(gate.held, first, "a held model call")

    second = gate.run(_args(tmp_path / "in", out, "--include", "f1", "--overwrite"), tmp_path)

    assert second.returncode == 4, second.stderr
    assert "Traceback" not in second.stderr
    assert (
        f"error: {out} is being written by another run (pid {first.pid} on host {socket.gethostname()}, started "
        in second.stderr
    )
    assert "wait for it to end, or choose another output directory" in second.stderr
    manifest = json.loads((out / "_sluice_job.json").read_text())
    assert manifest["fingerprint"]["columns"] == ["id", "f0"]  # the first run's, not replaced
    owner = json.loads((out / LOCK).read_text())
    assert owner["pid"] == first.pid

    gate.open()
    code, stderr = finish(first)
    assert code == 0, stderr
    assert _part_columns(out) == {("id", "f0", "prediction")}
    assert LOCK not in listing(out)  # a finished run leaves no lock behind
    assert (out / "_SUCCESS").exists()

    again = gate.run(_args(tmp_path / "in", out, "--include", "f1", "--overwrite"), tmp_path)
    assert again.returncode == 0, again.stderr  # the output is free once the first run ended
    assert _part_columns(out) == {("id", "f1", "prediction")}
    assert json.loads((out / "_sluice_job.json").read_text())["fingerprint"]["columns"] == ["id", "f1"]


@pytest.mark.slow
def test_the_lock_of_a_killed_run_blocks_no_later_run(tmp_path: Path, gate: Gate) -> None:
    tables = gate_inputs(tmp_path / "in", SIZES)
    out = tmp_path / "out"
    args = _args(tmp_path / "in", out, "--include", "f0")
    crashed = gate.start(args, tmp_path)
    wait_until(gate.held, crashed, "a held model call")
    os.killpg(crashed.pid, signal.SIGKILL)
    finish(crashed)
    assert json.loads((out / LOCK).read_text())["pid"] == crashed.pid  # the record stays, the lock does not

    gate.open()
    rerun = gate.run(args, tmp_path)

    assert rerun.returncode == 0, rerun.stderr
    assert LOCK not in listing(out)
    ids = [i for p in sorted(out.glob("part-*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]
    assert ids == [i for t in tables for i in t.column("id").to_pylist()]


def test_a_local_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    root = resolve_location(tmp_path)
    first = OutputLock(root).acquire()
    with pytest.raises(OutputInUse, match=rf"being written by another run \(pid {os.getpid()} on host "):
        OutputLock(root).acquire()
    first.release()
    assert listing(tmp_path) == []
    with OutputLock(root) as second:
        assert second.held
        assert json.loads((tmp_path / LOCK).read_text())["token"] == second.owner["token"]
    assert listing(tmp_path) == []


@pytest.mark.slow
def test_on_an_object_store_the_later_run_takes_over_and_the_earlier_stops(
    tmp_path: Path, gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    with moto_s3(monkeypatch) as server:
        fs = server.filesystem()
        fs.mkdir("out")
        options = [f"--storage-option={k}={v}" for k, v in server.options.items()]
        gate_inputs(tmp_path / "in", SIZES)
        first = gate.start(_args(tmp_path / "in", "s3://out/run", "--include", "f0", *options), tmp_path)
        wait_until(gate.held, first, "a held model call")
        owner = json.loads(fs.cat(f"out/run/{LOCK}"))
        assert owner["pid"] == first.pid

        second = gate.start(
            _args(tmp_path / "in", "s3://out/run", "--include", "f1", "--overwrite", *options), tmp_path
        )
        wait_until(lambda: json.loads(fs.cat(f"out/run/{LOCK}"))["pid"] == second.pid, second, "the take-over")
        gate.open()
        first_code, first_err = finish(first)
        second_code, second_err = finish(second)

        assert first_code == 4, first_err
        assert "Traceback" not in first_err
        assert (
            f"error: s3://out/run was taken over by another run (pid {second.pid} on host {socket.gethostname()}, "
            in " ".join(first_err.split())
        )
        assert second_code == 0, second_err
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("out/run", detail=False))
        assert names == ["_SUCCESS", "_sluice_job.json", "_summary.json"] + [f"part-{i:05d}.parquet" for i in range(3)]
        for i in range(3):
            with fs.open(f"out/run/part-{i:05d}.parquet", "rb") as fh:
                assert pq.read_schema(fh).names == ["id", "f1", "prediction"]  # nothing of the first run's job


def test_an_object_store_claim_is_checked_before_success(monkeypatch: pytest.MonkeyPatch) -> None:
    with moto_s3(monkeypatch) as server:
        fs = server.filesystem()
        fs.mkdir("claims")
        earlier = OutputLayout("s3://claims/run", "parquet", server.options)
        later = OutputLayout("s3://claims/run", "parquet", server.options)
        earlier.claim()
        earlier.check_claim()  # still its own
        later.claim()
        with pytest.raises(OutputInUse, match=r"^s3://claims/run was taken over by another run \(pid "):
            earlier.mark_success()
        assert not fs.exists("claims/run/_SUCCESS")
        earlier.release()  # the lock object is the later run's now: left alone
        assert fs.exists(f"claims/run/{LOCK}")
        later.mark_success()
        later.release()
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("claims/run", detail=False)) == ["_SUCCESS"]
