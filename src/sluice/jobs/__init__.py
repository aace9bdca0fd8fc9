"""Batch jobs as a service: persisted jobs and shards, leases, retries, exactly-once output.

``submit`` plans and queues a job in the store (SQLite under ``$SLUICE_HOME``); workers
(``Worker``, ``sluice jobs worker``, or ``job.wait()`` in this process) lease its shards,
run them through the batch engine and record each one only once its part is durable.
Importing this package imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice._lazy import lazy_exports

_EXPORTS = {
    "Job": "sluice.jobs.api",
    "cancel": "sluice.jobs.api",
    "get": "sluice.jobs.api",
    "list_jobs": "sluice.jobs.api",
    "resume": "sluice.jobs.api",
    "submit": "sluice.jobs.api",
    "JobRequest": "sluice.jobs.model",
    "JobState": "sluice.jobs.model",
    "JobStatus": "sluice.jobs.model",
    "JobStore": "sluice.jobs.protocol",
    "default_home": "sluice.jobs.store",
    "open_store": "sluice.jobs.store",
    "SqliteJobStore": "sluice.jobs.sqlite",
    "SubmitPolicy": "sluice.jobs.policy",
    "Worker": "sluice.jobs.worker",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from sluice.jobs.api import Job as Job
    from sluice.jobs.api import cancel as cancel
    from sluice.jobs.api import get as get
    from sluice.jobs.api import list_jobs as list_jobs
    from sluice.jobs.api import resume as resume
    from sluice.jobs.api import submit as submit
    from sluice.jobs.model import JobRequest as JobRequest
    from sluice.jobs.model import JobState as JobState
    from sluice.jobs.model import JobStatus as JobStatus
    from sluice.jobs.policy import SubmitPolicy as SubmitPolicy
    from sluice.jobs.protocol import JobStore as JobStore
    from sluice.jobs.sqlite import SqliteJobStore as SqliteJobStore
    from sluice.jobs.store import default_home as default_home
    from sluice.jobs.store import open_store as open_store
    from sluice.jobs.worker import Worker as Worker

__getattr__ = lazy_exports(__name__, _EXPORTS)
