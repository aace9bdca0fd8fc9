"""The data layer: JSON Lines encoding, sharding, readers, re-batching, writers and the output layout."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sluice.batch.layout import OutputLayout
from sluice.data.jsonl import encode_jsonl
from sluice.data.location import detect_format, list_inputs, resolve_location
from sluice.data.readers import RecordFailure, SourceBatch, read_shard, rebatch
from sluice.data.shards import _group_row_groups, plan_shards
from sluice.data.writers import AtomicFile, ErrorWriter, PartWriter, flatten_lists
from sluice.errors import DataError, OutputConflict
from support import hidden_files, listing, make_table, read_output, write_table

# -- encode_jsonl ----------------------------------------------------------------------------


def _decode(table: pa.Table) -> list[dict[str, object]]:
    text = encode_jsonl(table).to_pybytes().decode()
    assert text.endswith("\n") or not text
    # Split on "\n" only: JSON Lines records end there, and str.splitlines() also cuts at U+2028.
    return [json.loads(line) for line in text.split("\n")[:-1]]


def test_encode_jsonl_escapes_strings() -> None:
    values = [
        'say "hi"',
        "back\\slash",
        "new\nline\ttab\rcr",
        "bell\x07 nul\x00 unit\x1f",
        "del\x7f é ☃ 🚀 \u2028",
        "",
        None,
    ]
    table = pa.table({"s": pa.array(values, pa.string()), 'we"ird\nname': pa.array(range(7))})
    assert _decode(table) == [{"s": v, 'we"ird\nname': i} for i, v in enumerate(values)]


def test_encode_jsonl_large_string() -> None:
    table = pa.table({"s": pa.array(['a"b', None], pa.large_string())})
    assert _decode(table) == [{"s": 'a"b'}, {"s": None}]


def test_encode_jsonl_floats_round_trip_and_non_finite_is_null() -> None:
    rng = np.random.default_rng(3)
    doubles = np.concatenate([rng.normal(size=50) * 10.0 ** rng.integers(-300, 300, 50), [0.0, -0.0, 1e-310, 5e-324]])
    table = pa.table({"d": pa.array(doubles)})
    assert [r["d"] for r in _decode(table)] == doubles.tolist()
    special = pa.table({"x": pa.array([float("nan"), float("inf"), -float("inf"), None, 1.5])})
    assert _decode(special) == [{"x": None}, {"x": None}, {"x": None}, {"x": None}, {"x": 1.5}]


def test_encode_jsonl_float32_round_trips_as_float32() -> None:
    values = np.random.default_rng(4).normal(size=40).astype(np.float32)
    table = pa.table({"f": pa.array(values)})
    decoded = np.array([r["f"] for r in _decode(table)], dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(decoded, values)


def test_encode_jsonl_ints_bools_nulls() -> None:
    table = pa.table(
        {
            "i": pa.array([-(2**63), 2**63 - 1, None], pa.int64()),
            "u": pa.array([0, 2**64 - 1, 7], pa.uint64()),
            "b": pa.array([True, False, None]),
            "n": pa.nulls(3),
        }
    )
    assert _decode(table) == [
        {"i": -(2**63), "u": 0, "b": True, "n": None},
        {"i": 2**63 - 1, "u": 2**64 - 1, "b": False, "n": None},
        {"i": None, "u": 7, "b": None, "n": None},
    ]


def test_encode_jsonl_lists() -> None:
    table = pa.table(
        {
            "l": pa.array([[1.5, None, float("nan")], [], None, [2.0]], pa.list_(pa.float64())),
            "s": pa.array([["a", 'q"'], None, [], ["\n"]], pa.list_(pa.string())),
            "fixed": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(8, dtype=np.float32)), 2),
            "nested": pa.array([[[1, 2], [3]], [], None, [[]]], pa.list_(pa.list_(pa.int32()))),
        }
    )
    assert _decode(table) == [
        {"l": [1.5, None, None], "s": ["a", 'q"'], "fixed": [0.0, 1.0], "nested": [[1, 2], [3]]},
        {"l": [], "s": None, "fixed": [2.0, 3.0], "nested": []},
        {"l": None, "s": [], "fixed": [4.0, 5.0], "nested": None},
        {"l": [2.0], "s": ["\n"], "fixed": [6.0, 7.0], "nested": [[]]},
    ]


def test_encode_jsonl_sliced_and_chunked_table() -> None:
    table = pa.concat_tables([pa.table({"a": [1, 2, 3], "s": ["x", "y", "z"]})] * 2).slice(2, 3)
    assert _decode(table) == [{"a": 3, "s": "z"}, {"a": 1, "s": "x"}, {"a": 2, "s": "y"}]


def test_encode_jsonl_other_types() -> None:
    table = pa.table(
        {
            "ts": pa.array([0], pa.timestamp("s")),
            "st": pa.array([{"k": 1, "v": "w"}]),
            "dict": pa.array(["cat"]).dictionary_encode(),
        }
    )
    [row] = _decode(table)
    assert row["st"] == {"k": 1, "v": "w"}
    assert row["dict"] == "cat"
    assert row["ts"].startswith("1970-01-01")


def test_encode_jsonl_empty() -> None:
    assert encode_jsonl(pa.table({"a": pa.array([], pa.int64())})).to_pybytes() == b""


# -- shards ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "target", "groups"),
    [
        ([], 10, [((), 0)]),
        ([5], 10, [((0,), 5)]),
        ([10, 10, 10], 10, [((0,), 10), ((1,), 10), ((2,), 10)]),
        ([4, 4, 4, 4, 4], 10, [((0, 1, 2), 12), ((3, 4), 8)]),
        ([30, 1, 1], 10, [((0,), 30), ((1, 2), 2)]),
        ([0, 0, 3], 3, [((0, 1, 2), 3)]),
        ([1, 2, 3], 1, [((0,), 1), ((1,), 2), ((2,), 3)]),
    ],
)
def test_group_row_groups(sizes: list[int], target: int, groups: list[tuple[tuple[int, ...], int]]) -> None:
    assert _group_row_groups(sizes, target) == groups


def test_plan_shards_is_sorted_and_skips_hidden_files(tmp_path: Path) -> None:
    write_table(make_table(3), tmp_path / "b.parquet")
    write_table(make_table(3), tmp_path / "a.csv")
    write_table(make_table(3), tmp_path / "sub" / "c.jsonl")
    write_table(make_table(3), tmp_path / ".hidden.parquet")
    write_table(make_table(3), tmp_path / "_meta.parquet")
    (tmp_path / "notes.txt").write_text("x")
    shards = plan_shards(tmp_path)
    assert [(s.index, Path(s.source).name, s.format) for s in shards] == [
        (0, "a.csv", "csv"),
        (1, "b.parquet", "parquet"),
        (2, "c.jsonl", "jsonl"),
    ]
    assert shards[1].num_rows == 3


def test_plan_shards_splits_parquet_row_groups(tmp_path: Path) -> None:
    pq.write_table(make_table(50), tmp_path / "a.parquet", row_group_size=10)
    shards = plan_shards(tmp_path / "a.parquet", shard_rows=20)
    assert [(s.row_groups, s.first_row, s.num_rows) for s in shards] == [
        ((0, 1), 0, 20),
        ((2, 3), 20, 20),
        ((4,), 40, 10),
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.parquet", ("parquet", None)),
        ("a.PQ", ("parquet", None)),
        ("a.csv.gz", ("csv", "gzip")),
        ("a.ndjson", ("jsonl", None)),
        ("a.json.zst", ("jsonl", "zstd")),
    ],
)
def test_detect_format(name: str, expected: tuple[str, str | None]) -> None:
    assert detect_format(name) == expected


def test_list_inputs_glob(tmp_path: Path) -> None:
    for name in ("x1.csv", "x2.csv", "y.csv"):
        write_table(make_table(1), tmp_path / name)
    assert [Path(loc.path).name for loc in list_inputs(str(tmp_path / "x*.csv"))] == ["x1.csv", "x2.csv"]


# -- readers ---------------------------------------------------------------------------------


def _read(path: Path, columns: list[str], schema: pa.Schema, batch_size: int = 100, **kw: object) -> list[SourceBatch]:
    [shard] = plan_shards(path)
    return list(read_shard(shard, columns=columns, schema=schema, batch_size=batch_size, **kw))


FLOAT_SCHEMA = pa.schema([("id", pa.int64())] + [(f"f{j}", pa.float64()) for j in range(4)])


def test_csv_reader_sets_aside_bad_lines_with_their_record_numbers(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,f0,f1,f2,f3\n0,1,2,3,4\n1,1,2,3\n2,1,2,3,4\n3,1,2,3,4,5\n4,1,2,3,4\n5,x,2,3,4\n6,1,2,3,4\n")
    batches = _read(src, ["id", "f0", "f1", "f2", "f3"], FLOAT_SCHEMA, batch_size=2)
    ids = [i for b in batches for i in b.batch.column("id").to_pylist()]
    rows = [int(r) for b in batches for r in b.rows]
    failures = [f for b in batches for f in b.failures]
    assert ids == [0, 2, 4, 6]
    assert rows == [0, 2, 4, 6]
    assert failures == [
        RecordFailure(1, "expected 5 fields, found 4", line=3),
        RecordFailure(3, "expected 5 fields, found 6", line=5),
        RecordFailure(5, "expected a number, found 'x'", "f0"),
    ]
    assert all(b.batch.num_rows <= 2 for b in batches)


def test_csv_reader_keeps_raw_columns_as_text(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,f0\n0,1.5\n1,abc\n")
    schema = pa.schema([("id", pa.int64()), ("f0", pa.float64())])
    [batch] = _read(src, ["id", "f0"], schema, raw_columns=["f0"])
    assert batch.batch.column("f0").to_pylist() == ["1.5", "abc"]
    assert batch.failures == []


def test_csv_reader_gzip(tmp_path: Path) -> None:
    src = tmp_path / "in.csv.gz"
    src.write_bytes(gzip.compress(b"id,f0,f1,f2,f3\n0,1,2,3,4\n1,5,6,7,8\n"))
    [batch] = _read(src, ["id", "f1"], FLOAT_SCHEMA)
    assert batch.batch.to_pydict() == {"id": [0, 1], "f1": [2.0, 6.0]}


def test_jsonl_reader_sets_aside_bad_lines(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 0, "f0": 1.0}\n\n{"id": 1, "f0": "abc"}\n{broken\n{"id": 3, "f0": 2.5}\n')
    schema = pa.schema([("id", pa.int64()), ("f0", pa.float64())])
    batches = _read(src, ["id", "f0"], schema, key_column="id")
    assert [i for b in batches for i in b.batch.column("id").to_pylist()] == [0, 3]
    assert [int(r) for b in batches for r in b.rows] == [0, 3]
    failures = [f for b in batches for f in b.failures]
    assert [(f.row, f.line, f.field, f.key) for f in failures] == [(1, 3, "f0", 1), (2, 4, None, None)]
    assert "'abc'" in failures[0].message
    assert failures[1].message.startswith("not valid JSON: ")


def test_reader_names_missing_columns(tmp_path: Path) -> None:
    write_table(make_table(2), tmp_path / "in.parquet")
    schema = pq.read_schema(tmp_path / "in.parquet")
    with pytest.raises(DataError) as info:
        _read(tmp_path / "in.parquet", ["id", "zz"], schema)
    assert str(info.value) == (
        f"{tmp_path / 'in.parquet'} has no column 'zz'; its columns are ['id', 'name', 'f0', 'f1', 'f2', 'f3']"
    )


def test_parquet_reader_row_numbers_of_a_split_file(tmp_path: Path) -> None:
    pq.write_table(make_table(30), tmp_path / "a.parquet", row_group_size=10)
    shards = plan_shards(tmp_path / "a.parquet", shard_rows=10)
    schema = pq.read_schema(tmp_path / "a.parquet")
    batches = list(read_shard(shards[1], columns=["id"], schema=schema, batch_size=4))
    assert [b.batch.num_rows for b in batches] == [4, 4, 2]
    assert [int(r) for b in batches for r in b.rows] == list(range(10, 20))
    assert [i for b in batches for i in b.batch.column("id").to_pylist()] == list(range(10, 20))


# -- rebatch ---------------------------------------------------------------------------------


def _source(ids: list[int], rows: list[int], failures: list[RecordFailure] | None = None) -> SourceBatch:
    batch = pa.RecordBatch.from_pydict({"id": pa.array(ids, pa.int64())})
    return SourceBatch(batch, np.array(rows, dtype=np.int64), failures or [])


def test_rebatch_keeps_row_numbers_and_failures() -> None:
    fail_a = RecordFailure(2, "bad a")
    fail_b = RecordFailure(6, "bad b")
    fail_c = RecordFailure(9, "bad c")
    items = [
        _source([0, 1], [0, 1]),
        _source([3, 4, 5], [3, 4, 5], [fail_a]),
        _source([], [], [fail_b]),
        _source([7, 8], [7, 8]),
        _source([], [], [fail_c]),
    ]
    out = list(rebatch(iter(items), 3))
    assert [b.batch.column("id").to_pylist() for b in out] == [[0, 1, 3], [4, 5, 7], [8]]
    assert [b.rows.tolist() for b in out] == [[0, 1, 3], [4, 5, 7], [8]]
    assert [f for b in out for f in b.failures] == [fail_a, fail_b, fail_c]
    assert all(b.batch.num_rows == b.rows.size for b in out)


def test_rebatch_exact_multiple_and_trailing_failures_only() -> None:
    fail = RecordFailure(4, "late")
    out = list(rebatch(iter([_source([0, 1, 2, 3], [0, 1, 2, 3]), _source([], [], [fail])]), 2))
    assert [b.rows.tolist() for b in out] == [[0, 1], [2, 3], []]
    assert [b.failures for b in out] == [[], [], [fail]]


def test_rebatch_splits_large_batches() -> None:
    out = list(rebatch(iter([_source(list(range(10)), list(range(100, 110)))]), 4))
    assert [b.rows.tolist() for b in out] == [[100, 101, 102, 103], [104, 105, 106, 107], [108, 109]]


def test_rebatch_nothing() -> None:
    assert list(rebatch(iter([]), 4)) == []


# -- writers ---------------------------------------------------------------------------------


def test_atomic_file_visible_only_on_commit(tmp_path: Path) -> None:
    target = resolve_location(str(tmp_path / "x.txt"))
    f = AtomicFile(target)
    f.open().write(b"hello")
    assert listing(tmp_path) != ["x.txt"]
    assert not (tmp_path / "x.txt").exists()
    assert len(hidden_files(tmp_path)) == 1
    f.commit()
    assert listing(tmp_path) == ["x.txt"]
    assert (tmp_path / "x.txt").read_bytes() == b"hello"


def test_atomic_file_abort_leaves_nothing(tmp_path: Path) -> None:
    f = AtomicFile(resolve_location(str(tmp_path / "x.txt")))
    f.open().write(b"half")
    f.abort()
    assert listing(tmp_path) == []


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_part_writer_round_trip(tmp_path: Path, fmt: str) -> None:
    table = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "p": pa.array([0.5, 0.25, 0.125])})
    writer = PartWriter(resolve_location(str(tmp_path / f"part.{fmt}")), fmt)  # type: ignore[arg-type]
    writer.write(table.slice(0, 2))
    writer.write(table.slice(2))
    writer.commit(table.schema)
    assert listing(tmp_path) == [f"part.{fmt}"]
    assert read_output(tmp_path / f"part.{fmt}").to_pydict() == table.to_pydict()


def test_part_writer_empty_parts(tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64()), ("p", pa.list_(pa.float32(), 2))])
    for fmt in ("parquet", "csv", "jsonl"):
        writer = PartWriter(resolve_location(str(tmp_path / f"part.{fmt}")), fmt)  # type: ignore[arg-type]
        writer.commit(schema)
    assert pq.read_table(tmp_path / "part.parquet").schema == schema
    assert (tmp_path / "part.csv").read_text() == '"id","p_0","p_1"\n'
    assert (tmp_path / "part.jsonl").read_bytes() == b""


def test_flatten_lists() -> None:
    table = pa.table(
        {
            "id": [1],
            "fixed": pa.FixedSizeListArray.from_arrays(pa.array([0.5, 1.5], pa.float32()), 2),
            "var": pa.array([[1, 2]], pa.list_(pa.int64())),
        }
    )
    flat = flatten_lists(table)
    assert flat.column_names == ["id", "fixed_0", "fixed_1", "var"]
    assert flat.to_pylist() == [{"id": 1, "fixed_0": 0.5, "fixed_1": 1.5, "var": "[1,2]"}]


def test_error_writer_only_creates_a_file_with_errors(tmp_path: Path) -> None:
    empty = ErrorWriter(resolve_location(str(tmp_path / "errors-00000.jsonl")))
    empty.write([])
    empty.commit()
    assert listing(tmp_path) == []
    writer = ErrorWriter(resolve_location(str(tmp_path / "errors-00001.jsonl")))
    writer.write([{"source": "s", "row": 1, "field": None, "error": 'bad "x"\n'}])
    writer.write([{"source": "s", "row": 2, "field": "f", "error": "nan", "key": math.pi}])
    writer.commit()
    assert writer.count == 2
    lines = (tmp_path / "errors-00001.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"source": "s", "row": 1, "field": None, "error": 'bad "x"\n'},
        {"source": "s", "row": 2, "field": "f", "error": "nan", "key": math.pi},
    ]


# -- output layout -----------------------------------------------------------------------------


def test_layout_prepare_reports_complete_parts(tmp_path: Path) -> None:
    layout = OutputLayout(str(tmp_path / "out"), "parquet")
    fingerprint = {"model": "m", "shards": [1, 2, 3]}
    assert layout.prepare(fingerprint, overwrite=False) == set()
    assert listing(tmp_path / "out") == ["_sluice_job.json"]
    (tmp_path / "out" / "part-00000.parquet").write_bytes(b"x")
    (tmp_path / "out" / "part-00002.parquet").write_bytes(b"x")
    (tmp_path / "out" / "part-00001.csv").write_bytes(b"x")
    (tmp_path / "out" / "_SUCCESS").write_bytes(b"")
    assert layout.prepare(fingerprint, overwrite=False) == {0, 2}
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    with pytest.raises(OutputConflict):
        layout.prepare({"model": "other"}, overwrite=False)
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert layout.prepare({"model": "other"}, overwrite=True) == set()
    assert listing(tmp_path / "out") == ["_sluice_job.json", "keep.txt"]
