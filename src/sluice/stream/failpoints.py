"""Named crash points for testing recovery: ``SLUICE_STREAM_FAILPOINTS="group.written=2"``.

When a point named in the variable is reached for the Nth time in this process, the process
sends itself SIGKILL: no cleanup runs, as if the machine lost power there. Unset (the normal
case), :meth:`StreamFailpoints.hit` is a dictionary lookup.

Points a stream passes, once per group: ``group.read`` (the first micro-batch is predicted and
written to the pending part), ``group.written`` (the part and error file are durable under
``_pending/``, the manifest not yet), ``group.committed`` (the manifest or the MULTI/EXEC is
durable, the part not yet moved into place), ``group.published`` (the part is in place, the
source not yet acknowledged).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Mapping

from sluice.errors import ConfigError

__all__ = ["ENV", "POINTS", "StreamFailpoints"]

ENV = "SLUICE_STREAM_FAILPOINTS"
POINTS = ("group.read", "group.written", "group.committed", "group.published")


class StreamFailpoints:
    """Counts visits to named points and kills the process at the configured visit."""

    def __init__(self, kill_at: Mapping[str, int]) -> None:
        unknown = sorted(set(kill_at) - set(POINTS))
        if unknown:
            raise ConfigError(f"{ENV}: unknown failpoint(s) {unknown}; known: {', '.join(POINTS)}")
        self.kill_at = dict(kill_at)
        self._seen: Counter[str] = Counter()

    @classmethod
    def from_env(cls) -> StreamFailpoints:
        """The points in ``$SLUICE_STREAM_FAILPOINTS`` (``name=N,name=N``), or none."""
        kill_at: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in os.environ.get(ENV, "").split(","))):
            name, _, count = item.partition("=")
            if not count.strip().isdigit() or int(count) < 1:
                raise ConfigError(f"{ENV}: expected NAME=N with N >= 1, found {item!r}")
            kill_at[name.strip()] = int(count)
        return cls(kill_at)

    def hit(self, name: str) -> None:
        """Pass point ``name``; SIGKILL this process if this is the configured visit."""
        if name not in self.kill_at:
            return
        self._seen[name] += 1
        if self._seen[name] == self.kill_at[name]:
            os.kill(os.getpid(), signal.SIGKILL)
