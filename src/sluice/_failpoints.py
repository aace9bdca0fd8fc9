"""Named crash points for testing recovery, shared by the packages that have them.

A subclass names its environment variable and its points. When a point named in the variable
(``NAME=N,NAME=N``) is reached for the Nth time in this process, the process sends itself
SIGKILL: no cleanup runs, as if the machine lost power there. Unset (the normal case),
:meth:`CrashPoints.hit` is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Mapping
from typing import ClassVar, Self

from sluice.errors import ConfigError

__all__ = ["CrashPoints"]


class CrashPoints:
    """Counts visits to named points and kills the process at the configured visit."""

    env: ClassVar[str]
    points: ClassVar[tuple[str, ...]]

    def __init__(self, kill_at: Mapping[str, int]) -> None:
        unknown = sorted(set(kill_at) - set(self.points))
        if unknown:
            raise ConfigError(f"{self.env}: unknown failpoint(s) {unknown}; known: {', '.join(self.points)}")
        self.kill_at = dict(kill_at)
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Self:
        """The points in the class's environment variable (``name=N,name=N``), or none."""
        kill_at: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in os.environ.get(cls.env, "").split(","))):
            name, _, count = item.partition("=")
            if not count.strip().isdigit() or int(count) < 1:
                raise ConfigError(f"{cls.env}: expected NAME=N with N >= 1, found {item!r}")
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
