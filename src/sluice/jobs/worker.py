"""The worker: claims work from the store, runs it through the batch engine, records it.

A worker runs ``slots`` pieces of work at once (each slot a thread) and renews its leases
from a heartbeat thread. A shard is recorded done only after
:meth:`~sluice.batch.shardrun.ShardRunner.run_shard` has returned, that is after its part is
durable. A heartbeat that finds a lease lost, or the job cancelled or failed, stops that
shard's pipeline; the part in progress is dropped and the claim given back.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sluice.errors import SluiceError, StoreError
from sluice.jobs.failpoints import Failpoints
from sluice.jobs.finish import finish_job
from sluice.jobs.ids import resolve_job_id
from sluice.jobs.model import Claim, ClaimKind, JobState
from sluice.jobs.store import JobRecord, JobStore, WorkerInfo

if TYPE_CHECKING:
    from sluice.batch.pipeline import Pipeline
    from sluice.batch.shardrun import ShardRunner
    from sluice.data.shards import Shard

__all__ = ["DEFAULT_LEASE_S", "Worker"]

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 30.0


class _Changed(SluiceError):
    """The job's model or input is no longer what was submitted: it cannot be resumed as it is."""


class _Stop(SluiceError):
    """A running shard must stop: its lease is gone, its job is no longer running, or the worker is stopping."""


@dataclass
class _Active:
    """A shard in progress in this worker."""

    claim: Claim
    rows: int = 0
    pipeline: Pipeline | None = None
    stop_reason: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, pipeline: Pipeline) -> None:
        with self.lock:
            self.pipeline = pipeline
            if self.stop_reason is not None:
                pipeline.cancel(_Stop(self.stop_reason))

    def stop(self, reason: str) -> None:
        with self.lock:
            self.stop_reason = reason
            if self.pipeline is not None:
                self.pipeline.cancel(_Stop(reason))


class _ShardProgress:
    """The engine's progress listener for one shard: counts rows for heartbeats, passes failpoints."""

    def __init__(self, active: _Active, failpoints: Failpoints) -> None:
        self.active = active
        self.failpoints = failpoints

    def start(self, total_rows: int | None, shards: int, shards_skipped: int) -> None:
        pass

    def advance(self, rows: int, rows_failed: int) -> None:
        self.active.rows += rows
        self.failpoints.hit("shard.batch_written")

    def shard_done(self, shard: Shard, rows: int, rows_failed: int) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class _Runner:
    runner: ShardRunner
    record: JobRecord
    users: int = 0


class Worker:
    """Runs queued jobs from ``store``: ``Worker(store).run()`` until stopped (Ctrl-C, :meth:`stop`).

    ``job_id`` (an id or a unique prefix of one) limits the worker to one job;
    ``run(until_idle=True)`` returns once no job (or that job) is queued or running any more.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        slots: int = 2,
        lease_s: float = DEFAULT_LEASE_S,
        poll_s: float = 0.5,
        job_id: str | None = None,
    ) -> None:
        self.store = store
        self.slots = max(1, slots)
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.job_id = job_id
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._changed = threading.Condition()  # a slot finished something: idle slots look again at once
        self._active: dict[int, _Active] = {}
        self._runners: dict[str, _Runner] = {}
        self._lock = threading.Lock()  # guards _active
        self._runners_lock = threading.Lock()  # guards _runners; held while a job's model loads
        self._failpoints = Failpoints({})
        self._fatal: SluiceError | None = None  # the store failed under a slot: the worker stops with it

    def stop(self) -> None:
        """Ask the worker to stop: shards in progress are dropped and given back at once."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        with self._lock:
            active = list(self._active.values())
        for shard in active:
            shard.stop(f"worker {self.id} is stopping")

    def run(self, *, until_idle: bool = False) -> None:
        """Work until :meth:`stop` (or Ctrl-C); with ``until_idle``, until nothing is left to do.

        Raises :class:`~sluice.errors.JobNotFound` at once when ``job_id`` names no job (or
        several), and the store's error when the job database fails under the worker.
        """
        import psutil

        if self.job_id is not None:
            self.job_id = resolve_job_id(self.store, self.job_id)
        self._failpoints = Failpoints.from_env()
        info = WorkerInfo(self.id, socket.gethostname(), os.getpid(), psutil.Process().create_time())
        self.store.register_worker(info)
        log.info("worker %s: %d slot(s), lease %.0f s", self.id, self.slots, self.lease_s)
        heartbeat = threading.Thread(target=self._heartbeat, name="sluice-jobs-heartbeat", daemon=True)
        slots = [
            threading.Thread(target=self._slot, args=(until_idle,), name=f"sluice-jobs-slot-{i}", daemon=True)
            for i in range(self.slots)
        ]
        heartbeat.start()
        for t in slots:
            t.start()
        try:
            for t in slots:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            self.stop()
            for t in slots:
                t.join()
            raise
        finally:
            self._stop.set()
            heartbeat.join()
            self._close_runners(only_idle=False)
            self._unregister()
        if self._fatal is not None:
            raise self._fatal

    def _unregister(self) -> None:
        try:
            self.store.unregister_worker(self.id)
        except SluiceError as exc:
            if self._fatal is None:
                raise
            log.warning("worker %s: could not unregister: %s", self.id, exc)

    # -- slots ----------------------------------------------------------------------------------

    def _slot(self, until_idle: bool) -> None:
        while not self._stop.is_set():
            try:
                claim = self.store.claim(self.id, self.lease_s, self.job_id)
                if claim is None:
                    self._close_runners(only_idle=True)
                    if until_idle and not self.store.has_open_jobs(self.job_id):
                        return
                    self._idle()
                    continue
            except SluiceError as exc:  # the job database is unreadable: no slot can go on
                self._fatal = self._fatal or exc
                self.stop()
                return
            try:
                self._handle(claim)
            except StoreError as exc:  # the job database went bad under this claim: as above
                self._fatal = self._fatal or exc
                self.stop()
                return
            except Exception as exc:  # e.g. storage down while finishing: give the work back, go on
                log.exception("worker %s: unexpected error on %s of job %s", self.id, claim.kind, claim.job_id)
                self._give_back(claim, _describe(exc))
                self._stop.wait(self.poll_s)
            with self._changed:
                self._changed.notify_all()

    def _idle(self) -> None:
        """Wait for new work: ``poll_s``, or less when another slot of this worker finishes something."""
        with self._changed:
            if not self._stop.is_set():
                self._changed.wait(self.poll_s)

    def _give_back(self, claim: Claim, reason: str) -> None:
        try:
            self.store.release(claim, reason)
        except SluiceError as exc:
            log.warning("worker %s: could not give back %s of job %s: %s", self.id, claim.kind, claim.job_id, exc)

    def _handle(self, claim: Claim) -> None:
        if claim.kind is ClaimKind.SHARD:
            self._run_shard(claim)
        elif claim.kind is ClaimKind.START:
            self._start_job(claim)
        else:
            finish_job(self.store, claim, self._failpoints)
            self._drop_runner(claim.job_id)

    def _start_job(self, claim: Claim) -> None:
        try:
            runner = self._acquire(claim.job_id)
        except Exception as exc:  # noqa: BLE001 - a job that cannot be planned fails with the reason
            self.store.fail_job(claim, _describe(exc))
            return
        try:
            runner.runner.prepare_output()
            choice = runner.runner.choose_batch_size()
            self._failpoints.hit("job.prepared")
            self.store.job_started(claim, choice.batch_size, f"batch size {choice.batch_size} ({choice.source})")
            runner.record = replace(runner.record, batch_size=choice.batch_size, prepared=True)
        except Exception as exc:  # noqa: BLE001 - a job that cannot start fails with the reason; resume retries it
            self.store.fail_job(claim, _describe(exc))
        finally:
            self._release(claim.job_id)

    def _run_shard(self, claim: Claim) -> None:
        assert claim.shard is not None and claim.attempt_id is not None
        log.info("worker %s: shard %d of job %s, attempt %d", self.id, claim.shard, claim.job_id, claim.attempt)
        self._failpoints.hit("shard.claimed")
        try:
            runner = self._acquire(claim.job_id)
        except _Changed as exc:
            self.store.fail_job(claim, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - e.g. the model or input unreachable now: an attempt failed
            self.store.attempt_failed(claim, _describe(exc))
            return
        active = _Active(claim)
        with self._lock:
            self._active[claim.attempt_id] = active
        try:
            outcome = runner.runner.run_shard(
                claim.shard,
                batch_size=runner.record.batch_size or 4096,
                progress=_ShardProgress(active, self._failpoints),
                started=active.attach,
            )
        except _Stop as exc:
            self.store.release(claim, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - any failure of an attempt is recorded and retried
            self.store.attempt_failed(claim, _describe(exc))
            return
        finally:
            with self._lock:
                self._active.pop(claim.attempt_id, None)
            self._release(claim.job_id)
        self._failpoints.hit("shard.committed")
        if self.store.shard_done(claim, outcome.rows, outcome.rows_failed, outcome.error_file):
            log.info("worker %s: shard %d of job %s done, %d rows", self.id, claim.shard, claim.job_id, outcome.rows)
        else:
            log.warning("worker %s: shard %d of job %s was taken over meanwhile", self.id, claim.shard, claim.job_id)
        self._failpoints.hit("shard.recorded")

    # -- planned jobs, shared by the slots --------------------------------------------------------

    def _acquire(self, job_id: str) -> _Runner:
        """The job planned in this worker (model loaded once), checked against what was submitted."""
        from sluice.batch.shardrun import ShardRunner

        with self._runners_lock:
            cached = self._runners.get(job_id)
            if cached is None:
                record = self.store.job(job_id)
                runner = ShardRunner(record.request.job_spec()).open()
                found = json.loads(json.dumps(runner.fingerprint()))
                if found != record.fingerprint:
                    runner.close()
                    raise _Changed(
                        f"job {job_id}: its model or input changed since it was submitted "
                        f"({_difference(record.fingerprint, found)}); submit it again"
                    )
                cached = self._runners[job_id] = _Runner(runner, record)
            cached.users += 1
            return cached

    def _release(self, job_id: str) -> None:
        with self._runners_lock:
            cached = self._runners.get(job_id)
            if cached is not None:
                cached.users -= 1

    def _drop_runner(self, job_id: str) -> None:
        with self._runners_lock:
            cached = self._runners.get(job_id)
            if cached is None or cached.users > 0:
                return
            del self._runners[job_id]
        cached.runner.close()

    def _close_runners(self, *, only_idle: bool) -> None:
        with self._runners_lock:
            idle = [k for k, r in self._runners.items() if not only_idle or r.users == 0]
            closing = [self._runners.pop(k) for k in idle]
        for cached in closing:
            cached.runner.close()

    # -- heartbeat ------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        interval = max(0.05, self.lease_s / 3)
        while not self._stop.wait(interval):
            self._beat()

    def _beat(self) -> None:
        with self._lock:
            active = dict(self._active)
        try:
            lost = self.store.heartbeat(self.id, self.lease_s, {k: a.rows for k, a in active.items()})
        except SluiceError as exc:
            log.warning("worker %s: heartbeat failed: %s", self.id, exc)
            return
        for attempt_id in lost:
            claim = active[attempt_id].claim
            state = self.store.status(claim.job_id).state
            reason = (
                f"job {claim.job_id} is {state.value}"
                if state is not JobState.RUNNING
                else f"the lease on shard {claim.shard} passed to another worker"
            )
            active[attempt_id].stop(reason)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SluiceError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _difference(expected: dict[str, object], found: dict[str, object]) -> str:
    keys = [k for k in sorted(set(expected) | set(found)) if expected.get(k) != found.get(k)]
    return "differs in " + ", ".join(keys)
