"""The output directory: parts, error files, the job manifest, the summary and _SUCCESS.

The directory reads as a dataset: every file that is not predicted rows starts with ``_``
(``_summary.json``, ``_errors-00000.jsonl``, ``_sluice_job.json``, ``_SUCCESS``) or ``.``
(temporary files), the names that pyarrow, pandas, Spark and Hive skip, so
``pandas.read_parquet(out)`` or ``spark.read.parquet(out)`` read exactly the predictions.
The error files sit beside the parts rather than in an ``_errors/`` folder because several
readers (Polars' ``hidden_file_prefix``, Sluice's own input listing) test only a file's own
name, not the folders above it.

The manifest (``_sluice_job.json``) records what produced the output. A re-run with the
same job skips the parts that already exist; a different job is refused unless the user
asks to overwrite, and overwriting removes only files Sluice writes. A re-run over an output
of the earlier layout (``summary.json``, ``errors-00000.jsonl``) renames those files to
their current names first.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from sluice.data.location import Location, resolve_location
from sluice.data.writers import AtomicFile, OutputFormat, error_name, part_name
from sluice.errors import OutputConflict

__all__ = ["ERROR_FILES", "MANIFEST", "SUCCESS", "SUMMARY", "OutputLayout", "current_name", "summary_file"]

log = logging.getLogger(__name__)

MANIFEST = "_sluice_job.json"
SUMMARY = "_summary.json"
SUCCESS = "_SUCCESS"
ERROR_FILES = "_errors-*.jsonl"
LEGACY_SUMMARY = "summary.json"

_PART = re.compile(r"^part-(\d{5})\.(parquet|csv|jsonl)$")
_NAMES = r"part-\d{5}\.(parquet|csv|jsonl)|_errors-\d{5}\.jsonl|_summary\.json|_SUCCESS|_sluice_job\.json"
# what an output written before the dataset layout holds; still Sluice's to resume or remove
_LEGACY_NAMES = r"errors-\d{5}\.jsonl|summary\.json"
_LEGACY_ERRORS = re.compile(r"^errors-(\d{5})\.jsonl$")
_LEFTOVER = re.compile(rf"^\.({_NAMES}|{_LEGACY_NAMES})\.tmp-[0-9a-f]+$")
_OWNED = re.compile(rf"^({_NAMES}|{_LEGACY_NAMES})$")


def current_name(path: str) -> str:
    """``path`` with a file name of the earlier layout replaced by its current one.

    ``out/errors-00001.jsonl`` → ``out/_errors-00001.jsonl``, ``out/summary.json`` →
    ``out/_summary.json``; any other path comes back unchanged.
    """
    head, sep, name = path.rpartition("/")
    match = _LEGACY_ERRORS.match(name)
    if match:
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
        self.adopted: list[str] = []  # files of the earlier layout that prepare() renamed, by new name

    def part(self, index: int) -> Location:
        return self.root.child(part_name(index, self.format))

    def errors(self, index: int) -> Location:
        return self.root.child(error_name(index))

    def prepare(self, fingerprint: dict[str, Any], overwrite: bool) -> set[int]:
        """Make the directory ready; returns the indices of parts already complete."""
        self.root.fs.makedirs(self.root.path, exist_ok=True)
        existing = self._names()
        self._remove(n for n in existing if _LEFTOVER.match(n))  # temporary files of a run that crashed
        if overwrite:
            self._remove(n for n in existing if _OWNED.match(n))
            existing = set()
        if MANIFEST in existing:
            self._check_manifest(fingerprint)
            existing = self._adopt_legacy(existing)
        elif any(_PART.match(n) for n in existing):
            raise OutputConflict(
                f"{self.root.url} already holds part files that Sluice did not record; "
                "pass --overwrite to replace them, or choose another output directory"
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
                "options); pass --overwrite to replace it, or choose another output directory"
            )

    def _done_parts(self, names: Iterable[str]) -> set[int]:
        done = set()
        for name in names:
            match = _PART.match(name)
            if match and match.group(2) == self.format:
                done.add(int(match.group(1)))
        return done

    def adopt_legacy(self) -> list[str]:
        """Rename the files of the earlier layout to their current names; returns the new names.

        An output written before the directory read as a dataset has ``summary.json`` and
        ``errors-NNNNN.jsonl`` beside its parts. A legacy file replaces a current one of the
        same name: only an older Sluice writing after a newer one leaves both, and then the
        legacy file is the later one.
        """
        self._adopt_legacy(self._names())
        return list(self.adopted)

    def _adopt_legacy(self, names: set[str]) -> set[str]:
        fs = self.root.fs
        renamed = {n: current_name(n) for n in sorted(names) if current_name(n) != n}
        for old, new in renamed.items():
            fs.mv(self.root.child(old).path, self.root.child(new).path)
            self.adopted.append(new)
        if renamed:
            log.warning(
                "%s: renamed %s so that the directory reads as a dataset",
                self.root.url,
                ", ".join(f"{old} to {new}" for old, new in renamed.items()),
            )
        return (names - renamed.keys()) | set(renamed.values())

    def _names(self) -> set[str]:
        try:
            return {p.rsplit("/", 1)[-1] for p in self.root.fs.ls(self.root.path, detail=False)}
        except FileNotFoundError:  # an object-store prefix exists only once something is under it
            return set()

    def _remove(self, names: Iterable[str]) -> None:
        for name in sorted(names):
            self.root.fs.rm(self.root.child(name).path)

    def remove_leftovers(self, index: int) -> list[str]:
        """Remove the temporary files an earlier, crashed attempt at part ``index`` left; returns their names.

        Only local directories have them: object stores never show an upload that did not complete.
        """
        if not self.root.is_local or not self.root.exists():
            return []
        names = (part_name(index, self.format), error_name(index), f"errors-{index:05d}.jsonl")
        prefixes = tuple(f".{name}.tmp-" for name in names)
        leftovers = sorted(n for n in self._names() if n.startswith(prefixes) and _LEFTOVER.match(n))
        self._remove(leftovers)
        return leftovers

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        target = AtomicFile(self.root.child(name))
        target.open().write((json.dumps(data, indent=2, sort_keys=False) + "\n").encode())
        target.commit()

    def mark_success(self) -> None:
        target = AtomicFile(self.root.child(SUCCESS))
        target.open()
        target.commit()
