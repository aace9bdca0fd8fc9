"""The directory sink: one part per committed group, exactly once through one manifest.

A group's part and error file are first written, whole, under ``_pending/``. Then the manifest
``_stream.json`` is replaced atomically: it holds the number of committed groups, the source
position after the last of them and the running counts. That replacement is the commit. Last,
the part moves to ``part-NNNNN.parquet`` and its error file to ``_errors/errors-NNNNN.jsonl``.

On start, what the manifest covers but had not moved yet is moved (rolled forward) and
everything else under ``_pending/`` is dropped (rolled back), so readers only ever see
committed parts, each once, and the source resumes at the committed position. Every name
that is not a part starts with ``_`` or ``.``, so the directory reads as a dataset, as a batch
run's output does.

The files are written as a batch run writes its parts (:class:`~sluice.data.writers.AtomicFile`),
so the steps mean, on each kind of store:

- **Local directory**: a file is written under a hidden temporary name, fsynced and renamed;
  the manifest's rename (and the fsync of its folder) is the commit; a part moves by rename.
- **Object store** (``s3://`` and friends, through fsspec and the storage options): an object
  appears whole when its upload completes, so pending parts and the manifest are written to
  their keys directly; a PUT replaces the manifest whole, and that PUT is the commit. Object
  stores have no rename: a committed part is copied server-side to its place and the pending
  object deleted. Both steps are repeatable, so a crash between them only means the next start
  copies again. An upload a crash cut short never becomes an object at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from sluice.data.location import Location, resolve_location
from sluice.data.writers import AtomicFile, ErrorWriter, OutputFormat, PartWriter, error_name, part_name
from sluice.errors import ConfigError, OutputConflict
from sluice.stream.failpoints import StreamFailpoints

__all__ = ["MANIFEST", "METRICS", "PENDING", "Committed", "DirectorySink", "GroupOutput", "SinkGroup"]

MANIFEST = "_stream.json"
METRICS = "_stream_metrics.json"
PENDING = "_pending"


@dataclass(frozen=True)
class Committed:
    """What the sink holds: committed groups, the source position after them, and the counts."""

    groups: int = 0
    progress: Any = None
    records: int = 0
    records_failed: int = 0


class SinkGroup(Protocol):
    """The output of one group in flight, as the driver writes it."""

    rows: int
    schema: pa.Schema | None

    def write(self, table: pa.Table, errors: Sequence[Mapping[str, Any]]) -> None:
        """Add one micro-batch's predicted rows and error records."""

    def abort(self) -> None:
        """Drop the group's output."""


class GroupOutput:
    """The output of one group in flight: its part and its error file, under ``_pending/``."""

    def __init__(self, pending: Location, index: int, fmt: OutputFormat) -> None:
        location = pending
        self.index = index
        self.part = PartWriter(location.child(part_name(index, fmt)), fmt)
        self.errors = ErrorWriter(location.child(error_name(index).rsplit("/", 1)[-1]))
        self.schema: pa.Schema | None = None
        self.rows = 0

    def write(self, table: pa.Table, errors: Sequence[Mapping[str, Any]]) -> None:
        """Add one micro-batch's predicted rows and error records."""
        if self.schema is None:
            self.schema = table.schema
        if table.num_rows:
            self.part.write(table)
        self.errors.write(errors)
        self.rows += table.num_rows

    def abort(self) -> None:
        self.part.abort()
        self.errors.abort()


class DirectorySink:
    """A directory (local, or an object-store prefix) of Parquet or JSON Lines parts, one per committed group."""

    def __init__(
        self,
        uri: str,
        fmt: OutputFormat,
        failpoints: StreamFailpoints,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = resolve_location(uri, storage_options or None)
        self.fs = self.root.fs
        self.url = self.root.url
        self.pending = self.root.child(PENDING)
        self.format = fmt
        self.failpoints = failpoints
        self.committed = Committed()

    def open(self, fingerprint: Mapping[str, Any], overwrite: bool) -> Committed:
        """Prepare the directory: check the manifest, roll the pending files forward or back."""
        if self.root.is_local:
            os.makedirs(self.pending.path, exist_ok=True)
        elif self.fs.isfile(self.root.path):
            raise ConfigError(
                f"sink {self.url} is an object, not a prefix: name a directory, which will hold the parts"
            )
        manifest = self._read_manifest()
        if overwrite and manifest is not None:
            self._remove_outputs()
            manifest = None
        if manifest is None:
            if any(n.startswith("part-") for n in self._names(self.root)):
                raise OutputConflict(
                    f"{self.url} already holds part files that no stream recorded; pass `overwrite=True` "
                    "to replace them, or choose another sink",
                    params=("overwrite",),
                )
            manifest = {"fingerprint": dict(fingerprint), "groups": 0, "progress": None}
        elif manifest.get("fingerprint") != dict(fingerprint):
            raise OutputConflict(
                f"{self.url} holds the output of a different stream (other model, source or columns); "
                "pass `overwrite=True` to replace it, or choose another sink",
                params=("overwrite",),
            )
        self.fingerprint = dict(fingerprint)
        self.committed = Committed(
            int(manifest["groups"]),
            manifest.get("progress"),
            int(manifest.get("records", 0)),
            int(manifest.get("records_failed", 0)),
        )
        self._recover()
        return self.committed

    def begin(self) -> GroupOutput:
        """The output of the next group."""
        return GroupOutput(self.pending, self.committed.groups, self.format)

    def commit(self, output: SinkGroup, progress: Any, failed: int, empty_schema: pa.Schema) -> Committed:
        """Make ``output`` durable, commit it with the source's ``progress``, then publish it."""
        assert isinstance(output, GroupOutput)
        output.part.commit(output.schema or empty_schema)
        output.errors.commit()
        self.failpoints.hit("group.written")
        committed = Committed(
            output.index + 1,
            progress,
            self.committed.records + output.rows,
            self.committed.records_failed + failed,
        )
        self._write_manifest(committed)
        self.failpoints.hit("group.committed")
        self._publish(output.index)
        self.committed = committed
        self.failpoints.hit("group.published")
        return committed

    def write_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Replace ``_stream_metrics.json`` (whole, never half written)."""
        _write_json(self.root.child(METRICS), metrics)

    def close(self) -> None:
        pass

    # -- manifest and recovery --------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any] | None:
        where = self.root.child(MANIFEST)
        if not self.root.is_local:
            self.fs.invalidate_cache(self.root.path)  # another run may have written it since the last listing
        try:
            with where.open("rb") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise OutputConflict(f"{where.url} is not a readable stream manifest: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("groups"), int):
            raise OutputConflict(f"{where.url} is not a stream manifest: expected an object with `groups`")
        return data

    def _write_manifest(self, committed: Committed) -> None:
        _write_json(
            self.root.child(MANIFEST),
            {
                "fingerprint": self.fingerprint,
                "groups": committed.groups,
                "records": committed.records,
                "records_failed": committed.records_failed,
                "progress": committed.progress,
            },
        )

    def _recover(self) -> None:
        """Publish the pending files of committed groups; drop the rest (crashed temporaries too)."""
        for name in sorted(self._names(self.pending)):
            index = _index_of(name)
            if index is not None and index < self.committed.groups:
                self._publish(index)
            else:
                self.fs.rm(self.pending.child(name).path)
        if self.root.is_local:
            for name in os.listdir(self.root.path):
                if name.startswith(f".{MANIFEST}.tmp-") or name.startswith(f".{METRICS}.tmp-"):
                    os.remove(os.path.join(self.root.path, name))

    def _publish(self, index: int) -> None:
        part = part_name(index, self.format)
        errors = error_name(index)
        for name, target in ((part, part), (errors.rsplit("/", 1)[-1], errors)):
            source, destination = self.pending.child(name), self.root.child(target)
            if self.root.is_local:
                if os.path.exists(source.path):
                    os.makedirs(os.path.dirname(destination.path), exist_ok=True)
                    # not fsynced: a rename lost in a power cut leaves the file pending, and the
                    # next start moves it again
                    os.replace(source.path, destination.path)
            elif self.fs.exists(source.path):
                self.fs.copy(source.path, destination.path)  # server-side; the object appears whole
                self.fs.rm(source.path)

    def _names(self, folder: Location) -> list[str]:
        """The names directly in ``folder`` (none when an object-store prefix holds nothing yet)."""
        if not self.root.is_local:
            self.fs.invalidate_cache(folder.path)
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder.path, detail=False)]
        except FileNotFoundError:
            return []

    def _remove_outputs(self) -> None:
        for name in self._names(self.root):
            if name.startswith("part-") or name in (MANIFEST, METRICS):
                self.fs.rm(self.root.child(name).path)
        for folder in (self.pending, self.root.child("_errors")):
            for name in self._names(folder):
                self.fs.rm(folder.child(name).path)
        if self.root.is_local:
            os.makedirs(self.pending.path, exist_ok=True)


def _index_of(name: str) -> int | None:
    """The group index of a pending part or error file; None for a temporary file."""
    if name.startswith("."):
        return None
    stem = name.split(".", 1)[0]
    number = stem.rsplit("-", 1)[-1]
    return int(number) if number.isdigit() else None


def _write_json(where: Location, data: Mapping[str, Any]) -> None:
    target = AtomicFile(where)
    target.open().write((json.dumps(data, indent=2) + "\n").encode())
    target.commit()
