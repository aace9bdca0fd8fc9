"""Image files as an input: a directory, prefix, glob or single file of encoded images.

Every file is one record of two columns: ``key``, the file's path relative to the input (``/``
separated), and ``image``, the file's bytes, undecoded: decoding belongs to the model, so batch
and serve decode alike. An input is read as images when it says so (``input_format: image``:
every visible file is an image) or when a directory holds image files (``.jpg``, ``.jpeg``,
``.png``, ``.webp``) and no table files. Files are listed once, sorted, with their sizes; a shard
is a run of consecutive files. A file that cannot be read (gone, no permission) is a
per-record failure naming its path; the other files of the shard go on.

Image columns of table inputs name their images by path or URI (:class:`ImageFetch`): a
relative path is resolved against the directory of the table file that holds it, a path with a
scheme (``s3://…``) through fsspec with the run's storage options.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from sluice.data.location import Location, resolve_location
from sluice.data.records import RecordFailure, SourceBatch
from sluice.errors import DataError

__all__ = [
    "IMAGE_BYTES_COLUMN",
    "IMAGE_EXTENSIONS",
    "IMAGE_SCHEMA",
    "IMAGE_SHARD_FILES",
    "ImageFetch",
    "ImageListing",
    "is_image_path",
    "list_images",
    "read_images",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
IMAGE_SCHEMA = pa.schema([pa.field("key", pa.string()), pa.field("image", pa.binary())])
# Most files one shard (one output part) holds: enough that a part's overhead is small, few
# enough that several shards are read at once and a resumed run redoes little.
IMAGE_SHARD_FILES = 1000
# The column an image-path column's file contents are read into, beside the paths themselves.
IMAGE_BYTES_COLUMN = "__sluice_image_bytes__"
_TABLE_EXTENSIONS = (".parquet", ".pq", ".csv", ".jsonl", ".ndjson", ".json")
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


def is_image_path(path: str) -> bool:
    """Whether ``path`` has an image file's extension."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _is_table_path(path: str) -> bool:
    lower = path.lower()
    for ext in _COMPRESSED:
        lower = lower.removesuffix(ext)
    return lower.endswith(_TABLE_EXTENSIONS)


@dataclass(frozen=True)
class ImageListing:
    """The image files of an input: the folder keys are relative to, and each file with its size."""

    root: Location
    files: tuple[str, ...]
    sizes: tuple[int, ...]

    def digest(self, start: int, stop: int) -> str:
        """A hash of the names and sizes of files ``start:stop``: a re-run's shard is the same
        shard only when it holds the same files."""
        h = hashlib.sha256()
        for path, size in zip(self.files[start:stop], self.sizes[start:stop], strict=True):
            h.update(f"{path}\0{size}\n".encode())
        return h.hexdigest()[:16]


def list_images(
    uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None, *, explicit: bool
) -> ImageListing | None:
    """The image files ``uri`` names, sorted; hidden and ``_`` files and folders are skipped.

    With ``explicit`` (``input_format: image``) every file is an image; without, the input is
    images only when it holds image files and no table files (else None: read it as tables).
    """
    text = os.fspath(uri)
    loc = resolve_location(text, storage_options)
    fs = loc.fs
    if any(ch in loc.path for ch in "*?["):
        root = loc.path[: min(loc.path.find(ch) for ch in "*?[" if ch in loc.path)].rsplit("/", 1)[0]
        found = fs.glob(loc.path, detail=True)
    elif fs.isdir(loc.path):
        root = loc.path
        found = fs.find(loc.path, detail=True)
    elif fs.isfile(loc.path):
        root = posixpath.dirname(loc.path.rstrip("/"))
        found = {loc.path: fs.info(loc.path)}
    else:
        raise DataError(f"input {text} does not exist")
    files = {p: info for p, info in found.items() if info.get("type") != "directory" and _visible(p, root)}
    if not explicit and (not any(map(is_image_path, files)) or any(map(_is_table_path, files))):
        return None
    paths = sorted(p for p in files if explicit or is_image_path(p))
    if not paths:
        raise DataError(f"input {text} holds no image files")
    sizes = tuple(int(files[p].get("size") or 0) for p in paths)
    return ImageListing(Location(fs, root.rstrip("/")), tuple(paths), sizes)


def _visible(path: str, root: str) -> bool:
    relative = path[len(root) :] if path.startswith(root) else path.rsplit("/", 1)[-1]
    return not any(part.startswith((".", "_")) for part in relative.strip("/").split("/"))


def _relative_key(root: str, path: str) -> str:
    """The key of the file at ``path``: its path below ``root``."""
    return path[len(root) :].lstrip("/") if root and path.startswith(root) else path.rsplit("/", 1)[-1]


def read_images(root: Location, files: Sequence[str], columns: Sequence[str], batch_size: int) -> Iterator[SourceBatch]:
    """``files`` (on ``root``'s filesystem) as batches of ``key`` and ``image``, in order; the
    record number of each is its position in ``files``. Unreadable files become failures."""
    for start in range(0, len(files), batch_size):
        chunk = list(files[start : start + batch_size])
        contents = _cat(root.fs, chunk)
        good: list[int] = []
        values: list[bytes] = []
        failures: list[RecordFailure] = []
        for i, path in enumerate(chunk):
            value = contents.get(path)
            if isinstance(value, bytes | bytearray):
                good.append(i)
                values.append(bytes(value))
                continue
            url = Location(root.fs, path).url
            reason = f"cannot read the image file {url}: {_describe(value)}"
            failures.append(RecordFailure(start + i, reason, "image", key=_relative_key(root.path, path), source=url))
        keys = [_relative_key(root.path, chunk[i]) for i in good]
        arrays = {"key": pa.array(keys, pa.string()), "image": pa.array(values, pa.binary())}
        batch = pa.RecordBatch.from_arrays([arrays[c] for c in columns], names=list(columns))
        yield SourceBatch(batch, np.asarray(good, dtype=np.int64) + start, failures)


def _cat(fs: Any, paths: list[str]) -> dict[str, object]:
    """Each file's bytes, or the exception reading it raised; object stores fetch them concurrently."""
    try:
        result = fs.cat(paths, on_error="return")
    except OSError:  # some filesystems stop at the first error: read the files one by one
        result = {p: _cat_one(fs, p) for p in paths}
    if not isinstance(result, dict):  # one path: fsspec returns its bytes
        result = {paths[0]: result}
    return result


def _cat_one(fs: Any, path: str) -> object:
    try:
        return fs.cat_file(path)
    except OSError as exc:
        return exc


def _describe(value: object) -> str:
    if isinstance(value, FileNotFoundError):
        return "the file does not exist"
    if isinstance(value, PermissionError):
        return "permission denied"
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return "no content was read"


class ImageFetch:
    """Reads the images a string column names into :data:`IMAGE_BYTES_COLUMN`, in the reader.

    A path with a scheme (``s3://bucket/a.jpg``, ``file:///…``) is read through fsspec with
    ``storage_options``; an absolute local path as it is; a relative path against the directory
    of the table file the row comes from (on that file's filesystem).
    """

    def __init__(
        self, column: str, storage_options: Mapping[str, Any] | None = None, key_column: str | None = None
    ) -> None:
        self.column = column
        self.storage_options = dict(storage_options or {})
        self.key_column = key_column  # names the record in its failure

    def attach(self, item: SourceBatch, table: Location) -> SourceBatch:
        """``item`` with the image bytes column added; rows whose image cannot be read fail.

        The batch's images are fetched together, per filesystem (an object store's concurrently)."""
        paths = item.batch.column(self.column).to_pylist()
        targets = [self._locate(path, table) for path in paths]
        contents = _fetch([t for t in targets if isinstance(t, Location)])
        values: list[bytes | None] = []
        failures = list(item.failures)
        keys = item.batch.column(self.key_column) if self.key_column in item.batch.schema.names else None
        for i, target in enumerate(targets):
            value = contents.get((id(target.fs), target.path)) if isinstance(target, Location) else target
            if isinstance(value, bytes | bytearray):
                values.append(bytes(value))
                continue
            values.append(None)
            reason = value if isinstance(value, str) else f"cannot read the image {paths[i]!r}: {_describe(value)}"
            key = keys[i].as_py() if keys is not None else None
            failures.append(RecordFailure(int(item.rows[i]), reason, self.column, key=key))
        column = pa.array(values, pa.binary())
        batch = item.batch.append_column(IMAGE_BYTES_COLUMN, column)
        if not column.null_count:
            return SourceBatch(batch, item.rows, failures)
        keep = column.is_valid()
        return SourceBatch(batch.filter(keep), item.rows[keep.to_numpy(zero_copy_only=False)], failures)

    def _locate(self, path: object, table: Location) -> Location | str:
        """Where the image ``path`` is, or why it cannot be read."""
        if not isinstance(path, str) or not path:
            return "missing value"
        if "://" in path:
            try:
                return resolve_location(path, self.storage_options)
            except DataError as exc:
                return f"cannot read the image {path!r}: {exc}"
        if os.path.isabs(path) and table.is_local:
            return Location(table.fs, path)
        return Location(table.fs, posixpath.join(posixpath.dirname(table.path), path))


def _fetch(locations: Sequence[Location]) -> dict[tuple[int, str], object]:
    """Each location's bytes (or the exception reading it), keyed by (filesystem id, path)."""
    groups: dict[int, tuple[Any, list[str]]] = {}
    for loc in locations:
        groups.setdefault(id(loc.fs), (loc.fs, []))[1].append(loc.path)
    found: dict[tuple[int, str], object] = {}
    for key, (fs, paths) in groups.items():
        unique = list(dict.fromkeys(paths))
        found.update({(key, path): value for path, value in _cat(fs, unique).items()})
    return found
