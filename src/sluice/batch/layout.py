"""The output directory: parts, error files, the job manifest, summary.json and _SUCCESS.

The manifest (``_sluice_job.json``) records what produced the output. A re-run with the
same job skips the parts that already exist; a different job is refused unless the user
asks to overwrite, and overwriting removes only files Sluice writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from sluice.data.location import Location, resolve_location
from sluice.data.writers import AtomicFile, OutputFormat, part_name
from sluice.errors import OutputConflict

__all__ = ["OutputLayout"]

MANIFEST = "_sluice_job.json"
SUMMARY = "summary.json"
SUCCESS = "_SUCCESS"
_LEFTOVER = re.compile(
    r"^\.(part-\d{5}\.(parquet|csv|jsonl)|errors-\d{5}\.jsonl|summary\.json|_SUCCESS|_sluice_job\.json)\.tmp-[0-9a-f]+$"
)
_OWNED = re.compile(r"^(part-\d{5}\.(parquet|csv|jsonl)|errors-\d{5}\.jsonl|summary\.json|_SUCCESS|_sluice_job\.json)$")


class OutputLayout:
    def __init__(self, uri: str, fmt: OutputFormat, storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = resolve_location(uri, storage_options)
        self.format = fmt

    def part(self, index: int) -> Location:
        return self.root.child(part_name(index, self.format))

    def errors(self, index: int) -> Location:
        return self.root.child(f"errors-{index:05d}.jsonl")

    def prepare(self, fingerprint: dict[str, Any], overwrite: bool) -> set[int]:
        """Make the directory ready; returns the indices of parts already complete."""
        fs = self.root.fs
        fs.makedirs(self.root.path, exist_ok=True)
        existing = self._names()
        for name in sorted(n for n in existing if _LEFTOVER.match(n)):
            fs.rm(self.root.child(name).path)  # a temporary file of a run that crashed
        if overwrite:
            for name in sorted(n for n in existing if _OWNED.match(n)):
                fs.rm(self.root.child(name).path)
            existing = set()
        manifest = self.root.child(MANIFEST)
        if MANIFEST in existing:
            with manifest.open("rb") as fh:
                previous = json.load(fh)
            if previous.get("fingerprint") != fingerprint:
                raise OutputConflict(
                    f"{self.root.url} holds the output of a different job (other model, input or "
                    "options); pass `overwrite=True` to replace it, or choose another output directory",
                    params=("overwrite",),
                )
        elif any(_OWNED.match(n) and n.startswith("part-") for n in existing):
            raise OutputConflict(
                f"{self.root.url} already holds part files that Sluice did not record; "
                "pass `overwrite=True` to replace them, or choose another output directory",
                params=("overwrite",),
            )
        else:
            self.write_json(MANIFEST, {"fingerprint": fingerprint})
        if SUCCESS in existing:
            fs.rm(self.root.child(SUCCESS).path)
        done = set()
        for name in existing:
            match = re.match(r"^part-(\d{5})\.", name)
            if match and name.endswith("." + self.format):
                done.add(int(match.group(1)))
        return done

    def _names(self) -> set[str]:
        try:
            return {p.rsplit("/", 1)[-1] for p in self.root.fs.ls(self.root.path, detail=False)}
        except FileNotFoundError:  # an object-store prefix exists only once something is under it
            return set()

    def remove_leftovers(self, index: int) -> list[str]:
        """Remove the temporary files an earlier, crashed attempt at part ``index`` left; returns their names.

        Only local directories have them: object stores never show an upload that did not complete.
        """
        if not self.root.is_local or not self.root.exists():
            return []
        prefixes = (f".{self.part(index).path.rsplit('/', 1)[-1]}.tmp-", f".errors-{index:05d}.jsonl.tmp-")
        leftovers = sorted(n for n in self._names() if n.startswith(prefixes) and _LEFTOVER.match(n))
        for name in leftovers:
            self.root.fs.rm(self.root.child(name).path)
        return leftovers

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        target = AtomicFile(self.root.child(name))
        target.open().write((json.dumps(data, indent=2, sort_keys=False) + "\n").encode())
        target.commit()

    def mark_success(self) -> None:
        target = AtomicFile(self.root.child(SUCCESS))
        target.open()
        target.commit()
