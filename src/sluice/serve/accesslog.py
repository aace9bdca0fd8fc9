"""The server's structured access log: one JSON object per request, written off the hot path.

The request path only builds a small frozen record and puts it on a bounded queue
(:meth:`AccessLog.record`, a few microseconds); a writer thread turns records into JSON lines
and writes them in batches. When the writer falls behind and the queue is full, records are
dropped and counted rather than slowing requests down; the count is written when the log closes.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import TextIO

from sluice.errors import ConfigError

__all__ = ["AccessLog", "AccessRecord"]

_BATCH = 256


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One answered HTTP request."""

    time: float  # Unix seconds when the request arrived
    method: str
    path: str
    status: int
    duration_ms: float
    bytes_out: int
    client: str | None


class AccessLog:
    """Writes :class:`AccessRecord` as JSON lines to ``stream`` from its own thread."""

    def __init__(self, stream: TextIO, *, max_pending: int = 65536, owns_stream: bool = False) -> None:
        self._stream = stream
        self._owns_stream = owns_stream
        self._queue: queue.Queue[AccessRecord | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0

    @classmethod
    def open(cls, target: str) -> AccessLog:
        """A log to the file ``target`` (appended to), or to stderr for ``-``."""
        if target == "-":
            return cls(sys.stderr)
        try:
            return cls(open(target, "a", encoding="utf-8"), owns_stream=True)
        except OSError as exc:
            raise ConfigError(f"cannot open the access log {target}: {exc.strerror}") from None

    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_forever, name="sluice-access-log", daemon=True)
            self._thread.start()

    def record(self, record: AccessRecord) -> None:
        """Queue ``record`` for writing; never blocks (a full queue drops it and counts it)."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        """Write what is queued, then stop the writer thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join()
        self._thread = None
        if self.dropped:
            note = {"time": time.time(), "event": "access_log_dropped", "records": self.dropped}
            self._stream.write(json.dumps(note) + "\n")
        self._stream.flush()
        if self._owns_stream:
            self._stream.close()

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            records = [r for r in batch if r is not None]
            if records:
                self._stream.write("".join(json.dumps(asdict(r), separators=(",", ":")) + "\n" for r in records))
                self._stream.flush()
                self.written += len(records)
            if len(records) < len(batch):
                return
