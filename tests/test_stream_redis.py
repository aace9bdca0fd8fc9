"""Redis Streams as source and sink against a real redis-server: batch-equal, exactly once, consumer-group resume."""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import sluice
from redis_support import RedisServer, start_redis
from sluice.stream.failpoints import POINTS
from stream_support import batch_table, run_stream_process, sink_table
from support import make_table, write_table

SEED = 20261204


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from start_redis(tmp_path)


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def produce(server: RedisServer, stream: str, table: pa.Table, value_field: str | None = None) -> list[str]:
    """XADD one entry per row (fields as text, or one JSON field); returns the entry IDs."""
    client = server.client()
    ids = []
    for row in table.to_pylist():
        fields = {value_field: json.dumps(row)} if value_field else {k: _text(v) for k, v in row.items()}
        ids.append(client.xadd(stream, fields))
    client.close()
    return ids


def expected_predictions(models, table: pa.Table, tmp_path: Path) -> dict[int, tuple[int, list[float]]]:
    """id → (label, probabilities) from a batch run over the same records."""
    write_table(table, tmp_path / "batch-in" / "in.parquet")
    out = batch_table(models.onnx, tmp_path / "batch-in", tmp_path / "batch-out")
    return _by_id(out.to_pylist())


def _by_id(rows: list[dict[str, Any]]) -> dict[int, tuple[int, list[float]]]:
    return {int(r["id"]): (int(r["label"]), list(r["probabilities"])) for r in rows}


def output_entries(server: RedisServer, stream: str) -> list[dict[str, Any]]:
    client = server.client()
    entries = [{k: json.loads(v) if k != "id" else v for k, v in fields.items()} for _, fields in client.xrange(stream)]
    client.close()
    return entries


def test_entry_fields_stream_into_a_directory_as_a_batch_run_predicts(
    redis_server: RedisServer, tmp_path: Path, models
) -> None:
    table = make_table(300).drop_columns(["name"])
    entry_ids = produce(redis_server, "events", table)
    sink = tmp_path / "out"
    summary = sluice.stream(
        str(models.onnx), redis_server.url("events"), str(sink), key_column="id", once=True, batch_size=64
    )
    assert (summary.records, summary.records_failed) == (300, 0)
    got = sink_table(sink)
    assert got.schema.field("id").type == pa.string()  # Redis values are text; the features were parsed
    assert _by_id(got.to_pylist()) == expected_predictions(models, table, tmp_path)
    client = redis_server.client()
    assert client.xpending("events", "sluice")["pending"] == 0  # every entry acknowledged after its commit
    progress = json.loads((sink / "_stream.json").read_text())["progress"]
    assert progress == {"last_id": entry_ids[-1]}
    again = sluice.stream(str(models.onnx), redis_server.url("events"), str(sink), key_column="id", once=True)
    assert again.records == 0  # the consumer group remembers what was read


def test_json_values_into_a_redis_sink_with_bad_records_in_the_error_stream(
    redis_server: RedisServer, tmp_path: Path, models
) -> None:
    table = make_table(50).drop_columns(["name"])
    produce(redis_server, "in", table.slice(0, 20), value_field="v")
    client = redis_server.client()
    bad_json = client.xadd("in", {"v": "{broken"})
    not_object = client.xadd("in", {"v": "[1, 2]"})
    wrong_type = client.xadd("in", {"v": json.dumps({"id": 999, "f0": "abc", "f1": 1, "f2": 2, "f3": 3})})
    no_field = client.xadd("in", {"other": "1"})
    produce(redis_server, "in", table.slice(20), value_field="v")
    options = {"key_column": "id", "value_field": "v", "once": True, "batch_size": 16}
    summary = sluice.stream(str(models.onnx), redis_server.url("in"), redis_server.url("out"), **options)
    assert (summary.records, summary.records_failed) == (50, 4)
    outputs = output_entries(redis_server, "out")
    assert [int(e["id"]) for e in outputs] == list(range(50))
    assert {int(e["id"]): (e["label"], e["probabilities"]) for e in outputs} == expected_predictions(
        models, table, tmp_path
    )
    errors = [fields for _, fields in client.xrange("out:errors")]
    assert [(e["id"], e.get("field"), e.get("key")) for e in errors] == [
        (bad_json, "v", None),
        (not_object, "v", None),
        (wrong_type, "f0", "999"),
        (no_field, "v", None),
    ]
    assert errors[0]["error"].startswith("not valid JSON")
    assert errors[1]["error"] == "expected a JSON object, found list"
    assert errors[2]["error"] == "expected a number, found 'abc'"
    assert errors[3]["error"] == "the entry has no field 'v'; its fields are ['other']"
    progress = json.loads(client.get("out:sluice-progress"))
    assert (progress["records"], progress["records_failed"]) == (50, 4)
    assert json.loads(client.get("out:sluice-metrics"))["records"] == 50


def _args(models, server: RedisServer, source: str = "in", sink: str = "out") -> list[str | Path]:
    return [
        "-m", models.onnx, "--source", server.url(source), "--sink", server.url(sink), "--key-column", "id",
        "--batch-size", "25", "--max-group", "2", "--once", "-q",
    ]  # fmt: skip


TRIALS = 5


@pytest.mark.slow
def test_sigkill_at_every_phase_then_restart_writes_every_entry_once(
    redis_server: RedisServer, tmp_path: Path, models
) -> None:
    """Five seeded trials, each on streams of its own: every phase killed once, three more kills, a restart."""
    table = make_table(600).drop_columns(["name"])  # 24 micro-batches of 25, about 12 groups
    expected = expected_predictions(models, table, tmp_path)
    client = redis_server.client()
    left_pending = []
    for trial in range(TRIALS):
        source, sink = f"in-{trial}", f"out-{trial}"
        produce(redis_server, source, table)
        rng = random.Random(SEED + trial)
        plan = [(point, rng.randint(1, 2)) for point in POINTS]
        rng.shuffle(plan)
        plan += [(rng.choice(POINTS), rng.randint(1, 2)) for _ in range(3)]
        args = _args(models, redis_server, source, sink)
        codes = [run_stream_process(*args, failpoints=f"{p}={n}").returncode for p, n in plan]
        assert codes == [-signal.SIGKILL] * len(plan), (trial, plan)
        left_pending.append(client.xpending(source, "sluice")["pending"])
        done = run_stream_process(*args)
        assert done.returncode == 0, done.stderr
        outputs = output_entries(redis_server, sink)
        assert sorted(int(e["id"]) for e in outputs) == list(range(600)), (trial, plan)  # each once
        assert {int(e["id"]): (e["label"], e["probabilities"]) for e in outputs} == expected, (trial, plan)
        assert client.xpending(source, "sluice")["pending"] == 0
        assert json.loads(client.get(f"{sink}:sluice-progress"))["records"] == 600
    # kills left delivered, unacknowledged entries, which the restarts read first
    assert any(left_pending), left_pending


def test_a_bad_address_is_named(tmp_path: Path, models) -> None:
    with pytest.raises(sluice.errors.ConfigError, match=r"expected redis://HOST:PORT/STREAM"):
        sluice.stream(str(models.onnx), "redis://127.0.0.1:6379", str(tmp_path / "out"), once=True)


def test_reading_stops_at_the_group_in_flight(redis_server: RedisServer, models) -> None:
    """Backpressure: nothing is read ahead of the sink; delivered, unacknowledged entries never exceed a group."""
    produce(redis_server, "in", make_table(1000).drop_columns(["name"]))
    done = run_stream_process(*_args(models, redis_server), failpoints="group.written=3")  # the sink's 3rd commit
    assert done.returncode == -signal.SIGKILL
    client = redis_server.client()
    pending = client.xpending("in", "sluice")["pending"]
    (group,) = client.xinfo_groups("in")
    assert 0 < pending <= 2 * 25  # the third group's entries only: two micro-batches of 25 at most
    assert group["entries-read"] == json.loads(client.get("out:sluice-progress") or "{}").get("records", 0) + pending
    assert group["entries-read"] <= 3 * 2 * 25  # of 1,000 waiting


def test_the_command_reads_json_entries(redis_server: RedisServer, tmp_path: Path, models) -> None:
    produce(redis_server, "in", make_table(30).drop_columns(["name"]), value_field="payload")
    done = run_stream_process(
        "-m", models.onnx, "--source", redis_server.url("in"), "--sink", tmp_path / "out", "--key-column", "id",
        "--value-field", "payload", "--group", "scorers", "--consumer", "c1", "--once", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert (figures["records"], figures["records_failed"], figures["source"]) == (30, 0, redis_server.url("in"))
    assert sorted(int(i) for i in sink_table(tmp_path / "out").column("id").to_pylist()) == list(range(30))
    client = redis_server.client()
    assert [g["name"] for g in client.xinfo_groups("in")] == ["scorers"]
    assert client.xpending("in", "scorers")["pending"] == 0
