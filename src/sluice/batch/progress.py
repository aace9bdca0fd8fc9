"""Progress reporting: the engine calls a listener; the CLI decides how to show it."""

from __future__ import annotations

from typing import Protocol

from sluice.data.shards import Shard

__all__ = ["NullProgress", "ProgressListener"]


class ProgressListener(Protocol):
    def start(self, total_rows: int | None, shards: int, shards_skipped: int) -> None:
        """The run begins; ``total_rows`` is None when it cannot be known up front."""

    def advance(self, rows: int, rows_failed: int) -> None:
        """Records were written (``rows``) or set aside as errors (``rows_failed``)."""

    def shard_done(self, shard: Shard, rows: int, rows_failed: int) -> None:
        """A part was committed."""

    def finish(self) -> None:
        """The run ended (successfully or not)."""


class NullProgress:
    """Reports nothing: the default for library use."""

    def start(self, total_rows: int | None, shards: int, shards_skipped: int) -> None:
        pass

    def advance(self, rows: int, rows_failed: int) -> None:
        pass

    def shard_done(self, shard: Shard, rows: int, rows_failed: int) -> None:
        pass

    def finish(self) -> None:
        pass
