"""The asyncio driver of one model version's :class:`~sluice.serve.batcher.Batcher`.

One :class:`asyncio.Future` per request; one dispatcher task that sleeps on an
:class:`asyncio.Event` until a request arrives or the batcher's next deadline passes (no
polling) and closes a batch. A batch that computes in microseconds runs on the loop itself
(``allow_inline``: handing it over costs more); any other runs in the worker thread, which then
takes the next batch the policy would close at once and runs it too, handing each batch's
results back to the loop as it goes: a loop busy reading requests never leaves the model idle
between batches.

Each request is checked on its own against the model's signature, when the dispatcher has one
(:func:`~sluice.models.checks.check_inputs`) and the request was not already checked against it
(the protocol decoder checks every HTTP request), and queued under its shape key
(:func:`shape_key_of`): what its tensors may differ in past the batch dimension. Only requests
of one key are concatenated into a batch; a request of another shape waits in its own group
and runs in its own batch. Every output is checked to have as many rows as the inputs
(:func:`~sluice.models.checks.check_outputs`), and row slices go back to each waiter. If
``predict`` raises or returns the wrong number of rows, every waiter of that batch gets the same
:class:`~sluice.errors.PredictError`; nobody hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from sluice.errors import DataError, Overloaded, PredictError, ProtocolError, RequestTimeout, SluiceError
from sluice.metrics import LatencyHistogram
from sluice.models.checks import check_inputs, check_outputs
from sluice.models.signature import Signature
from sluice.serve.batcher import Batch, Batcher, PendingRequest
from sluice.serve.policy import BatchPolicy
from sluice.serve.preparing import PreparedBatch, PrepareFn, prepare_requests

__all__ = ["DispatchMetrics", "Dispatcher", "PredictFn", "shape_key_of"]

Arrays = dict[str, np.ndarray]
PredictFn = Callable[[Arrays], Mapping[str, np.ndarray]]


@dataclass(frozen=True, slots=True)
class _Job:
    inputs: Arrays
    future: asyncio.Future[Arrays]


@dataclass(frozen=True, slots=True)
class _Timed:
    outputs: Arrays
    wall_s: float
    cpu_s: float


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A computed batch: its outputs, or the one error every waiter gets."""

    started_s: float
    done_s: float
    timed: _Timed | None = None
    outputs: Arrays = field(default_factory=dict)
    error: SluiceError | None = None
    rejected: dict[int, SluiceError] = field(default_factory=dict)  # requests that failed alone (prepare)


@dataclass
class DispatchMetrics:
    """Seconds per request (queue, compute, total) and rows per batch (in the ``batch_rows``
    histogram, whose 'seconds' are rows)."""

    queue: LatencyHistogram = field(default_factory=LatencyHistogram)
    compute: LatencyHistogram = field(default_factory=LatencyHistogram)
    total: LatencyHistogram = field(default_factory=LatencyHistogram)
    batch_rows: LatencyHistogram = field(default_factory=LatencyHistogram)
    shed: int = 0
    timed_out: int = 0
    cancelled: int = 0  # requests whose client gave up while they were queued, never run
    failed_batches: int = 0


class Dispatcher:
    """Batches :meth:`submit` calls for ``predict`` under ``policy``; see the module docstring.

    ``signature`` (the model's) checks each request's inputs and each batch's outputs;
    ``model_name`` names the model in those messages. ``clock`` must be the event loop's
    clock (``time.monotonic``, as asyncio's default loops use): the dispatcher's waits are
    the loop's timers, set at times read from it. ``prepare`` (a model's
    :meth:`~sluice.models.base.Model.prepare`) runs on each request of a batch before
    ``predict`` (:mod:`~sluice.serve.preparing`): a request it cannot prepare fails alone.
    """

    def __init__(
        self,
        predict: PredictFn,
        policy: BatchPolicy,
        *,
        max_queue_rows: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        allow_inline: bool = True,
        signature: Signature | None = None,
        model_name: str = "model",
        prepare: PrepareFn | None = None,
    ) -> None:
        self._predict = predict
        self._prepare = prepare
        self._signature = signature
        self._shape_key = shape_key_of(signature)
        self._model_name = model_name
        self._allow_inline = allow_inline
        self._clock = clock
        self.batcher: Batcher[_Job] = Batcher(policy, max_queue_rows=max_queue_rows)
        self.metrics = DispatchMetrics()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._lock = threading.Lock()  # the batcher, while a worker chains batches beside the loop

    def start(self) -> None:
        """Start the dispatcher task on the running loop (:meth:`submit` does it if needed)."""
        if self._task is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-predict")
            self._task = asyncio.get_running_loop().create_task(self._run())

    def refuse_early(self, timeout_s: float | None = None, *, waited_s: float = 0.0) -> None:
        """Raise :class:`Overloaded` now if even a one-row request would be shed, so the
        caller can answer 503 before reading and decoding the request's body (which reached
        the server ``waited_s`` seconds ago; :class:`RequestTimeout` if its timeout passed)."""
        if self._closing:
            raise Overloaded("the server is shutting down", retry_after_s=1.0)
        error = self.refusal(timeout_s, waited_s=waited_s)
        if error is not None:
            self.count_refusal(error)
            raise error

    def refusal(self, timeout_s: float | None = None, *, waited_s: float = 0.0) -> SluiceError | None:
        """What :meth:`refuse_early` would raise now, or None; counts nothing (a caller that asks
        several versions counts the one refusal it answers with :meth:`count_refusal`)."""
        if self._closing:
            return Overloaded("the server is shutting down", retry_after_s=1.0)
        try:
            with self._lock:
                if self._shape_key is _one_key:  # every request joins the one group: estimate that
                    self.batcher.check_admission(1, self._clock(), timeout_s, key=_ONE_KEY, waited_s=waited_s)
                else:
                    self.batcher.check_admission(1, self._clock(), timeout_s, waited_s=waited_s)
        except (Overloaded, RequestTimeout) as exc:
            return exc
        return None

    def count_refusal(self, error: SluiceError) -> None:
        """Count a refusal of this version's: as shed (503) or timed out (504); a server shutting
        down sheds nothing."""
        if self._closing:
            return
        if isinstance(error, Overloaded):
            self.metrics.shed += 1
        elif isinstance(error, RequestTimeout):
            self.metrics.timed_out += 1

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        try:
            yield
        except (Overloaded, RequestTimeout) as exc:
            self.count_refusal(exc)
            raise

    async def submit(
        self,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        timeout_s: float | None = None,
        *,
        checked_against: Signature | None = None,
        on_queued: Callable[[], object] | None = None,
        waited_s: float = 0.0,
    ) -> Arrays:
        """Queue ``rows`` rows and return this request's slice of the outputs.

        ``checked_against`` is the signature the inputs were already checked against (the
        protocol decoder checks every request): when it is this dispatcher's, the inputs are
        not checked again. Raises :class:`~sluice.errors.ProtocolError` (400) when the inputs do not fit the
        signature, :class:`~sluice.errors.DataError` when they do not have ``rows`` rows,
        :class:`Overloaded` (503) at once when shed, :class:`RequestTimeout` (504) when
        ``timeout_s`` passes first, :class:`~sluice.errors.PredictError` when the batch fails.
        ``on_queued`` is called when the request has to wait behind others (a batch in flight,
        requests ahead of it): the moment to start watching its client, which an idle server's
        requests never pay for. A cancelled wait takes a request that has not started out of
        the queue. ``waited_s`` is how long ago the request reached the server: its timeout and
        the latency target count from then.
        """
        if self._closing:
            raise Overloaded("the server is shutting down", retry_after_s=1.0)
        checked = checked_against is not None and checked_against is self._signature
        arrays = self._check_inputs(inputs, rows, checked=checked)
        key = self._shape_key(arrays)
        self.start()
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        with self._counted(), self._lock:
            request = self.batcher.add(_Job(arrays, future), rows, self._clock(), timeout_s, key=key, waited_s=waited_s)
        self._wakeup.set()
        if on_queued is not None and (len(self.batcher) > 1 or self.batcher.in_flight is not None):
            on_queued()
        try:
            if request.deadline_s is None:
                return await future
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, request.deadline_s - self._clock()))
        except TimeoutError:
            self.metrics.timed_out += 1
            waited_ms = (request.deadline_s - request.arrival_s) * 1000 if request.deadline_s is not None else 0.0
            raise RequestTimeout(f"no result within the request's timeout of {waited_ms:.0f} ms") from None
        except asyncio.CancelledError:
            # the client cancelled or hung up: a request not started yet leaves the queue, so
            # the model never computes an answer nobody will read
            with self._lock:
                if self.batcher.cancel(request):
                    self.metrics.cancelled += 1
            raise
        finally:  # a waiter that gave up (timeout or cancelled) leaves a future nobody reads
            future.cancel()

    def _check_inputs(self, inputs: Mapping[str, np.ndarray], rows: int, *, checked: bool) -> Arrays:
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        if self._signature is not None and not checked:
            check_inputs(self._signature, arrays, model_name=self._model_name, error=ProtocolError)
        for name, array in arrays.items():
            if array.ndim == 0 or array.shape[0] != rows:
                raise DataError(f"input '{name}' has shape {array.shape}; expected {rows} rows")
        return arrays

    def shed_queued(self, error: SluiceError) -> int:
        """Fail every queued request with ``error`` (a drain ran out of time); returns how many.
        A batch already running finishes."""
        with self._lock:
            queued = self.batcher.remove_all()
        _fail_all(queued, error)
        return len(queued)

    async def close(self) -> None:
        """Stop admitting, run every queued request to completion, stop the task."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        try:
            while True:
                now = self._clock()
                expired = self.batcher.pop_expired(now)
                if expired:
                    _fail_all(expired, RequestTimeout("the request's timeout passed while it was queued"))
                batch = self.batcher.next_batch(now, drain=self._closing)
                if batch is not None:
                    await self._execute(batch)
                elif self._closing and not len(self.batcher):
                    return
                else:
                    await self._sleep_until(self.batcher.next_deadline(now), now)
        finally:  # a bug here must not leave waiters hanging
            _fail_all(self.batcher.remove_all(), Overloaded("the dispatcher stopped", retry_after_s=1.0))

    async def _sleep_until(self, deadline_s: float | None, now: float) -> None:
        # A timer that sets the event, not asyncio.wait_for: that wraps the wait in a new task
        # and a cancellation every time, which costs more than the batch of a small model.
        self._wakeup.clear()
        if deadline_s is None:
            await self._wakeup.wait()
            return
        timer = asyncio.get_running_loop().call_later(max(0.0, deadline_s - now), self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            timer.cancel()

    async def _execute(self, batch: Batch[_Job]) -> None:
        if self._allow_inline and self.batcher.policy.run_inline(batch.rows):
            outcome = self._compute(batch)
            self._finish(batch, outcome, inline=True)
            self._deliver(batch, outcome)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._chain, batch, loop)

    def _chain(self, batch: Batch[_Job] | None, loop: asyncio.AbstractEventLoop) -> None:
        # In the worker thread: run the batch, then at once the next one the policy would close
        # now. Waiting for the event loop to start each batch would leave the model idle for as
        # long as the loop is busy reading requests, which under load is most of the time.
        while batch is not None:
            outcome = self._compute(batch)
            with self._lock:
                self._finish(batch, outcome, inline=False)
                now = self._clock()
                expired = self.batcher.pop_expired(now)
                following = self.batcher.next_batch(now, drain=self._closing)
            loop.call_soon_threadsafe(self._deliver, batch, outcome)
            if expired:
                timeout = RequestTimeout("the request's timeout passed while it was queued")
                loop.call_soon_threadsafe(_fail_all, expired, timeout)
            batch = following

    def _compute(self, batch: Batch[_Job]) -> _Outcome:
        started_s = self._clock()
        for request in batch.requests:
            self.metrics.queue.record(started_s - request.queued_s)
        self.metrics.batch_rows.record(batch.rows)
        jobs = [request.payload for request in batch.requests]
        rejected: dict[int, SluiceError] = {}
        try:
            # preparing (decoding, tokenizing) is part of what a batch costs: timed with predict
            compute_s, compute_cpu_s = self._clock(), time.thread_time()
            prepared = self._inputs(jobs, batch.rows)
            rejected.update(prepared.rejected)
            if not prepared.live:
                return _Outcome(started_s, self._clock(), rejected=rejected)
            timed = self._timed_predict(prepared, compute_s, compute_cpu_s)
        except Exception as exc:  # noqa: BLE001 — user model code; every waiter gets one typed error
            error = exc if isinstance(exc, PredictError) else _predict_failed(exc, batch)
            return _Outcome(started_s, self._clock(), error=error, rejected=rejected)
        return _Outcome(started_s, self._clock(), timed, timed.outputs, rejected=rejected)

    def _inputs(self, jobs: list[_Job], rows: int) -> PreparedBatch:
        if self._prepare is not None:
            return prepare_requests(self._prepare, [job.inputs for job in jobs], self._model_name)
        inputs = {name: np.concatenate([job.inputs[name] for job in jobs]) for name in jobs[0].inputs}
        return PreparedBatch(inputs, tuple(range(len(jobs))), rows)

    def _finish(self, batch: Batch[_Job], outcome: _Outcome, *, inline: bool) -> None:
        timed = outcome.timed
        if timed is None:
            if outcome.error is not None:  # not when prepare refused every request: no model failure
                self.metrics.failed_batches += 1
            self.batcher.batch_done(batch, None)
            return
        self.metrics.compute.record(timed.wall_s)
        overhead_s = outcome.done_s - outcome.started_s - timed.wall_s
        self.batcher.batch_done(batch, timed.wall_s, overhead_s, timed.cpu_s, inline=inline)

    def _deliver(self, batch: Batch[_Job], outcome: _Outcome) -> None:
        for index, error in outcome.rejected.items():
            _fail_all([batch.requests[index]], error)
        requests = [r for i, r in enumerate(batch.requests) if i not in outcome.rejected]
        if outcome.error is not None:
            _fail_all(requests, outcome.error)
            return
        offset = 0
        for request in requests:
            part = {name: array[offset : offset + request.rows] for name, array in outcome.outputs.items()}
            offset += request.rows
            if not request.payload.future.done():
                request.payload.future.set_result(part)
            self.metrics.total.record(outcome.done_s - request.arrival_s)

    def _timed_predict(self, prepared: PreparedBatch, started_s: float, started_cpu_s: float) -> _Timed:
        # timed where it runs: the wait for the thread and for the loop to resume is overhead,
        # not compute, and must not teach the latency model that bigger batches are needed.
        # The output check is timed with predict: it runs on the same thread, and is part of
        # what a batch costs there when deciding whether it may run on the event loop.
        outputs = check_outputs(
            self._predict(prepared.inputs),
            prepared.rows,
            signature=self._signature,
            source=f"model '{self._model_name}'",
            context=f" from {len(prepared.live)} requests; every request in the batch fails",
        )
        return _Timed(outputs, self._clock() - started_s, time.thread_time() - started_cpu_s)


def _predict_failed(exc: Exception, batch: Batch[_Job]) -> PredictError:
    error = PredictError(
        f"predict failed on a batch of {batch.rows} rows from {len(batch.requests)} requests: "
        f"{type(exc).__name__}: {exc}"
    )
    error.__cause__ = exc
    return error


def shape_key_of(signature: Signature | None) -> Callable[[Arrays], Hashable]:
    """The key of a request's tensors: what requests must share to be concatenated.

    Without a signature: names, and each tensor's row shape and dtype. With one, only what
    checked inputs may differ in: the row shape of an input with a dynamic dimension past the
    batch one, and the dtype of a ``BYTES`` input (held as objects or as strings). When no
    input has either, every checked request concatenates with every other and the key is one
    constant, which costs nothing per request.
    """
    if signature is None:
        return _full_shape_key
    varying = tuple(s.name for s in signature.inputs if s.dtype.kind in "OUS" or any(d < 0 for d in s.shape[1:]))
    if not varying:
        return _one_key
    return lambda arrays: tuple((arrays[name].shape[1:], arrays[name].dtype.str) for name in varying)


_ONE_KEY: Hashable = ()


def _one_key(arrays: Arrays) -> Hashable:
    return _ONE_KEY


def _full_shape_key(arrays: Arrays) -> Hashable:
    return tuple(sorted((name, array.shape[1:], array.dtype.str) for name, array in arrays.items()))


def _fail_all(requests: list[PendingRequest[_Job]], error: SluiceError) -> None:
    for request in requests:
        if not request.payload.future.done():
            request.payload.future.set_exception(error)
