"""Named crash points for testing recovery: ``SLUICE_JOBS_FAILPOINTS="shard.committed=2"``.

When a point named in the variable is reached for the Nth time in this process, the process
sends itself SIGKILL: no cleanup runs, exactly as if the machine had pulled the plug there.
Unset (the normal case), :meth:`Failpoints.hit` is a dictionary lookup.

Points a worker passes: ``job.prepared`` (output prepared, job not yet marked started),
``shard.claimed``, ``shard.batch_written`` (part half written), ``shard.committed`` (part
durable, not yet recorded), ``shard.recorded``, ``job.summary`` (_summary.json written,
_SUCCESS not yet), ``job.succeeded`` (_SUCCESS written, final state not yet recorded).
"""

from __future__ import annotations

from sluice._failpoints import CrashPoints

__all__ = ["ENV", "POINTS", "Failpoints"]

ENV = "SLUICE_JOBS_FAILPOINTS"
POINTS = (
    "job.prepared",
    "shard.claimed",
    "shard.batch_written",
    "shard.committed",
    "shard.recorded",
    "job.summary",
    "job.succeeded",
)


class Failpoints(CrashPoints):
    """Counts visits to these points and kills the process at the configured visit."""

    env = ENV
    points = POINTS
