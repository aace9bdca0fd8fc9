"""The output directory: parts, error files, the job manifest, the summary and _SUCCESS.

The directory reads as a dataset: everything that is not predicted rows starts with ``_``
(``_summary.json``, ``_sluice_job.json``, ``_SUCCESS``, the ``_errors/`` folder) or ``.``
(temporary files), the names that pyarrow, pandas, Spark and Hive skip, so
``pandas.read_parquet(out)`` or ``spark.read.parquet(out)`` read exactly the predictions.
The error files live in ``_errors/`` rather than beside the parts so that a glob for the
parts (``out/*.jsonl`` with Polars, DuckDB or Python's ``glob``) never matches them.

The manifest (``_sluice_job.json``) records what produced the output. A re-run with the
same job skips the parts that already exist; a different job is refused unless the user
asks to overwrite, and overwriting removes only files Sluice writes. A re-run over an output
of the earlier layout (``summary.json`` and ``errors-00000.jsonl`` beside the parts) moves
those files to their current names first.

One run writes an output at a time: :meth:`OutputLayout.claim` locks it before anything is
prepared (``_sluice_lock``, see :mod:`sluice.batch.outputlock`). Inputs inside the output are
refused before any file is touched; an output path that is a file, a read-only directory or a
full disk is one :class:`~sluice.errors.OutputError` naming the path and the problem.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sluice.batch.outputlock import LOCK, OutputLock
from sluice.data.location import Location, resolve_location
from sluice.data.writers import AtomicFile, OutputFormat, error_name, output_error, part_name
from sluice.errors import OutputConflict, OutputError

__all__ = [
    "ERRORS_DIR",
    "ERROR_FILES",
    "LOCK",
    "MANIFEST",
    "SUCCESS",
    "SUMMARY",
    "OutputLayout",
    "current_name",
    "summary_file",
]

log = logging.getLogger(__name__)

MANIFEST = "_sluice_job.json"
SUMMARY = "_summary.json"
SUCCESS = "_SUCCESS"
ERRORS_DIR = "_errors"
ERROR_FILES = f"{ERRORS_DIR}/errors-*.jsonl"  # for messages
LEGACY_SUMMARY = "summary.json"

_PART = re.compile(r"^part-(\d{5})\.(parquet|csv|jsonl)$")
_NAMES = r"part-\d{5}\.(parquet|csv|jsonl)|_summary\.json|_SUCCESS|_sluice_job\.json"
# what an output written before the dataset layout holds beside its parts; still Sluice's to
# resume or remove
_LEGACY_NAMES = r"errors-\d{5}\.jsonl|summary\.json"
_LEGACY_ERRORS = re.compile(r"^errors-(\d{5})\.jsonl$")
_LEFTOVER = re.compile(rf"^\.({_NAMES}|{_LEGACY_NAMES})\.tmp-[0-9a-f]+$")
_OWNED = re.compile(rf"^({_NAMES}|{_LEGACY_NAMES})$")
# inside _errors/
_ERRORS_OWNED = re.compile(r"^errors-\d{5}\.jsonl$")
_ERRORS_LEFTOVER = re.compile(r"^\.errors-\d{5}\.jsonl\.tmp-[0-9a-f]+$")


def current_name(path: str) -> str:
    """``path`` with a file name of the earlier layout replaced by its current one.

    ``out/errors-00001.jsonl`` → ``out/_errors/errors-00001.jsonl``, ``out/summary.json`` →
    ``out/_summary.json``; any other path comes back unchanged.
    """
    head, sep, name = path.rpartition("/")
    match = _LEGACY_ERRORS.match(name)
    if match and not head.endswith(ERRORS_DIR):
        return f"{head}{sep}{error_name(int(match.group(1)))}"
    if name == LEGACY_SUMMARY:
        return f"{head}{sep}{SUMMARY}"
    return path


def summary_file(path: str | os.PathLike[str]) -> str:
    """The local summary file ``path`` names: a file itself, or an output directory's summary.

    The earlier name still works: ``DIR/summary.json`` gives ``DIR/_summary.json`` where
    only the current name exists, and a directory of the earlier layout gives its ``summary.json``.
    """
    text = os.fspath(path)
    if os.path.isdir(text):
        candidates = [os.path.join(text, SUMMARY), os.path.join(text, LEGACY_SUMMARY)]
    else:
        candidates = [text, current_name(text)]
    return next((c for c in candidates if os.path.isfile(c)), candidates[0])


class OutputLayout:
    """Names and prepares the files of one output directory."""

    def __init__(self, uri: str, fmt: OutputFormat, storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = resolve_location(uri, storage_options)
        self.format = fmt
        self.adopted: list[str] = []  # files of the earlier layout that were moved, by their new name
        self._lock: OutputLock | None = None

    def part(self, index: int) -> Location:
        return self.root.child(part_name(index, self.format))

    def errors(self, index: int) -> Location:
        return self.root.child(error_name(index))

    def create(self) -> None:
        """Make the output directory; an :class:`OutputError` names what stands in the way."""
        fs, path = self.root.fs, self.root.path
        if fs.isfile(path):
            raise OutputError(f"the output {self.root.url} is a file; name a directory, which will hold the parts")
        try:
            fs.makedirs(path, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = _file_above(path) if self.root.is_local else None
            raise OutputError(
                f"cannot create the output directory {self.root.url}: "
                + (f"{blocker} is a file" if blocker else "a file stands in its way")
            ) from None
        except OSError as exc:
            raise output_error(exc, self.root.url) from None

    def check_outside(self, inputs: Iterable[Location]) -> None:
        """Refuse input files inside the output directory, which preparing the output could delete."""
        root = _comparable(self.root)
        for location in inputs:
            found = _comparable(location)
            if found == root or found.startswith(root.rstrip("/") + "/"):
                raise OutputConflict(
                    f"the input file {location.url} is inside the output directory {self.root.url}; "
                    "the output would replace or mix with the input (`overwrite=True` deletes such "
                    "files). Choose an output directory outside the input",
                    params=("overwrite",),
                )

    def claim(self) -> OutputLock:
        """Make the directory and lock it for this run (see :mod:`sluice.batch.outputlock`).

        Raises :class:`~sluice.errors.OutputInUse` when another run is writing it. Release with
        :meth:`release`; :meth:`check_claim` tells whether another run has taken the output over.
        """
        self.create()
        lock = self._lock or OutputLock(self.root)
        try:
            lock.acquire()
        except OSError as exc:
            raise output_error(exc, self.root.url) from None
        self._lock = lock
        return lock

    def check_claim(self) -> None:
        """Raise :class:`~sluice.errors.OutputInUse` if another run took the claimed output over."""
        if self._lock is not None:
            self._lock.check()

    def release(self) -> None:
        """Give up this run's claim on the output (a no-op without one)."""
        if self._lock is not None:
            self._lock.release()

    def prepare(self, fingerprint: dict[str, Any], overwrite: bool) -> set[int]:
        """Make the directory ready; returns the indices of parts already complete."""
        self.create()
        try:
            return self._prepare(fingerprint, overwrite)
        except OSError as exc:
            raise output_error(exc, self.root.url) from None

    def _prepare(self, fingerprint: dict[str, Any], overwrite: bool) -> set[int]:
        existing = self._names()
        # temporary files of a run that crashed
        self._remove(n for n in existing if _LEFTOVER.match(n))
        self._remove(f"{ERRORS_DIR}/{n}" for n in self._names(ERRORS_DIR) if _ERRORS_LEFTOVER.match(n))
        if overwrite:
            self._remove(n for n in existing if _OWNED.match(n))
            self._remove_error_files()
            existing = set()
        if MANIFEST in existing:
            self._check_manifest(fingerprint)
            existing = self._adopt_legacy(existing)
        elif any(_PART.match(n) for n in existing):
            raise OutputConflict(
                f"{self.root.url} already holds part files that Sluice did not record; "
                "pass `overwrite=True` to replace them, or choose another output directory",
                params=("overwrite",),
            )
        else:
            self.write_json(MANIFEST, {"fingerprint": fingerprint})
        if SUCCESS in existing:
            self.root.fs.rm(self.root.child(SUCCESS).path)
        return self._done_parts(existing)

    def _check_manifest(self, fingerprint: dict[str, Any]) -> None:
        with self.root.child(MANIFEST).open("rb") as fh:
            previous = json.load(fh)
        if previous.get("fingerprint") != fingerprint:
            raise OutputConflict(
                f"{self.root.url} holds the output of a different job (other model, input or "
                "options); pass `overwrite=True` to replace it, or choose another output directory",
                params=("overwrite",),
            )

    def _done_parts(self, names: Iterable[str]) -> set[int]:
        done = set()
        for name in names:
            match = _PART.match(name)
            if match and match.group(2) == self.format:
                done.add(int(match.group(1)))
        return done

    def adopt_legacy(self) -> list[str]:
        """Move the files of the earlier layout to their current names; returns every file moved so far.

        An output written before the directory read as a dataset has ``summary.json`` and
        ``errors-NNNNN.jsonl`` beside its parts. A legacy file replaces a current one of the
        same name: only an older Sluice writing after a newer one leaves both, and then the
        legacy file is the later one.
        """
        self._adopt_legacy(self._names())
        return list(self.adopted)

    def _adopt_legacy(self, names: set[str]) -> set[str]:
        renamed = {n: current_name(n) for n in sorted(names) if current_name(n) != n}
        if any(_LEGACY_ERRORS.match(n) for n in renamed):
            self.root.fs.makedirs(self.root.child(ERRORS_DIR).path, exist_ok=True)
        for old, new in renamed.items():
            self.root.fs.mv(self.root.child(old).path, self.root.child(new).path)
            self.adopted.append(new)
        if renamed:
            log.warning(
                "%s was written by an earlier Sluice: moved %s so that the directory reads as a dataset",
                self.root.url,
                ", ".join(f"{old} to {new}" for old, new in renamed.items()),
            )
        return (names - renamed.keys()) | {n for n in renamed.values() if "/" not in n}

    def _names(self, folder: str | None = None) -> set[str]:
        """The names in the output directory, or in one of its folders."""
        where = self.root.child(folder) if folder else self.root
        try:
            return {p.rstrip("/").rsplit("/", 1)[-1] for p in self.root.fs.ls(where.path, detail=False)}
        except FileNotFoundError:  # an object-store prefix exists only once something is under it
            return set()

    def _remove_error_files(self) -> None:
        self._remove(f"{ERRORS_DIR}/{n}" for n in self._names(ERRORS_DIR) if _ERRORS_OWNED.match(n))
        folder = self.root.child(ERRORS_DIR)
        if self.root.is_local and folder.exists() and not self._names(ERRORS_DIR):
            self.root.fs.rmdir(folder.path)  # object stores have no empty folders to leave behind

    def _remove(self, names: Iterable[str]) -> None:
        for name in sorted(names):
            self.root.fs.rm(self.root.child(name).path)

    def error_file_names(self) -> set[str]:
        """The names in the error folder, from one listing (one request on an object store)."""
        return self._names(ERRORS_DIR)

    def remove_orphan_errors(self, indices: Iterable[int]) -> list[str]:
        """Remove the error files of parts ``indices``, which are not committed; returns their names.

        An error file is committed just before its part, so a run stopped between the two leaves
        one that no part owns; the part's next run writes it again only if records fail again.
        """
        present = self.error_file_names()
        names = [error_name(i) for i in sorted(indices) if error_name(i).rsplit("/", 1)[-1] in present]
        self._remove(names)
        return names

    def remove_leftovers(self, index: int) -> list[str]:
        """Remove the temporary files an earlier, crashed attempt at part ``index`` left; returns their names.

        Only local directories have them: object stores never show an upload that did not complete.
        """
        if not self.root.is_local or not self.root.exists():
            return []
        part = part_name(index, self.format)
        errors = error_name(index).rsplit("/", 1)[-1]
        prefixes = (f".{part}.tmp-", f".errors-{index:05d}.jsonl.tmp-")  # the second of the earlier layout
        top = sorted(n for n in self._names() if n.startswith(prefixes) and _LEFTOVER.match(n))
        inside = sorted(
            f"{ERRORS_DIR}/{n}"
            for n in self._names(ERRORS_DIR)
            if n.startswith(f".{errors}.tmp-") and _ERRORS_LEFTOVER.match(n)
        )
        self._remove(top + inside)
        return top + inside

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        target = AtomicFile(self.root.child(name))
        try:
            target.open().write((json.dumps(data, indent=2, sort_keys=False) + "\n").encode())
            target.commit()
        except OSError as exc:
            target.abort()
            raise output_error(exc, target.target.url) from None

    def mark_success(self) -> None:
        self.check_claim()
        target = AtomicFile(self.root.child(SUCCESS))
        try:
            target.open()
            target.commit()
        except OSError as exc:
            target.abort()
            raise output_error(exc, target.target.url) from None


def _file_above(path: str) -> str | None:
    """The nearest existing ancestor of local ``path`` that is a file, if any."""
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    return parent if os.path.isfile(parent) else None


def _comparable(location: Location) -> str:
    """``location`` as a string that is equal for the same file: a resolved path, or a URL."""
    return os.path.realpath(location.path) if location.is_local else location.url
