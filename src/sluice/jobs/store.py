"""Opening the job store: where it lives and which implementation serves it.

:func:`open_store` opens :class:`~sluice.jobs.sqlite.SqliteJobStore` under :func:`default_home`.
The interface (:class:`~sluice.jobs.protocol.JobStore`) and the records it exchanges
(:mod:`sluice.jobs.records`) live below this module and the implementation, and are re-exported
here, so ``from sluice.jobs.store import JobStore, NewJob`` keeps working.
"""

from __future__ import annotations

import os
from pathlib import Path

from sluice.jobs.protocol import JobStore
from sluice.jobs.records import JobRecord, NewJob, NewShard, WorkerInfo
from sluice.jobs.sqlite import SqliteJobStore

__all__ = ["JobRecord", "JobStore", "NewJob", "NewShard", "WorkerInfo", "default_home", "open_store"]


def default_home() -> Path:
    """``$SLUICE_HOME``, or ``~/.sluice``."""
    return Path(os.environ.get("SLUICE_HOME") or Path.home() / ".sluice")


def open_store(home: str | os.PathLike[str] | None = None) -> JobStore:
    """The job store under ``home`` (default :func:`default_home`): ``jobs.db``, SQLite in WAL mode."""
    root = Path(home) if home is not None else default_home()
    return SqliteJobStore(root / "jobs.db")
