"""The stream driver: groups of micro-batches on a resident model, one commit per group.

A stream reuses the batch run's planning (:func:`~sluice.batch.driver.with_defaults` loads the
model with the local engine's set-up; :func:`~sluice.batch.plan.plan_columns` binds each
schema) and its one prediction step (:func:`~sluice.batch.step.predict_step`, lenient: a record
that cannot bind or that the model rejects becomes an error record, and the stream goes on).

Each group: wait for the first micro-batch; then run micro-batches back to back while the
source has records, up to the group size or the group's time budget (:mod:`.scheduler`);
then commit the outputs with the source position (:mod:`.sinks`), acknowledge the source, and
let the scheduler size the next group. A sink may refuse a group whose source records another
reader claimed meanwhile (:class:`~sluice.stream.sources.GroupLost`, a Redis consumer that was
too slow): the group is dropped, and the source hands out again what is still its own. SIGINT
or SIGTERM lets the group in flight finish and commit, and the run returns normally.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from types import FrameType
from typing import Any

import numpy as np
import pyarrow as pa

from sluice.batch.driver import with_defaults
from sluice.batch.local import LocalEngine
from sluice.batch.pipeline import error_record
from sluice.batch.plan import ColumnPlan, plan_columns
from sluice.batch.predictor import Predictor
from sluice.batch.step import empty_outputs, predict_step
from sluice.data.readers import RecordFailure
from sluice.models.base import Model
from sluice.models.loader import model_digest
from sluice.stream.config import StreamSpec
from sluice.stream.endpoints import StreamSink, open_sink, open_source
from sluice.stream.failpoints import StreamFailpoints
from sluice.stream.metrics import StreamMetrics, StreamSummary
from sluice.stream.metrics_http import MetricsServer
from sluice.stream.scheduler import Clock, GroupScheduler
from sluice.stream.sources import GroupLost, MicroBatch, StreamSource

__all__ = ["StreamRunner", "run_stream"]

log = logging.getLogger(__name__)

_METRICS_EVERY_S = 1.0


@dataclass
class _Group:
    """A group in flight: its output, the arrival times of its predicted records, its failures."""

    output: Any = None
    arrivals: list[np.ndarray] = field(default_factory=list)
    failed: int = 0
    batches: int = 0
    schema: pa.Schema | None = None


class StreamRunner:
    """Runs one :class:`StreamSpec` until it is stopped (or, with ``once``, until the source is drained)."""

    def __init__(
        self,
        spec: StreamSpec,
        *,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        stop: threading.Event | None = None,
        on_group: Callable[[StreamSummary], None] | None = None,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.wall = wall
        self.stop = stop or threading.Event()
        self.on_group = on_group
        self.failpoints = StreamFailpoints.from_env()
        self.scheduler = GroupScheduler(
            spec.target_latency_ms, min_batches=spec.min_group, max_batches=spec.max_group, clock=clock
        )
        self._plans: dict[tuple[pa.Schema, bool], ColumnPlan] = {}
        self.metrics: StreamMetrics | None = None  # the running stream's figures, once it runs
        self.metrics_server: MetricsServer | None = None

    def run(self) -> StreamSummary:
        """Stream until stopped; returns this run's figures (the sink's manifest keeps the totals)."""
        job, model, setup = with_defaults(self.spec.job_spec(), LocalEngine())
        self.job, self.model = job, model
        predictor = Predictor(model, setup.predict_threads)
        source = open_source(self.spec, self._columns)
        try:
            sink = open_sink(self.spec, self.failpoints, source)
            try:
                committed = sink.open(self._fingerprint(model, source), self.spec.overwrite)
                source.open(committed.progress)
                with _stop_on_signals(self.stop):
                    return self._loop(source, sink, predictor)
            finally:
                sink.close()
        finally:
            source.close()
            predictor.close()
            model.close()

    def _loop(self, source: StreamSource, sink: StreamSink, predictor: Predictor) -> StreamSummary:
        metrics = self.metrics = StreamMetrics(source.url, sink.url, self.clock())
        server = None
        if self.spec.metrics_port is not None:
            render = partial(metrics.prometheus_now, self.clock)
            server = self.metrics_server = MetricsServer(self.spec.metrics_host, self.spec.metrics_port, render).start()
        try:
            return self._groups(source, sink, predictor, metrics)
        finally:
            if server is not None:
                server.close()

    def _groups(
        self, source: StreamSource, sink: StreamSink, predictor: Predictor, metrics: StreamMetrics
    ) -> StreamSummary:
        last_written = float("-inf")
        while not self.stop.is_set():
            committed = self._group(source, sink, predictor, metrics)
            if not committed:
                if self.spec.once:
                    break
                if not source.blocks:
                    self.stop.wait(self.spec.poll_interval_ms / 1000)
                continue
            if self.clock() - last_written >= _METRICS_EVERY_S:
                last_written = self.clock()
                self._report(source, sink, metrics)
        self._report(source, sink, metrics)
        return metrics.summary(self.clock())

    def _report(self, source: StreamSource, sink: StreamSink, metrics: StreamMetrics) -> None:
        metrics.lag = source.lag()  # here, not per group: for Redis it is a round trip
        summary = metrics.summary(self.clock())
        sink.write_metrics(summary.to_dict())
        if self.on_group is not None:
            self.on_group(summary)

    # -- one group -----------------------------------------------------------------------------

    def _group(self, source: StreamSource, sink: StreamSink, predictor: Predictor, metrics: StreamMetrics) -> bool:
        """Run and commit one group; False when the source had nothing."""
        micro = source.poll(self.spec.poll_interval_ms / 1000)
        if micro is None:
            return False
        plan = self.scheduler.start_group()
        group = _Group(output=sink.begin())
        try:
            full = self._fill(micro, plan.batches, group, source, predictor)
        except BaseException:
            group.output.abort()  # a failed group leaves nothing behind, not even pending files
            raise
        self._commit(source, sink, group, metrics, full=full)
        return True

    def _fill(
        self, micro: MicroBatch | None, size: int, group: _Group, source: StreamSource, predictor: Predictor
    ) -> bool:
        """Run micro-batches back to back until the group is full, out of time, stopped or the source is empty.

        True when the group stopped at its size bound with the source holding more.
        """
        while micro is not None:
            self._run_batch(micro, group, predictor)
            if group.batches == 1:
                self.failpoints.hit("group.read")
            if self.scheduler.batch_done() or self.stop.is_set():
                return False
            if group.batches >= size:
                return True
            micro = source.poll(0.0)  # within a group, an empty source commits at once
        return False

    def _run_batch(self, micro: MicroBatch, group: _Group, predictor: Predictor) -> None:
        """Bind, predict and unbind one micro-batch into the group's output (or its error records)."""
        step = predict_step(
            micro.source.batch, micro.columns.bind, predictor, strict=False, passthrough=micro.columns.passthrough
        )
        key = self.spec.key_column
        failures = [*micro.source.failures, *(self._failure(micro, f.row, f.field, f.message) for f in step.failures)]
        failures.sort(key=lambda f: (f.row is None, f.row or 0))
        errors = [error_record(micro.origin, f, key is not None) for f in failures]
        if micro.entry_ids:
            for record, failure in zip(errors, failures, strict=True):  # an entry is known by its ID
                del record["row"]
                record["id"] = micro.entry_ids[failure.row] if failure.row is not None else None
        group.output.write(pa.Table.from_batches([step.batch]), errors)
        group.arrivals.append(micro.arrived_s[step.rows])
        group.failed += len(errors)
        group.batches += 1
        group.schema = group.schema or step.batch.schema

    def _failure(self, micro: MicroBatch, row: int, field_name: str | None, message: str) -> RecordFailure:
        """A step failure of a row of the micro-batch, numbered within its origin, with its key."""
        key = self.spec.key_column
        value = micro.source.batch.column(key)[row].as_py() if key is not None else None
        return RecordFailure(int(micro.source.rows[row]), message, field_name, key=value)

    def _commit(
        self, source: StreamSource, sink: StreamSink, group: _Group, metrics: StreamMetrics, *, full: bool
    ) -> None:
        self.scheduler.commit_started()
        progress = source.progress()
        try:
            sink.commit(group.output, progress, group.failed, group.schema or self._empty_schema())
        except GroupLost as lost:
            log.warning("%s; the group is dropped, its other records are read again", lost)
            group.output.abort()
            source.rewind()
            return
        committed_s = self.wall()
        source.acknowledge(progress)
        metrics.group_size = self.scheduler.group_committed(full=full)
        metrics.batch_ms = None if self.scheduler.batch_s is None else self.scheduler.batch_s * 1000
        metrics.commit_ms = None if self.scheduler.commit_s is None else self.scheduler.commit_s * 1000
        arrivals = np.concatenate(group.arrivals) if group.arrivals else np.empty(0)
        metrics.group_committed(arrivals, group.failed, committed_s)

    # -- planning ------------------------------------------------------------------------------

    def _columns(self, schema: pa.Schema, text_input: bool) -> ColumnPlan:
        """How records of ``schema`` bind and pass through, planned once per schema as a batch run plans them."""
        plan = self._plans.get((schema, text_input))
        if plan is None:
            plan = self._plans[schema, text_input] = plan_columns(self.job, self.model, schema, text_input=text_input)
        return plan

    def _empty_schema(self) -> pa.Schema:
        outputs = empty_outputs(self.model.signature)
        return pa.schema([pa.field(n, a.type) for n, a in outputs])

    def _fingerprint(self, model: Model, source: StreamSource) -> dict[str, Any]:
        """What a restart must share with the run that wrote the sink to go on with it."""
        spec = self.spec
        return {
            "model": model.source.display_name,
            "model_digest": model_digest(model),
            "source": source.url,
            "key_column": spec.key_column,
            "include": spec.include,
            "features": spec.features,
            "sink_format": spec.sink_format,
        }


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (the group in flight commits); a second SIGINT interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_stream(model: str, source: str, sink: str, **options: Any) -> StreamSummary:
    """Stream predictions from ``source`` to ``sink`` with ``model`` until stopped (SIGINT/SIGTERM, or ``once``).

    ``options`` are :class:`StreamSpec` fields (``key_column``, ``target_latency_ms``, ``batch_size``,
    ``once``, …). Every record of the source reaches the sink exactly once, or its error sink,
    across crashes and restarts. Returns this run's figures.
    """
    stop = options.pop("stop", None)
    on_group = options.pop("on_group", None)
    spec = StreamSpec.build(model=model, source=source, sink=sink, **options)
    return StreamRunner(spec, stop=stop, on_group=on_group).run()
