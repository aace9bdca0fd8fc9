"""Ending a job whose shards are all done: _summary.json, _SUCCESS, the final state.

Every step is idempotent, so a worker that dies half-way leaves the FINISH work to the next
one, which writes the same files again.
"""

from __future__ import annotations

from typing import Any

from sluice.batch.layout import ERROR_FILES, SUMMARY, OutputLayout
from sluice.jobs.failpoints import Failpoints
from sluice.jobs.model import Claim, JobState, JobStatus
from sluice.jobs.store import JobStore

__all__ = ["final_state", "finish_job", "job_summary"]


def final_state(status: JobStatus, max_error_fraction: float) -> tuple[JobState, str | None]:
    """SUCCEEDED, PARTIALLY_SUCCEEDED (failed records within the allowed fraction) or FAILED."""
    if status.error_fraction > max_error_fraction:
        total = status.rows + status.rows_failed
        return JobState.FAILED, (
            f"{status.rows_failed} of {total} records failed ({status.error_fraction:.2%}), more than "
            f"max_error_fraction {max_error_fraction}; see the {ERROR_FILES} files in {status.output}"
        )
    if status.rows_failed:
        return JobState.PARTIALLY_SUCCEEDED, f"{status.rows_failed} records went to the error files"
    return JobState.SUCCEEDED, None


def job_summary(status: JobStatus, state: JobState, finished_at: float) -> dict[str, Any]:
    """The job's _summary.json: what was done, by which job, how fast."""
    seconds = finished_at - (status.started_at or finished_at)
    return {
        "job": status.id,
        "state": state.value,
        "rows": status.rows,
        "rows_failed": status.rows_failed,
        "error_fraction": round(status.error_fraction, 6),
        "seconds": round(seconds, 3),
        "rows_per_second": round((status.rows + status.rows_failed) / seconds, 1) if seconds > 0 else 0.0,
        "batch_size": status.batch_size,
        "shards": status.shards_total,
        "attempts": status.attempts,
        "model": status.model,
        "input": status.input,
        "output": status.output,
        "error_files": status.error_files,
    }


def finish_job(store: JobStore, claim: Claim, failpoints: Failpoints) -> JobState:
    """Write the summary and, unless too many records failed, ``_SUCCESS``; record the final state."""
    import time

    request = store.job(claim.job_id).request
    status = store.status(claim.job_id)
    state, message = final_state(status, request.max_error_fraction)
    layout = OutputLayout(request.output, request.output_format, request.storage_options)
    # a job that an earlier Sluice started has error files of the earlier layout
    layout.adopt_legacy()
    layout.write_json(SUMMARY, job_summary(status, state, time.time()))
    failpoints.hit("job.summary")
    if state is not JobState.FAILED:
        layout.mark_success()
    failpoints.hit("job.succeeded")
    store.job_finished(claim, state, message)
    return state
