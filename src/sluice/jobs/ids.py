"""Job ids as users type them: the whole id, or a prefix that fits one job."""

from __future__ import annotations

from sluice.errors import ConfigError, JobNotFound
from sluice.jobs.protocol import JobStore

__all__ = ["resolve_job_id"]


def resolve_job_id(store: JobStore, job_id: str) -> str:
    """The id of the one job ``job_id`` names or begins.

    :class:`~sluice.errors.JobNotFound` if there is none, :class:`~sluice.errors.ConfigError`
    if a prefix fits several.
    """
    try:
        store.status(job_id)
    except JobNotFound:
        matches = [s.id for s in store.list_jobs(limit=1_000_000) if s.id.startswith(job_id)] if job_id else []
        if len(matches) > 1:
            shown = ", ".join(sorted(matches)[:5]) + (", …" if len(matches) > 5 else "")
            raise ConfigError(
                f"job id prefix {job_id!r} matches {len(matches)} jobs ({shown}); give more of the id"
            ) from None
        if not matches:
            raise
        return matches[0]
    return job_id
