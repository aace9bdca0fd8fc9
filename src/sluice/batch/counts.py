"""What the parts a previous run committed hold: their rows, failed records and error files.

A resumed run skips the parts that already exist, yet its summary and verdict are the whole
job's. The counts come from the committed files themselves, which every engine writes the
same way and which outlive any process: a part's rows are its predicted rows (the Parquet
footer's count, or the data lines of a CSV or JSON Lines part) and its error file holds one
line per failed record. An error file is committed before its part, so a part that exists
has its whole error file beside it (or none, when no record failed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sluice.batch.layout import OutputLayout
from sluice.data.location import Location

__all__ = ["PartCounts", "committed_counts", "part_rows"]


@dataclass(frozen=True)
class PartCounts:
    """Rows, failed records and error files (URLs) of a set of committed parts."""

    rows: int = 0
    rows_failed: int = 0
    error_files: tuple[str, ...] = ()


def committed_counts(layout: OutputLayout, indices: Iterable[int]) -> PartCounts:
    """The counts of the committed parts ``indices`` of ``layout``, read from their files."""
    rows = failed = 0
    error_files: list[str] = []
    present = layout.error_file_names()  # one listing, not a request per part
    for index in sorted(indices):
        rows += part_rows(layout.part(index), layout.format)
        errors = layout.errors(index)
        if errors.path.rsplit("/", 1)[-1] in present:
            with errors.open("rb") as fh:
                failed += _lines(fh)
            error_files.append(errors.url)
    return PartCounts(rows, failed, tuple(error_files))


def part_rows(part: Location, fmt: str) -> int:
    """The predicted rows in the committed part ``part`` of format ``fmt``."""
    with part.open("rb") as fh:
        if fmt == "parquet":
            return int(pq.ParquetFile(fh).metadata.num_rows)
        if fmt == "jsonl":
            return _lines(fh)
        return _csv_rows(fh)


def _lines(fh: IO[Any]) -> int:
    # JSON encoding escapes newlines inside values, so each non-empty line is one record
    return sum(1 for line in fh if line.strip())


def _csv_rows(fh: IO[Any]) -> int:
    # the header is read as a row of generated column names and read as text, so no value
    # has to parse as a type; quoted values may span lines
    reader = pacsv.open_csv(
        fh,
        read_options=pacsv.ReadOptions(autogenerate_column_names=True),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(include_columns=["f0"], column_types={"f0": pa.string()}),
    )
    rows: int = sum(batch.num_rows for batch in reader)
    return max(rows - 1, 0)
