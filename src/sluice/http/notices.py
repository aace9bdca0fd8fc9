"""Log lines that a hostile client cannot multiply: the first event of a kind, then counts.

A server that logs one line (or one traceback) per bad request lets any client grow its log
without bound. :class:`RepeatedNotices` logs the first event of each kind as it happens and
folds the rest into one line per kind at most every ``interval_s``, with their count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RepeatedNotices"]


@dataclass(slots=True)
class _Tally:
    unreported: int = 0
    since_s: float = 0.0


class RepeatedNotices:
    """The first event of each kind logged at once, later ones counted; see the module docstring.

    ``clock`` is injectable for tests; :meth:`flush` logs what is counted but not yet logged
    (call it on shutdown).
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._tallies: dict[str, _Tally] = {}
        self.counts: dict[str, int] = {}
        """Events per kind since the start, logged or not."""

    def note(self, kind: str, message: str, *, exc_info: BaseException | None = None) -> None:
        """One event of ``kind``: logged (with ``exc_info``'s traceback) when it is the first of its
        kind, else counted and logged as a count once ``interval_s`` has passed since the last line."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now_s = self._clock()
        tally = self._tallies.get(kind)
        if tally is None:
            self._tallies[kind] = _Tally(since_s=now_s)
            self.logger.warning("%s (more of this kind are counted, not logged one by one)", message, exc_info=exc_info)
            return
        tally.unreported += 1
        if now_s - tally.since_s >= self.interval_s:
            self._report(kind, tally, now_s)

    def flush(self) -> None:
        """Log the count of every kind with events not yet logged."""
        now_s = self._clock()
        for kind, tally in self._tallies.items():
            if tally.unreported:
                self._report(kind, tally, now_s)

    def _report(self, kind: str, tally: _Tally, now_s: float) -> None:
        self.logger.warning(
            "%d more of kind '%s' in the last %.0f s (%d in all)",
            tally.unreported,
            kind,
            now_s - tally.since_s,
            self.counts[kind],
        )
        tally.unreported = 0
        tally.since_s = now_s
