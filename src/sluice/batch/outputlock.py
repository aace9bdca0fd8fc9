"""One run at a time per output directory: the ``_sluice_lock`` file and its owner.

Two runs writing one output at once would mix their parts under one manifest (one run's
``--overwrite`` deletes the other's files, the other keeps committing parts of its own job).
A run therefore claims the output before it prepares it, and holds the claim until it has
written ``_SUCCESS`` or stopped:

- **Local directories**: an exclusive ``flock`` on ``OUT/_sluice_lock``, taken without waiting.
  The kernel drops the lock when its process ends, however it ends (Ctrl-C, ``kill -9``, a
  crash), so a stale lock never blocks a later run; the file a crashed run leaves is only a
  record of who held it last. A run that finds the lock held stops at once with
  :class:`~sluice.errors.OutputInUse`, naming the process, host and start time the file records.
- **Object stores** (``s3://`` …) have no locks: the run writes its owner record (with a
  random token) to ``_sluice_lock`` and reads it back before committing each part and before
  writing the summary and ``_SUCCESS``. The most recent run to start owns the output; an
  earlier one still running stops at its next commit with :class:`~sluice.errors.OutputInUse`.
  A crashed run never blocks anyone, as nothing waits for a token. The check narrows mixing to
  a part committed in the instant between the check and its upload.

The file is removed when its holder releases the claim, so a finished output holds no lock file.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from typing import Any

from sluice.data.location import Location
from sluice.errors import OutputInUse

__all__ = ["LOCK", "OutputLock"]

LOCK = "_sluice_lock"


class OutputLock:
    """The claim of one run on one output directory; :meth:`acquire`, then :meth:`release`."""

    def __init__(self, root: Location) -> None:
        self.root = root
        self.file = root.child(LOCK)
        self.owner: dict[str, Any] = {
            "token": uuid.uuid4().hex,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._fd: int | None = None
        self._held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self) -> OutputLock:
        """Claim the output (its directory must exist); raises :class:`OutputInUse` if another run holds it."""
        if self._held:
            return self
        if self.root.is_local:
            self._fd = _lock_local(self.file.path, self.owner)
        else:
            _write_owner(self.file, self.owner)
        self._held = True
        return self

    def check(self) -> None:
        """Raise :class:`OutputInUse` if another run has taken the output over since :meth:`acquire`.

        Free on local directories (the ``flock`` excludes every other run); one read on object stores.
        """
        if not self._held or self.root.is_local:
            return
        current = _read_owner(self.file)
        if current.get("token") != self.owner["token"]:
            raise OutputInUse(
                f"{self.root.url} was taken over by another run ({_describe(current)}) while this run "
                "was writing it; this run stopped without committing more parts. The output is the other run's"
            )

    def release(self) -> None:
        """Give the claim up and remove the lock file (a no-op when not held)."""
        if not self._held:
            return
        self._held = False
        if self._fd is not None:
            # removed while still locked, so a run that opened the old file sees it is gone and retries
            with contextlib.suppress(OSError):  # gone already, or the directory became read-only
                os.unlink(self.file.path)
            os.close(self._fd)
            self._fd = None
            return
        with contextlib.suppress(OSError):
            if _read_owner(self.file).get("token") == self.owner["token"]:
                self.root.fs.rm(self.file.path)


def _lock_local(path: str, owner: dict[str, Any]) -> int:
    """An open, exclusively locked descriptor of the lock file at ``path``, holding ``owner``."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 4096, 0))
            os.close(fd)
            raise OutputInUse(
                f"{os.path.dirname(path)} is being written by another run ({_describe(holder)}); "
                "wait for it to end, or choose another output directory"
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed it on release: lock the file now at ``path`` instead
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
    return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _write_owner(target: Location, owner: dict[str, Any]) -> None:
    with target.open("wb") as fh:
        fh.write((json.dumps(owner) + "\n").encode())


def _read_owner(target: Location) -> dict[str, Any]:
    # never a cached listing or ETag: the point is to see what another run wrote since
    target.fs.invalidate_cache(target.path)
    try:
        return _parse(target.fs.cat_file(target.path))
    except FileNotFoundError:
        return {}


def _parse(data: bytes) -> dict[str, Any]:
    try:
        owner = json.loads(data)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict[str, Any]) -> str:
    """The owner record as a message shows it: ``pid 123 on host h, started 2026-01-01T00:00:00Z``."""
    if not owner.get("pid"):
        return "its owner is not recorded yet"
    return f"pid {owner['pid']} on host {owner.get('host', '?')}, started {owner.get('started', '?')}"
