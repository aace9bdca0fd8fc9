"""Several consumers of one Redis consumer group: the stream shared, a dead one's entries claimed, exactly once.

Real redis-server and real `sluice stream` processes. The commit of a Redis sink on the source's
server is one script that checks ownership, writes the outputs and acknowledges the entries.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import sluice
from redis_support import RedisServer, start_redis
from sluice.stream import StreamSpec
from sluice.stream.failpoints import StreamFailpoints
from sluice.stream.redis_sink import RedisSink
from sluice.stream.redis_source import Delivery
from sluice.stream.sources import GroupLost
from stream_support import run_stream_process, stream_command, stream_env
from support import make_table, write_module
from test_stream_redis import expected_predictions, output_entries, produce

ROWS = 1200


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from start_redis(tmp_path)


def _consumer(models: Any, server: RedisServer, name: str, failpoints: str | None = None) -> subprocess.Popen[str]:
    args = [
        "-m", models.onnx, "--source", server.url("in"), "--sink", server.url("out"), "--key-column", "id",
        "--batch-size", "20", "--max-group", "2", "--poll-interval-ms", "20", "--consumer", name,
        "--claim-idle-ms", "3000", "-q",
    ]  # fmt: skip
    return subprocess.Popen(
        stream_command(*args), env=stream_env(failpoints), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_until(condition: Callable[[], bool], procs: list[subprocess.Popen[str]], deadline_s: float = 120) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"a consumer exited with {proc.returncode}: {proc.communicate()}")
        time.sleep(0.02)
    pytest.fail("the consumers did not get there in time")


def _produce_slowly(server: RedisServer, table: pa.Table, per_s: float) -> threading.Thread:
    """XADD the rows at about ``per_s`` entries a second, in a thread, as a live producer does."""

    def run() -> None:
        step = 20
        for start in range(0, table.num_rows, step):
            produce(server, "in", table.slice(start, step))
            time.sleep(step / per_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_two_consumers_share_the_stream_and_a_killed_ones_entries_are_claimed(
    redis_server: RedisServer, tmp_path: Path, models: Any
) -> None:
    client = redis_server.client()
    client.xgroup_create("in", "sluice", id="0", mkstream=True)
    doomed = _consumer(models, redis_server, "a", failpoints="group.written=4")  # SIGKILL in its 4th commit
    survivor = _consumer(models, redis_server, "b")
    try:
        joined = lambda: {c["name"] for c in client.xinfo_consumers("in", "sluice")} == {"a", "b"}  # noqa: E731
        _wait_until(joined, [doomed, survivor])
        table = make_table(ROWS).drop_columns(["name"])
        producer = _produce_slowly(redis_server, table, per_s=400)
        doomed.communicate(timeout=120)
        assert doomed.returncode == -signal.SIGKILL
        held = client.xpending_range("in", "sluice", min="-", max="+", count=ROWS, consumername="a")
        producer.join(timeout=120)
        done = lambda: client.xlen("out") >= ROWS and client.xpending("in", "sluice")["pending"] == 0  # noqa: E731
        _wait_until(done, [survivor])
        survivor.send_signal(signal.SIGTERM)
        _, stderr = survivor.communicate(timeout=60)
    finally:
        for proc in (doomed, survivor):
            proc.kill()
            proc.communicate()
    assert survivor.returncode == 0, stderr
    assert len(held) > 0  # the killed consumer died holding delivered, uncommitted entries
    outputs = output_entries(redis_server, "out")
    assert sorted(int(e["id"]) for e in outputs) == list(range(ROWS))  # each once
    expected = expected_predictions(models, table, tmp_path)
    assert {int(e["id"]): e["label"] for e in outputs} == {i: label for i, (label, _) in expected.items()}
    # a live producer makes micro-batches of one entry, and ONNX Runtime's one-row kernel may
    # round a probability to the neighbouring float32: equal to the batch run within that
    assert {int(e["id"]): pytest.approx(e["probabilities"], rel=0, abs=2.5e-7) for e in outputs} == {
        i: probabilities for i, (_, probabilities) in expected.items()
    }
    progress = json.loads(client.get("out:sluice-progress"))
    assert (progress["records"], progress["records_failed"]) == (ROWS, 0)  # both consumers' commits added up
    pending = {c["name"]: c["pending"] for c in client.xinfo_consumers("in", "sluice")}
    assert pending == {"a": 0, "b": 0}


def _sink(server: RedisServer, models: Any, delivery: Callable[[], Delivery]) -> RedisSink:
    spec = StreamSpec.build(model=str(models.onnx), source=server.url("in"), sink=server.url("out"), consumer="a")
    sink = RedisSink(spec, StreamFailpoints({}), delivery)
    sink.open({"model": "m"}, overwrite=False)
    return sink


def test_a_group_whose_entries_were_claimed_away_is_not_committed(redis_server: RedisServer, models: Any) -> None:
    client = redis_server.client()
    produce(redis_server, "in", make_table(10).drop_columns(["name"]))
    client.xgroup_create("in", "sluice", id="0")
    ids = [entry_id for entry_id, _ in client.xreadgroup("sluice", "a", {"in": ">"})[0][1]]
    client.xclaim("in", "sluice", "b", 0, ids[3:6], justid=True)  # "a" was slow; "b" took three
    delivery = Delivery("in", "sluice", "a", tuple(ids))
    sink = _sink(redis_server, models, lambda: delivery)
    outputs = pa.table({"id": [str(i) for i in range(10)], "label": list(range(10))})
    group = sink.begin()
    group.write(outputs, [])
    with pytest.raises(GroupLost, match=r"in: another consumer of 'sluice' claimed entries of the group"):
        sink.commit(group, {"last_id": ids[-1]}, 0, outputs.schema)
    assert (client.xlen("out"), client.get("out:sluice-progress")) == (0, None)  # nothing of the group
    assert client.xpending("in", "sluice")["consumers"] == [{"name": "a", "pending": 7}, {"name": "b", "pending": 3}]
    kept = [i for i in ids if i not in ids[3:6]]
    delivery = Delivery("in", "sluice", "a", tuple(kept))
    group = sink.begin()
    group.write(outputs.slice(0, 7), [])
    committed = sink.commit(group, {"last_id": ids[-1]}, 0, outputs.schema)
    assert (committed.groups, committed.records) == (1, 7)
    assert [fields["id"] for _, fields in client.xrange("out")] == [str(i) for i in range(7)]
    assert client.xpending("in", "sluice")["consumers"] == [{"name": "b", "pending": 3}]  # acknowledged in the commit
    state = json.loads(client.get("out:sluice-progress"))
    assert state == {
        "fingerprint": {"model": "m"},
        "groups": 1,
        "records": 7,
        "records_failed": 0,
        "progress": {"last_id": ids[-1], "consumer": "a"},
    }
    sink.close()


def test_claims_need_a_redis_sink_on_the_source_server(redis_server: RedisServer, tmp_path: Path, models: Any) -> None:
    message = (
        "claiming another consumer's entries (`claim_idle_ms`) needs a Redis sink on the source's server "
        f"(found source {redis_server.url('in')}, sink {tmp_path / 'out'})"
    )
    with pytest.raises(sluice.errors.ConfigError, match="^" + re.escape(message)):
        sluice.stream(str(models.onnx), redis_server.url("in"), str(tmp_path / "out"), claim_idle_ms=1000, once=True)
    done = run_stream_process(
        "-m", models.onnx, "--source", redis_server.url("in"), "--sink", tmp_path / "out", "--claim-idle-ms", "1000",
        "--once",
    )  # fmt: skip
    assert done.returncode == 2
    assert "claiming another consumer's entries (--claim-idle-ms) needs a Redis sink" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_position_committed_before_commits_acknowledged_still_skips_its_entries(
    redis_server: RedisServer, models: Any
) -> None:
    """A stream committed by a Sluice that acknowledged after the commit, and stopped between the two, goes on right."""
    table = make_table(20).drop_columns(["name"])
    produce(redis_server, "in", table.slice(0, 10))
    options = {"key_column": "id", "once": True}
    sluice.stream(str(models.onnx), redis_server.url("in"), redis_server.url("out"), **options)
    client = redis_server.client()
    ids = produce(redis_server, "in", table.slice(10))
    client.xreadgroup("sluice", "sluice-1", {"in": ">"})  # delivered, never acknowledged
    state = json.loads(client.get("out:sluice-progress"))
    state["progress"] = {"last_id": ids[4]}  # that Sluice's position: 5 of them committed, then the crash
    client.set("out:sluice-progress", json.dumps(state))
    summary = sluice.stream(str(models.onnx), redis_server.url("in"), redis_server.url("out"), **options)
    assert summary.records == 5
    assert [int(e["id"]) for e in output_entries(redis_server, "out")] == [*range(10), *range(15, 20)]
    assert client.xpending("in", "sluice")["pending"] == 0
    assert json.loads(client.get("out:sluice-progress"))["progress"] == {"last_id": ids[-1], "consumer": "sluice-1"}


STALL_MODULE = """
import os, time

def predict(x):
    marker = os.environ.get("STALL_MARKER")
    if marker and not os.path.exists(marker):  # the first call of the consumer told to stall
        open(marker, "w").close()
        time.sleep(float(os.environ["STALL_S"]))
    return x.sum(axis=1)
"""
LOST = "another consumer of 'sluice' claimed entries of the group; the group is dropped"


@pytest.mark.slow
def test_a_consumer_too_slow_for_its_group_loses_it_and_the_claimer_commits_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    write_module(tmp_path / "models", "stall", STALL_MODULE)
    produce(redis_server, "in", make_table(40).drop_columns(["name"]))
    client = redis_server.client()
    client.xgroup_create("in", "sluice", id="0")

    def start(name: str, **env: str) -> subprocess.Popen[str]:
        args = [
            "-m", "stall:predict", "--source", redis_server.url("in"), "--sink", redis_server.url("out"),
            "--key-column", "id", "--features", "f0,f1,f2,f3", "--batch-size", "20", "--max-group", "1",
            "--consumer", name, "--claim-idle-ms", "1000", "--poll-interval-ms", "20", "-q",
        ]  # fmt: skip
        environment = {**stream_env(), **env}
        environment["PYTHONPATH"] += os.pathsep + str(tmp_path / "models")
        with (tmp_path / f"{name}.err").open("w") as err:
            return subprocess.Popen(stream_command(*args), env=environment, stderr=err, text=True)

    marker = tmp_path / "stalled"
    slow = start("slow", STALL_MARKER=str(marker), STALL_S="10")
    quick = None
    try:
        _wait_until(marker.exists, [slow])  # "slow" holds its first 20 entries and sleeps on them
        quick = start("quick")
        _wait_until(lambda: LOST in (tmp_path / "slow.err").read_text(), [slow, quick])  # it woke and lost them
        _wait_until(lambda: client.xlen("out") >= 40 and client.xpending("in", "sluice")["pending"] == 0, [slow, quick])
        for proc in (slow, quick):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    finally:
        for proc in (slow, quick):
            if proc is not None:
                proc.kill()
                proc.wait()
    errors = {name: (tmp_path / f"{name}.err").read_text() for name in ("slow", "quick")}
    assert (slow.returncode, quick.returncode) == (0, 0), errors
    assert "Traceback" not in errors["slow"] + errors["quick"]
    outputs = [fields for _, fields in client.xrange("out")]
    assert sorted(int(e["id"]) for e in outputs) == list(range(40))  # the lost group is in the sink once
    assert json.loads(client.get("out:sluice-progress"))["records"] == 40
