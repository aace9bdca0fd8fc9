"""Locations: local paths and fsspec URIs, listed into input files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal

from sluice.errors import DataError, MissingDependency

__all__ = [
    "DataFormat",
    "InputFormat",
    "Location",
    "detect_format",
    "list_inputs",
    "resolve_location",
]

DataFormat = Literal["parquet", "csv", "jsonl"]
InputFormat = Literal["parquet", "csv", "jsonl", "image"]
"""A table format, or ``image``: one record per image file (:mod:`sluice.data.images`)."""
_COMPRESSION = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
_FORMATS: dict[str, DataFormat] = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}


@dataclass(frozen=True)
class Location:
    """A file or directory on some filesystem; ``fs`` is an fsspec filesystem."""

    fs: Any
    path: str

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol
        protocols = protocol if isinstance(protocol, tuple) else (protocol,)
        return "file" in protocols or "local" in protocols

    @property
    def url(self) -> str:
        return self.path if self.is_local else str(self.fs.unstrip_protocol(self.path))

    def child(self, name: str) -> Location:
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}")

    def open(self, mode: str = "rb") -> IO[Any]:
        return self.fs.open(self.path, mode)  # type: ignore[no-any-return]

    def exists(self) -> bool:
        return bool(self.fs.exists(self.path))


def resolve_location(uri: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> Location:
    """A local path or an fsspec URI (``s3://bucket/key``, ``memory://…``) as a :class:`Location`.

    ``storage_options`` go to the URI's filesystem (for ``s3://``: ``endpoint_url``, ``key``,
    ``secret``, ``client_kwargs``, …); without them fsspec's own defaults and the standard
    environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …) apply.
    """
    import fsspec

    text = os.fspath(uri)
    try:
        fs, path = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except ImportError as exc:
        scheme = text.split("://", 1)[0]
        package = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme, scheme)
        raise MissingDependency(package, "s3" if scheme == "s3" else scheme, f"Reading {scheme}:// URIs") from exc
    except ValueError as exc:
        raise DataError(f"{text} is not a usable location: {exc}") from exc
    return Location(fs, path)


def detect_format(path: str) -> tuple[DataFormat, str | None]:
    """The data format and compression of ``path``, from its extension."""
    name = path.rsplit("/", 1)[-1].lower()
    root, ext = os.path.splitext(name)
    compression = _COMPRESSION.get(ext)
    if compression:
        root, ext = os.path.splitext(root)
    fmt = _FORMATS.get(ext)
    if fmt is None:
        raise DataError(
            f"cannot tell the format of {path} from its extension; expected .parquet, .csv or "
            ".jsonl (optionally compressed), or pass `input_format`",
            params=("input_format",),
        )
    return fmt, compression


def compression_of(path: str) -> str | None:
    return _COMPRESSION.get(os.path.splitext(path.lower())[1])


def _visible(path: str, root: str) -> bool:
    """False for hidden and ``_`` files, and for files in such folders below ``root`` (``_errors/``)."""
    relative = path[len(root) :] if path.startswith(root) else path.rsplit("/", 1)[-1]
    return not any(part.startswith((".", "_")) for part in relative.strip("/").split("/"))


def list_inputs(
    uri: str | os.PathLike[str], fmt: DataFormat | None = None, storage_options: Mapping[str, Any] | None = None
) -> list[Location]:
    """The input files a path, directory, glob or URI names, sorted; hidden and ``_`` files and folders skipped."""
    text = os.fspath(uri)
    loc = resolve_location(text, storage_options)
    fs = loc.fs
    if any(ch in loc.path for ch in "*?["):
        paths = sorted(p for p in fs.glob(loc.path) if fs.isfile(p))
    elif fs.isdir(loc.path):
        paths = sorted(p for p in fs.find(loc.path) if _visible(p, loc.path))
        if fmt is None:
            paths = [p for p in paths if _has_known_extension(p)]
    elif fs.isfile(loc.path):
        paths = [loc.path]
    else:
        raise DataError(f"input {text} does not exist")
    if not paths:
        raise DataError(f"input {text} holds no data files (.parquet, .csv, .jsonl)")
    return [Location(fs, p) for p in paths]


def _has_known_extension(path: str) -> bool:
    try:
        detect_format(path)
    except DataError:
        return False
    return True
