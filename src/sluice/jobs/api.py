"""The Python API of the job service: submit, look up, list, cancel, resume, wait.

>>> job = sluice.jobs.submit({"model": "demo", "input": "data/", "output": "out/"})  # doctest: +SKIP
>>> job.wait().state                                                                 # doctest: +SKIP
<JobState.SUCCEEDED: 'SUCCEEDED'>
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sluice.errors import ConfigError
from sluice.jobs.ids import resolve_job_id
from sluice.jobs.model import JobEvent, JobRequest, JobState, JobStatus, ShardStatus
from sluice.jobs.protocol import JobStore
from sluice.jobs.records import NewJob, NewShard
from sluice.jobs.store import open_store
from sluice.models.base import ModelSource

__all__ = ["Job", "cancel", "get", "list_jobs", "plan_request", "resume", "submit"]

StoreArg = JobStore | str | os.PathLike[str] | None


def _store(store: StoreArg) -> JobStore:
    if store is None or isinstance(store, str | os.PathLike):
        return open_store(store)
    return store


class Job:
    """A handle on one persisted job; every method reads or changes the store."""

    def __init__(self, job_id: str, store: JobStore) -> None:
        self.id = job_id
        self.store = store

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def status(self) -> JobStatus:
        """State, progress in rows and shards, throughput, errors and output location."""
        return self.store.status(self.id)

    def shards(self) -> list[ShardStatus]:
        return self.store.shards(self.id)

    def logs(self, after: int = 0) -> list[tuple[int, JobEvent]]:
        """The job's events after event number ``after``, oldest first."""
        return self.store.events(self.id, after)

    def cancel(self) -> JobStatus:
        """Cancel the job; running shards stop at their worker's next heartbeat."""
        return self.store.cancel(self.id)

    def resume(self) -> Job:
        """Queue a FAILED or CANCELLED job again; its finished shards are kept."""
        self.store.resume(self.id)
        return self

    def wait(
        self, *, work: bool = True, timeout_s: float | None = None, poll_s: float = 0.5, slots: int = 2
    ) -> JobStatus:
        """Block until the job ends; returns its final status.

        With ``work`` (the default) this process works on the job itself, alongside any
        running ``sluice jobs worker``, until the job ends; without it, it only watches, for
        at most ``timeout_s`` if given (the status returned is then not necessarily final).
        """
        if work:
            from sluice.jobs.worker import Worker

            Worker(self.store, slots=slots, job_id=self.id, poll_s=min(poll_s, 0.5)).run(until_idle=True)
            return self.status()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.status()
            if status.terminal or (deadline is not None and time.monotonic() >= deadline):
                return status
            time.sleep(poll_s)


def plan_request(request: JobRequest, job_id: str | None = None) -> NewJob:
    """Validate a request against its model and input: load the model, list and shard the input.

    Raises the same errors ``sluice predict`` would (missing input, unknown model, columns that
    do not bind). A repository model given by label is pinned to the version it names now; a
    ``module:function`` model records the directory its module was imported from, so a worker
    in another directory imports the same code.
    """
    from sluice.batch.plan import plan_job
    from sluice.data.shards import estimate_rows
    from sluice.models.loader import default_repository

    request = _absolute(request)
    plan = plan_job(request.job_spec())
    try:
        source = plan.model.source
        if source.name is not None:
            repository = os.path.abspath(request.repository or default_repository())
            request = request.model_copy(update={"model": source.display_name, "repository": repository})
        elif source.format == "python":
            request = request.model_copy(update={"model_search_path": _import_root(source)})
        shards = [NewShard(s.index, s.describe(), estimate_rows(s)) for s in plan.shards]
        fingerprint = plan.fingerprint()
    finally:
        plan.model.close()
    return NewJob(job_id or uuid.uuid4().hex[:12], request, fingerprint, source.display_name, shards)


def _import_root(source: ModelSource) -> str | None:
    """The directory on the Python path that the callable's module was imported from."""
    module_name = source.location.partition(":")[0]
    base = source.search_path
    if base and "." not in module_name and os.path.isfile(os.path.join(base, f"{module_name}.py")):
        return base
    origin = getattr(sys.modules.get(module_name), "__file__", None)
    if not origin:
        return base  # a namespace or built-in module: importable by name alone
    path = Path(os.path.abspath(origin))
    levels = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    return str(path.parents[levels])


def _absolute(request: JobRequest) -> JobRequest:
    """Local paths made absolute: a worker may run in another directory than the submitter."""

    def local(path: str) -> bool:
        return "://" not in path and not path.startswith("memory:")

    updates: dict[str, str] = {}
    for name in ("input", "output", "repository", "model_search_path"):
        value = getattr(request, name)
        if value and local(value):
            updates[name] = os.path.abspath(value)
    if local(request.model) and os.path.exists(request.model):
        updates["model"] = os.path.abspath(request.model)
    return request.model_copy(update=updates)


def _request(spec: JobRequest | Mapping[str, Any] | str | os.PathLike[str], overrides: dict[str, Any]) -> JobRequest:
    if isinstance(spec, JobRequest):
        return spec.model_copy(update=overrides) if overrides else spec
    if isinstance(spec, str | os.PathLike):
        return JobRequest.from_file(Path(spec), **overrides)
    if isinstance(spec, Mapping):
        return JobRequest.parse({**spec, **overrides})
    raise ConfigError(f"a job spec is a JobRequest, a mapping or a file path, not {type(spec).__name__}")


def submit(
    spec: JobRequest | Mapping[str, Any] | str | os.PathLike[str], *, store: StoreArg = None, **overrides: Any
) -> Job:
    """Validate, plan and queue a job; returns its handle (``job.wait()`` runs it here).

    ``spec`` is a :class:`JobRequest`, a mapping of its fields, or a YAML/JSON file;
    ``overrides`` replace fields. ``store`` is a :class:`JobStore` or a home directory
    (default ``$SLUICE_HOME``, else ``~/.sluice``).
    """
    request = _request(spec, {k: v for k, v in overrides.items() if v is not None})
    job = plan_request(request)
    target = _store(store)
    target.create_job(job)
    return Job(job.id, target)


def get(job_id: str, *, store: StoreArg = None) -> Job:
    """The handle of the job ``job_id`` names, or a unique prefix of it.

    :class:`~sluice.errors.JobNotFound` if there is none, :class:`~sluice.errors.ConfigError`
    if a prefix fits several.
    """
    target = _store(store)
    return Job(resolve_job_id(target, job_id), target)


def list_jobs(state: JobState | str | None = None, *, limit: int = 100, store: StoreArg = None) -> list[JobStatus]:
    """Jobs, newest first; ``state`` keeps only those in that state."""
    states = None
    if state is not None:
        try:
            states = [JobState(str(state).upper())]
        except ValueError:
            known = ", ".join(s.value for s in JobState)
            raise ConfigError(f"unknown job state {state!r}; expected one of {known}") from None
    return _store(store).list_jobs(states, limit)


def cancel(job_id: str, *, store: StoreArg = None) -> JobStatus:
    """Cancel a job (see :meth:`Job.cancel`)."""
    return get(job_id, store=store).cancel()


def resume(job_id: str, *, store: StoreArg = None) -> Job:
    """Queue a FAILED or CANCELLED job again (see :meth:`Job.resume`)."""
    return get(job_id, store=store).resume()
