"""An output that cannot be written is one message naming the path and the problem (exit 2, no
traceback), found before any work where it can be, and nothing already there is lost."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from sluice.data.writers import check_writable
from sluice.errors import ConfigError
from support import hidden_files, invoke, listing, make_table, write_table

ROOT = os.geteuid() == 0
ROWS = 20_000


def _predict(models: Any, src: Path, out: Path, *extra: str) -> Any:
    return invoke(
        "predict", "-m", models.onnx, "-i", src, "-o", out, "--key-column", "id", "--batch-size", "500", "-q", *extra
    )


def _message(result: Any) -> str:
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return " ".join(result.output.split())  # one line, however the console wrapped it


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    for i in range(3):
        write_table(make_table(2_000, start=10_000 * i), tmp_path / "in" / f"in-{i}.parquet")
    return tmp_path / "in"


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Any]:
    """Mounts a tmpfs of a given size (root only); every mount is undone at the end."""
    mounted: list[Path] = []

    def mount(name: str, *options: str) -> Path:
        if not ROOT or shutil.which("mount") is None:
            pytest.skip("a small or read-only filesystem needs root to mount a tmpfs")
        where = tmp_path / name
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(where)], check=False)
        if done.returncode != 0:
            pytest.skip("mounting a tmpfs is not permitted here")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "--lazy", str(where)], check=True)  # lazy: a failed test may hold a file open


def _remount(where: Path, *options: str) -> None:
    subprocess.run(["mount", "-o", ",".join(["remount", *options]), str(where)], check=True)


def test_output_path_is_a_file(tmp_path: Path, models: Any, inputs: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("keep me\n")
    result = _predict(models, inputs, target)
    assert result.exit_code == 2
    assert f"error: the output {target} is a file; name a directory, which will hold the parts" in _message(result)
    assert target.read_text() == "keep me\n"


def test_output_inside_a_file(tmp_path: Path, models: Any, inputs: Path) -> None:
    (tmp_path / "a").write_text("keep me\n")
    result = _predict(models, inputs, tmp_path / "a" / "b" / "out")
    assert result.exit_code == 2
    assert f"error: cannot create the output directory {tmp_path}/a/b/out: {tmp_path}/a is a file" in _message(result)
    assert (tmp_path / "a").read_text() == "keep me\n"


def test_read_only_output_keeps_what_it_holds(tmp_path: Path, models: Any, inputs: Path, mount_tmpfs: Any) -> None:
    if ROOT:  # root writes through file modes: only a read-only filesystem stops it
        out = mount_tmpfs("ro", "size=4m")
        assert _predict(models, inputs, out).exit_code == 0
        _remount(out, "ro")
        problem = "the filesystem is read-only"
    else:
        out = tmp_path / "ro"
        assert _predict(models, inputs, out).exit_code == 0
        out.chmod(0o555)
        problem = "permission denied"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    result = _predict(models, inputs, out, "--overwrite")

    assert result.exit_code == 2
    assert f"error: cannot write {out}/_sluice_lock: {problem}; choose a writable output location" in _message(result)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_new_output_on_a_read_only_filesystem(models: Any, inputs: Path, mount_tmpfs: Any) -> None:
    where = mount_tmpfs("rofs", "ro", "size=1m")
    result = _predict(models, inputs, where / "out")
    assert result.exit_code == 2
    assert (
        f"error: cannot write {where}/out: the filesystem is read-only; choose a writable output location"
        in _message(result)
    )


def test_disk_full_stops_with_a_message_and_the_run_resumes(tmp_path: Path, models: Any, mount_tmpfs: Any) -> None:
    for i in range(3):  # about 1 MB of CSV each
        write_table(make_table(ROWS, start=100_000 * i), tmp_path / "big" / f"in-{i}.parquet")
    out = mount_tmpfs("small", "size=256k") / "out"  # room for the manifest, not for a part

    result = _predict(models, tmp_path / "big", out, "--output-format", "csv")

    assert result.exit_code == 2
    assert re.search(
        rf"error: cannot write {out}/part-0000[0-2]\.csv: no space left on the device \(the disk is full\); "
        "completed parts are kept: free some space and run the same command again to resume",
        _message(result),
    )
    assert hidden_files(out) == []  # the unfinished part's temporary file is gone
    kept = listing(out)
    assert "_SUCCESS" not in kept and "_sluice_lock" not in kept
    _remount(out.parent, "size=16m")
    rerun = _predict(models, tmp_path / "big", out, "--output-format", "csv")
    assert rerun.exit_code == 0, rerun.output
    ids = [i for p in sorted(out.glob("part-*.csv")) for i in pacsv.read_csv(p).column("id").to_pylist()]
    assert ids == [100_000 * f + r for f in range(3) for r in range(ROWS)]


def test_input_inside_the_output_is_refused_before_anything_is_deleted(tmp_path: Path, models: Any) -> None:
    data = tmp_path / "data"
    # an earlier Sluice output used as input: its part would be one of the files --overwrite removes
    write_table(make_table(20), data / "part-00000.parquet")
    write_table(make_table(20, start=100), data / "more.parquet")
    before = {p.name: p.read_bytes() for p in data.iterdir()}

    for args in ((data, data, "--overwrite"), (data / "more.parquet", data), (data, data)):
        result = _predict(models, *args)
        assert result.exit_code == 2
        assert re.search(
            rf"error: the input file {data}/(more|part-00000)\.parquet is inside the output directory {data}; "
            r"the output would replace or mix with the input \(--overwrite deletes such files\)\. "
            "Choose an output directory outside the input",
            _message(result),
        ), result.output
        assert {p.name: p.read_bytes() for p in data.iterdir()} == before


def test_struct_and_map_columns_are_json_text_in_csv(tmp_path: Path, models: Any) -> None:
    table = make_table(3)
    table = table.append_column("meta", pa.array([{"a": i, "b": "x"} for i in range(3)]))
    table = table.append_column("tags", pa.array([[("k", i)] for i in range(3)], pa.map_(pa.string(), pa.int64())))
    write_table(table, tmp_path / "in" / "in.parquet")
    out = tmp_path / "out"

    result = _predict(models, tmp_path / "in", out, "--include", "meta,tags", "--output-format", "csv")

    assert result.exit_code == 0, result.output
    part = pacsv.read_csv(out / "part-00000.csv")
    assert part.column("meta").to_pylist() == [f'{{"a": {i}, "b": "x"}}' for i in range(3)]
    assert part.column("tags").to_pylist() == [f'[["k", {i}]]' for i in range(3)]


def test_a_column_csv_cannot_hold_is_refused_by_name() -> None:
    union = pa.dense_union([pa.field("n", pa.int64()), pa.field("s", pa.string())])
    schema = pa.schema([("id", pa.int64()), ("u", union), ("p", pa.list_(pa.float32(), 2))])
    with pytest.raises(ConfigError) as caught:
        check_writable(schema, "csv")
    assert str(caught.value) == (
        "CSV output cannot hold the column(s) 'u' (dense_union<n: int64=0, s: string=1>); write Parquet or "
        "JSON Lines output instead, or leave the column(s) out with `exclude` or `include`"
    )
    check_writable(schema, "parquet")  # the other formats take any Arrow type
