"""Named crash points for testing recovery: ``SLUICE_STREAM_FAILPOINTS="group.written=2"``.

When a point named in the variable is reached for the Nth time in this process, the process
sends itself SIGKILL: no cleanup runs, as if the machine lost power there. Unset (the normal
case), :meth:`StreamFailpoints.hit` is a dictionary lookup.

Points a stream passes, once per group: ``group.read`` (the first micro-batch is predicted and
written to the pending part), ``group.written`` (the part and error file are durable under
``_pending/``, the manifest not yet; for Redis, the transaction or script not yet sent),
``group.committed`` (the manifest, the MULTI/EXEC or the commit script is durable, the part not
yet moved into place), ``group.published`` (the part is in place, the
source not yet acknowledged).
"""

from __future__ import annotations

from sluice._failpoints import CrashPoints

__all__ = ["ENV", "POINTS", "StreamFailpoints"]

ENV = "SLUICE_STREAM_FAILPOINTS"
POINTS = ("group.read", "group.written", "group.committed", "group.published")


class StreamFailpoints(CrashPoints):
    """Counts visits to these points and kills the process at the configured visit."""

    env = ENV
    points = POINTS
