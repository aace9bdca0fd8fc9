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

import os
import signal
import threading
from collections import Counter
from collections.abc import Mapping

from sluice.errors import ConfigError

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


class Failpoints:
    """Counts visits to named points and kills the process at the configured visit."""

    def __init__(self, kill_at: Mapping[str, int]) -> None:
        unknown = sorted(set(kill_at) - set(POINTS))
        if unknown:
            raise ConfigError(f"{ENV}: unknown failpoint(s) {unknown}; known: {', '.join(POINTS)}")
        self.kill_at = dict(kill_at)
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Failpoints:
        """The points in ``$SLUICE_JOBS_FAILPOINTS`` (``name=N,name=N``), or none."""
        text = os.environ.get(ENV, "").strip()
        kill_at: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, count = item.partition("=")
            if not count.strip().isdigit() or int(count) < 1:
                raise ConfigError(f"{ENV}: expected NAME=N with N >= 1, found {item!r}")
            kill_at[name.strip()] = int(count)
        return cls(kill_at)

    def hit(self, name: str) -> None:
        """Pass point ``name``; SIGKILL this process if this is the configured visit."""
        if name not in self.kill_at:
            return
        with self._lock:
            self._seen[name] += 1
            if self._seen[name] == self.kill_at[name]:
                os.kill(os.getpid(), signal.SIGKILL)
