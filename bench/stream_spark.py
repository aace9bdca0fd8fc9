"""The directory-source comparison of `bench/stream_latency.py --directory`: `sluice stream` beside Spark
Structured Streaming on the same files, the same model and the same latency definition.

A producer process lands a Parquet file every ``file_ms`` (written under a hidden name, then
renamed, so neither reader sees half a file) with the rate's share of records. Latency of a
record: its file's modification time to the commit of its group (Sluice: the manifest's rename;
Spark: the end of the ``foreachBatch`` that writes its micro-batch). Each side first processes a
warm-up file (the model loaded, Spark's Python workers started), which the figures leave out.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sluice.demo import FEATURES, feature_names
from sluice.metrics import LatencyHistogram
from sluice.stream import StreamRunner, StreamSpec

DRAIN_LIMIT_S = 60.0
SUSTAINED_DRAIN_S = 2.0  # a rate is sustained when the last record commits this soon after the producer stops
WARM_UP_ROWS = 500
WARM_UP_FILES = 2  # one at a time: Spark's first micro-batches still pay for JIT compilation


@dataclass(frozen=True)
class Cell:
    sent: int
    offered_per_s: float
    done_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    drain_s: float
    note: str

    @property
    def sustained(self) -> bool:
        return self.drain_s <= SUSTAINED_DRAIN_S


def _table(start: int, rows: int) -> pa.Table:
    rng = np.random.default_rng([7, abs(start)])  # the warm-up files have ids below 0
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    columns = {"id": pa.array(np.arange(start, start + rows, dtype=np.int64))}
    columns.update({name: pa.array(x[:, j]) for j, name in enumerate(feature_names())})
    return pa.table(columns)


def _land(directory: Path, name: str, table: pa.Table) -> None:
    hidden = directory / f".{name}.tmp"
    pq.write_table(table, hidden)
    os.replace(hidden, directory / name)


def land_files(directory: str, rate: int, seconds: float, file_ms: float, out: multiprocessing.Queue) -> None:
    """Land ``rate * file_ms / 1000`` records every ``file_ms`` for ``seconds``; report (sent, seconds, start)."""
    per_file = max(1, round(rate * file_ms / 1000))
    tick_s = file_ms / 1000
    sent, index = 0, 0
    started_at = time.time()
    start = time.perf_counter()
    next_tick = start
    while time.perf_counter() - start < seconds:
        _land(Path(directory), f"f-{index:06d}.parquet", _table(sent, per_file))
        sent += per_file
        index += 1
        next_tick += tick_s
        if (wait := next_tick - time.perf_counter()) > 0:
            time.sleep(wait)
    out.put((sent, time.perf_counter() - start, started_at))


def _produce(directory: Path, rate: int, seconds: float, file_ms: float) -> tuple[int, float, float, float]:
    """Run the producer to its end: (records sent, seconds it took, wall time it started, wall time it stopped)."""
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    producer = context.Process(target=land_files, args=(str(directory), rate, seconds, file_ms, queue))
    producer.start()
    sent, produce_s, started_at = queue.get(timeout=seconds + 60)
    stopped_at = time.time()
    producer.join()
    return sent, produce_s, started_at, stopped_at


def _warm_up(source: Path, committed: Any) -> None:
    """Land the warm-up files one at a time, each once the one before it is committed (ids below 0)."""
    for i in range(WARM_UP_FILES):
        _land(source, f"0-warmup-{i}.parquet", _table(-WARM_UP_ROWS * (i + 1), WARM_UP_ROWS))
        _wait(lambda i=i: committed() >= i + 1, DRAIN_LIMIT_S)


def _wait(condition: Any, deadline_s: float) -> None:
    end = time.perf_counter() + deadline_s
    while not condition() and time.perf_counter() < end:
        time.sleep(0.005)


# -- sluice stream -----------------------------------------------------------------------------------


def run_sluice(model: str, rate: int, seconds: float, file_ms: float) -> Cell:
    """`sluice stream` from a directory into a directory, in this process."""
    with tempfile.TemporaryDirectory() as scratch:
        source, sink = Path(scratch, "in"), Path(scratch, "out")
        source.mkdir()
        spec = StreamSpec.build(
            model=model, source=str(source), sink=str(sink), key_column="id", features=feature_names(),
            batch_size=4096, poll_interval_ms=5, target_latency_ms=100, intra_op_threads=1,
        )  # fmt: skip
        stop = threading.Event()
        runner = StreamRunner(spec, stop=stop)
        thread = threading.Thread(target=runner.run, daemon=True)
        thread.start()
        _wait(lambda: runner.metrics is not None, DRAIN_LIMIT_S)
        metrics = runner.metrics
        assert metrics is not None
        _warm_up(source, lambda: metrics.records // WARM_UP_ROWS)
        warm = metrics.records
        metrics.latency = LatencyHistogram()  # the figures start after the warm-up files
        sent, produce_s, began, stopped = _produce(source, rate, seconds, file_ms)
        _wait(lambda: metrics.records >= warm + sent, DRAIN_LIMIT_S)
        done = time.time()
        stop.set()
        thread.join(timeout=30)
        latency = metrics.latency.percentiles_ms((50, 99))
        return Cell(
            sent, sent / produce_s, (metrics.records - warm) / (done - began),
            latency["p50"], latency["p99"], done - stopped, f"group {metrics.group_size}",
        )  # fmt: skip


# -- Spark Structured Streaming ----------------------------------------------------------------------

_MODELS: dict[str, Any] = {}


def predict_partition(model_path: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The ``mapInArrow`` function: the same model through Sluice's in-memory prediction, loaded once per worker."""
    import sluice
    from sluice.models.config import LoadOptions

    model = _MODELS.get(model_path)
    if model is None:
        model = _MODELS[model_path] = sluice.load_model(model_path, options=LoadOptions(intra_op_threads=1))
    for batch in batches:
        if not batch.num_rows:
            continue
        (out,) = sluice.predict_batches(model, batch, batch_size=max(batch.num_rows, 1), features=feature_names())
        p1 = pc.list_element(out.column("probabilities"), 1)  # both models end in two probabilities
        yield pa.RecordBatch.from_arrays(
            [batch.column("id"), batch.column("arrived_s"), p1], names=["id", "arrived_s", "p1"]
        )


class SparkSide:
    """One local Spark session for every rate; one streaming query per cell."""

    def __init__(self) -> None:
        from pyspark import cloudpickle

        from sluice.backends.spark import start_session

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import bench/
        self.session = start_session("local[2]")
        self.session.conf.set("spark.sql.shuffle.partitions", "2")

    def close(self) -> None:
        from sluice.backends.spark import stop_session

        stop_session(self.session)

    def run(self, model: str, rate: int, seconds: float, file_ms: float) -> Cell:
        """The file source → mapInArrow → foreachBatch, default trigger (each micro-batch as soon as the last ends)."""
        import functools

        from pyspark.sql import functions as F
        from pyspark.sql.types import FloatType, LongType, StructField, StructType

        schema = StructType([StructField("id", LongType()), *(StructField(f, FloatType()) for f in feature_names())])
        commits: list[tuple[float, np.ndarray]] = []
        with tempfile.TemporaryDirectory() as scratch:
            source, out = Path(scratch, "in"), Path(scratch, "out")
            source.mkdir()
            out.mkdir()

            def commit(frame: Any, epoch: int) -> None:
                table = frame.toArrow()
                pq.write_table(table, out / f".epoch-{epoch}.tmp")
                os.replace(out / f".epoch-{epoch}.tmp", out / f"epoch-{epoch:06d}.parquet")
                arrived = table.filter(pc.greater_equal(table.column("id"), 0)).column("arrived_s").to_numpy()
                commits.append((time.time(), arrived))

            stream = (
                self.session.readStream.schema(schema)
                .parquet(str(source))
                .select(
                    "id", *feature_names(), F.col("_metadata.file_modification_time").cast("double").alias("arrived_s")
                )
                .mapInArrow(functools.partial(predict_partition, model), "id long, arrived_s double, p1 float")
            )
            query = (
                stream.writeStream.foreachBatch(commit)
                .option("checkpointLocation", str(Path(scratch, "checkpoint")))
                .start()
            )
            try:
                _warm_up(source, lambda: len(commits))
                warm = len(commits)
                sent, produce_s, began, stopped = _produce(source, rate, seconds, file_ms)
                _wait(lambda: sum(a.size for _, a in commits) >= sent, DRAIN_LIMIT_S)
                done = time.time()
                progress = [p for p in query.recentProgress if p["numInputRows"]][warm:]
            finally:
                query.stop()
        latencies = np.concatenate([np.maximum(t - a, 0.0) for t, a in commits]) * 1000
        committed = int(latencies.size)
        p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99])) if committed else (None, None)
        trigger_ms = [p["durationMs"]["triggerExecution"] for p in progress]
        batches = f"{len(commits) - warm} batches, {np.mean(trigger_ms) if trigger_ms else 0:.0f} ms each"
        return Cell(sent, sent / produce_s, committed / (done - began), p50, p99, done - stopped, batches)


def compare_directory(
    paths: dict[str, str], models: list[str], rates: list[int], seconds: float, file_ms: float, *, spark: bool
) -> None:
    """Print one row per model, rate and system, with the load average beside the table."""
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} cores)")
    print(f"files every {file_ms:.0f} ms, {seconds:.0f} s per cell; latency: file modification time to commit")
    print(f"{'model':6} {'rate/s':>7} {'system':>7} {'sent':>7} {'offered/s':>10} {'done/s':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'drain s':>8} {'sustained':>9}  note")  # fmt: skip
    side = SparkSide() if spark else None
    try:
        for model in models:
            for rate in rates:
                systems = [("sluice", run_sluice)] + ([("spark", side.run)] if side is not None else [])
                for name, run in systems:
                    cell = run(paths[model], rate, seconds, file_ms)
                    print(
                        f"{model:6} {rate:>7} {name:>7} {cell.sent:>7} {cell.offered_per_s:>10,.0f} "
                        f"{cell.done_per_s:>9,.0f} {_ms(cell.p50_ms):>8} {_ms(cell.p99_ms):>8} {cell.drain_s:>8.2f} "
                        f"{'yes' if cell.sustained else 'no':>9}  {cell.note}",
                        flush=True,
                    )
    finally:
        if side is not None:
            side.close()
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
