"""Worker processes that end when the process they work for ends, even by SIGKILL.

A model's worker processes are forked by multiprocessing's forkserver, not by the process that
uses them, and each holds the pipes that keep the forkserver and the resource tracker alive. A
parent killed with SIGKILL cannot shut them down, so they would wait for work forever and keep
the forkserver and the tracker with them. :func:`watch_owner`, called first in each worker:

- watches the owner (the process that created the pool) and exits the worker as soon as it is
  gone, through a pidfd on Linux (no polling), else by polling once a second;
- on Linux also asks the kernel to SIGKILL the worker when its forking parent (the forkserver,
  single-threaded, so "parent thread" and "parent process" are the same) dies.

Once the workers are gone, the forkserver sees its "alive" pipe close and exits, and so does the
resource tracker: nothing is left behind.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
from dataclasses import dataclass
from typing import NoReturn

__all__ = ["Owner", "watch_owner"]

_PR_SET_PDEATHSIG = 1
_POLL_S = 1.0


@dataclass(frozen=True)
class Owner:
    """A process, named by its pid and start time so that a recycled pid is not mistaken for it."""

    pid: int
    started_at: float

    @classmethod
    def current(cls) -> Owner:
        """This process."""
        import psutil

        return cls(os.getpid(), psutil.Process().create_time())

    def alive(self) -> bool:
        import psutil

        try:
            return abs(psutil.Process(self.pid).create_time() - self.started_at) < 1.0
        except psutil.Error:
            return False


def watch_owner(owner: Owner) -> None:
    """End this process (exit code 1) once ``owner`` has ended; returns at once."""
    _die_with_parent()
    pidfd = _open_pidfd(owner.pid)
    if not owner.alive():  # gone already, or its pid now belongs to another process
        _exit()
    if pidfd is not None:
        thread = threading.Thread(target=_wait_pidfd, args=(pidfd,), name="sluice-owner-watch", daemon=True)
    else:
        thread = threading.Thread(target=_poll, args=(owner,), name="sluice-owner-watch", daemon=True)
    thread.start()


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # no prctl here: the owner watch still ends this process


def _open_pidfd(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except ProcessLookupError:
        _exit()
    except OSError:
        return None  # kernel without pidfds (before 5.3), or not allowed: poll instead


def _wait_pidfd(pidfd: int) -> None:
    select.select([pidfd], [], [])  # readable once the process has exited
    _exit()


def _poll(owner: Owner) -> None:
    while owner.alive():
        threading.Event().wait(_POLL_S)
    _exit()


def _exit() -> NoReturn:
    # no clean-up: the owner that would collect results is gone, and a hung finaliser must not
    # keep this process alive
    os._exit(1)
