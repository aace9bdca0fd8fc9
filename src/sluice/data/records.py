"""What a reader yields: batches of good records, with the record numbers and the failures."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

__all__ = ["RecordFailure", "SourceBatch"]


@dataclass(frozen=True)
class RecordFailure:
    """A record that failed: its record number in the source file, and why. ``source`` names the
    record's own file where that is not the shard's (an image of a directory of images)."""

    row: int | None
    message: str
    field: str | None = None
    line: int | None = None
    key: object = None
    source: str | None = None


@dataclass
class SourceBatch:
    """Good records as a batch, the record number of each, and the records set aside."""

    batch: pa.RecordBatch
    rows: np.ndarray  # record number (0-based, within the source file) of each row
    failures: list[RecordFailure] = field(default_factory=list)
