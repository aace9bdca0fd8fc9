"""The local pipelined engine: read → bind → predict → unbind → write.

Reader threads stream shards into a queue of work items; predict workers bind, predict
and unbind each item and hand the result to its shard, which writes results in input
order. A semaphore caps the batches in flight, so memory stays flat whatever the input
size, and reading and writing overlap compute. A shard's part becomes visible only when
all of its rows are written.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from sluice.batch.layout import OutputLayout
from sluice.batch.plan import JobPlan
from sluice.batch.predictor import Predictor
from sluice.batch.progress import ProgressListener
from sluice.batch.step import RowFailure, predict_step
from sluice.data.images import ImageFetch
from sluice.data.readers import RecordFailure, SourceBatch, read_shard
from sluice.data.shards import Shard
from sluice.data.writers import ErrorWriter, PartWriter
from sluice.errors import Interrupted, OutputInUse
from sluice.metrics import LatencyHistogram, StageTimer

__all__ = ["Pipeline", "PipelineStats", "error_record"]


@dataclass(frozen=True)
class WorkItem:
    shard: ShardRun
    seq: int
    source: SourceBatch


@dataclass(frozen=True)
class Result:
    seq: int
    table: pa.Table
    errors: list[dict[str, Any]]


@dataclass
class PipelineStats:
    rows: int = 0
    rows_failed: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    stages: StageTimer = field(default_factory=lambda: StageTimer(("read", "predict", "write")))
    error_files: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # the model's counts (Prepared.counters), summed
    _counters_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, counters: dict[str, int]) -> None:
        """Add one batch's model counters in (from any worker thread)."""
        if not counters:
            return
        with self._counters_lock:
            for name, value in counters.items():
                self.counters[name] = self.counters.get(name, 0) + value

    oom_backoffs: int = 0  # batches halved because the model ran out of memory
    oom_max_rows: int | None = None  # rows per model call after those halvings (None: none happened)


class ShardRun:
    """One shard in flight: its writers, and the results waiting for their turn.

    Results arrive from any worker in any order. Whichever worker finds no write in progress
    becomes the drainer: it writes every result that is next in order, outside the state
    lock, so other workers deposit their results and go back to predicting instead of
    waiting for the file.
    """

    def __init__(self, shard: Shard, pipeline: Pipeline) -> None:
        self.shard = shard
        self.pipeline = pipeline
        layout = pipeline.layout
        self.part = PartWriter(layout.part(shard.index), layout.format)
        self.errors = ErrorWriter(layout.errors(shard.index))
        self.lock = threading.Lock()  # guards the fields below
        self.io_lock = threading.Lock()  # guards the files
        self.next_seq = 0
        self.total: int | None = None
        self.pending: dict[int, Result] = {}
        self.draining = False
        self.finished = False
        self.aborted = False
        self.rows = 0
        self.rows_failed = 0

    def deliver(self, result: Result) -> None:
        with self.lock:
            self.pending[result.seq] = result
            if self.draining:
                return
            self.draining = True
        self._drain()

    def done_reading(self, total: int) -> None:
        with self.lock:
            self.total = total
            if self.draining:
                return
            self.draining = True
        self._drain()

    def _drain(self) -> None:
        while True:
            with self.lock:
                result = self.pending.pop(self.next_seq, None)
                complete = self.total is not None and self.next_seq >= self.total
                commit = result is None and complete and not self.finished
                if result is None and not commit:
                    self.draining = False
                    return
                if commit:
                    self.finished = True
                else:
                    self.next_seq += 1
            with self.io_lock:
                if result is None:
                    self._commit()
                    return
                self._write(result)

    def _write(self, result: Result) -> None:
        if not self.aborted:
            start = time.perf_counter()
            if result.table.num_rows:
                self.part.write(result.table)
            self.errors.write(result.errors)
            self.pipeline.stats.stages.add("write", time.perf_counter() - start)
            self.rows += result.table.num_rows
            self.rows_failed += len(result.errors)
            self.pipeline.progress.advance(result.table.num_rows, len(result.errors))
        self.pipeline.slots.release()

    def _commit(self) -> None:
        start = time.perf_counter()
        try:
            self.pipeline.layout.check_claim()  # an object store's output taken over by a later run
        except OutputInUse:
            self.part.abort()
            self.errors.abort()
            raise
        self.errors.commit()
        self.part.commit(self.pipeline.output_schema)
        self.pipeline.stats.stages.add("write", time.perf_counter() - start)
        self.pipeline.shard_finished(self)

    def abort(self) -> None:
        """Drop an unfinished part: its temporary files go, nothing becomes visible."""
        with self.io_lock:
            with self.lock:
                if self.finished:
                    return
                self.finished = self.aborted = True
            self.part.abort()
            self.errors.abort()


_STOP = object()


class Pipeline:
    """Runs the shards of a planned job with ``readers`` reader and ``workers`` predict threads."""

    def __init__(
        self,
        plan: JobPlan,
        layout: OutputLayout,
        shards: list[Shard],
        *,
        batch_size: int,
        workers: int,
        readers: int,
        progress: ProgressListener,
        predictor: Predictor | None = None,
    ) -> None:
        self.plan = plan
        self.layout = layout
        self.shards = shards
        self.batch_size = batch_size
        self.workers = workers
        self.readers = max(1, min(readers, len(shards)))
        self.progress = progress
        self.stats = PipelineStats()
        self.slots = threading.BoundedSemaphore(2 * workers + self.readers)
        self.stop = threading.Event()
        self.work: queue.Queue[Any] = queue.Queue()
        self.runs: list[ShardRun] = []
        self._runs_lock = threading.Lock()
        self._shard_iter: Iterator[Shard] = iter(shards)
        self._remaining = len(shards)
        self._all_done = threading.Event()
        self._failure: BaseException | None = None
        # a caller running many pipelines over one model (a job service's worker) lends its
        # own predictor, so worker processes start once, not once per shard
        self._owns_predictor = predictor is None
        self.predictor = predictor or Predictor(plan.model, workers)
        self._backoffs_before = self.predictor.backoff.count  # a lent predictor's earlier halvings are not ours
        self.output_schema = plan.output_schema()
        self._read_schema = plan.columns.read_schema(plan.schema)
        paths = plan.columns.image_paths
        fetch = ImageFetch(paths, plan.spec.storage_options, plan.spec.key_column) if paths is not None else None
        self._image_fetch = fetch

    # -- driver ------------------------------------------------------------------------

    def run(self) -> PipelineStats:
        if not self.shards:
            return self.stats
        threads = [
            threading.Thread(target=self._reader, name=f"sluice-read-{i}", daemon=True) for i in range(self.readers)
        ] + [
            threading.Thread(target=self._worker, name=f"sluice-predict-{i}", daemon=True) for i in range(self.workers)
        ]
        for t in threads:
            t.start()
        try:
            while not self._all_done.wait(0.1):
                if self._failure is not None:
                    break
        except KeyboardInterrupt:
            self._shutdown(threads)
            raise Interrupted("interrupted: completed parts are kept; run the same command again to resume") from None
        self._shutdown(threads)
        if self._failure is not None:
            raise self._failure
        self.stats.oom_backoffs = self.predictor.backoff.count - self._backoffs_before
        self.stats.oom_max_rows = self.predictor.backoff.max_rows
        return self.stats

    def _shutdown(self, threads: list[threading.Thread]) -> None:
        self.stop.set()
        for _ in range(self.workers):
            self.work.put(_STOP)
        deadline = time.monotonic() + 30
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self._runs_lock:
            runs = list(self.runs)
        for run in runs:
            run.abort()
        if self._owns_predictor:
            self.predictor.close()

    def cancel(self, reason: BaseException) -> None:
        """Stop from another thread: unfinished parts are dropped and :meth:`run` raises ``reason``."""
        self._fail(reason)

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self.stop.set()

    def shard_finished(self, run: ShardRun) -> None:
        with self._runs_lock:
            self.stats.rows += run.rows
            self.stats.rows_failed += run.rows_failed
            if run.errors.count:
                self.stats.error_files.append(run.errors.file.target.url)
            self._remaining -= 1
            if self._remaining == 0:
                self._all_done.set()
        self.progress.shard_done(run.shard, run.rows, run.rows_failed)

    # -- stages ------------------------------------------------------------------------

    def _next_shard(self) -> ShardRun | None:
        with self._runs_lock:
            shard = next(self._shard_iter, None)
            if shard is None or self.stop.is_set():
                return None
            run = ShardRun(shard, self)
            self.runs.append(run)
            return run

    def _reader(self) -> None:
        try:
            while (run := self._next_shard()) is not None:
                self._read(run)
        except Exception as exc:  # noqa: BLE001 - surfaced to the driver, never swallowed
            self._fail(exc)

    def _read(self, run: ShardRun) -> None:
        cols = self.plan.columns
        batches = read_shard(
            run.shard,
            columns=cols.read,
            schema=self._read_schema,
            batch_size=self.batch_size,
            raw_columns=cols.raw,
            key_column=self._key,
            key_as_written=self.plan.spec.key_type is None,
            image_fetch=self._image_fetch,
        )
        seq = 0
        for seq in itertools.count():
            if not self._acquire_slot():
                return
            start = time.perf_counter()
            source = next(batches, None)
            self.stats.stages.add("read", time.perf_counter() - start)
            if source is None:
                self.slots.release()
                break
            self.work.put(WorkItem(run, seq, source))
        run.done_reading(seq)

    def _acquire_slot(self) -> bool:
        while not self.stop.is_set():
            if self.slots.acquire(timeout=0.1):
                return True
        return False

    def _worker(self) -> None:
        while True:
            item = self.work.get()
            if item is _STOP or self.stop.is_set():
                return
            try:
                item.shard.deliver(self._process(item))
            except Exception as exc:  # noqa: BLE001 - surfaced to the driver, never swallowed
                self._fail(exc)
                return

    def _process(self, item: WorkItem) -> Result:
        """Bind, predict and unbind one batch; every record ends in the table or in the errors."""
        start = time.perf_counter()
        step = predict_step(
            item.source.batch,
            self.plan.columns.bind,
            self.predictor,
            strict=False,
            passthrough=self.plan.columns.passthrough,
            on_latency=self.stats.latency.record,
        )
        self.stats.count(step.counters)
        failures = [*item.source.failures, *(self._failure_at(item, f) for f in step.failures)]
        failures.sort(key=lambda f: (f.row is None, f.row or 0))
        errors = [error_record(item.shard.shard.source, f, self._key is not None) for f in failures]
        self.stats.stages.add("predict", time.perf_counter() - start)
        return Result(item.seq, pa.Table.from_batches([step.batch]), errors)

    def _failure_at(self, item: WorkItem, failure: RowFailure) -> RecordFailure:
        """A failure of a row of the batch, numbered within its source file, with its key."""
        row = failure.row
        key = item.source.batch.column(self._key)[row].as_py() if self._key is not None else None
        record = int(item.source.rows[row])
        source = item.shard.shard.record_source(record)
        return RecordFailure(record, failure.message, failure.field, key=key, source=source)

    @property
    def _key(self) -> str | None:
        return self.plan.spec.key_column


def error_record(source: str, failure: RecordFailure, with_key: bool) -> dict[str, Any]:
    """One line of an _errors/errors-NNNNN.jsonl file: the record of ``source`` that failed, and why."""
    record: dict[str, Any] = {"source": failure.source or source, "row": failure.row}
    if failure.line is not None:
        record["line"] = failure.line
    if with_key:
        record["key"] = failure.key
    record["field"] = failure.field
    record["error"] = failure.message
    return record
