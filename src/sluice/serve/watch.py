"""``sluice serve --watch``: pick up repository changes without a restart.

:class:`RepositoryWatcher` polls the repository every ``interval_s`` seconds on the server's
event loop (one ``asyncio.sleep`` per poll, no busy loop). Per model it compares a
:data:`Snapshot` of ``model.yaml`` (mtime and size) and of the version directories (number and
mtime; copying a file into a version directory changes its mtime) with the previous poll,
and, for a model whose ``model.yaml`` has an MLflow registry ``source:``, the version its alias
names now (one registry call per poll: moving the alias rolls the model to the new version),
and asks :class:`~sluice.serve.host.ModelHost` (with ``--workers N``: every worker's, through
:mod:`sluice.serve.workers`) to reload a model that changed, load a new one,
or unload one whose directory is gone. The host swaps versions atomically; a model that
fails to reload keeps serving what it served, and its next change is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sluice.errors import SluiceError
from sluice.models.repository import ModelRepository

__all__ = ["ModelSnapshot", "RepositoryWatcher", "Snapshot", "WatchedHost", "changed_models", "snapshot"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSnapshot:
    """What the watcher compares for one model between polls."""

    config_stat: tuple[int, int] | None  # (mtime_ns, size) of model.yaml; None when absent
    versions: tuple[tuple[int, int], ...]  # (version, mtime_ns of its directory), ascending
    source_version: int | None = None  # the registry version a model.yaml `source:` names now


Snapshot = Mapping[str, ModelSnapshot]
_Action = Callable[[str], Awaitable[None]]


class WatchedHost(Protocol):
    """What the watcher drives: a :class:`~sluice.serve.host.ModelHost`, or the supervisor of
    ``sluice serve --workers N``, which applies each change in every worker."""

    @property
    def repository(self) -> ModelRepository: ...

    async def load(self, name: str) -> None: ...

    async def unload(self, name: str) -> None: ...


def snapshot(repository: ModelRepository) -> dict[str, ModelSnapshot]:
    """The current :class:`ModelSnapshot` of every model in ``repository``."""
    result: dict[str, ModelSnapshot] = {}
    for name in repository.names():
        directory = repository.root / name
        with contextlib.suppress(FileNotFoundError):  # removed while we looked: absent next time
            config_stat, versions = _stat(directory / "model.yaml"), _version_stats(directory)
            source = _source_version(repository, name) if config_stat and not versions else None
            result[name] = ModelSnapshot(config_stat, versions, source)
    return result


def _source_version(repository: ModelRepository, name: str) -> int | None:
    """The version a registry model's alias names now (None: no registry source, or it did not answer)."""
    try:
        return repository.refresh_source(name)
    except SluiceError as exc:  # a registry that is down is retried on the next poll
        log.warning("model '%s': cannot resolve its registry source: %s", name, exc)
        return None


def changed_models(before: Snapshot, after: Snapshot) -> tuple[list[str], list[str]]:
    """``(to_load, to_unload)``: models new or changed in ``after``, and models gone from it."""
    to_load = sorted(name for name, snap in after.items() if before.get(name) != snap)
    to_unload = sorted(name for name in before if name not in after)
    return to_load, to_unload


class RepositoryWatcher:
    """Polls ``host.repository`` and applies its changes to ``host``; see the module docstring."""

    def __init__(self, host: WatchedHost, *, interval_s: float = 1.0) -> None:
        self.host = host
        self.interval_s = interval_s
        self._last: dict[str, ModelSnapshot] = {}
        self._task: asyncio.Task[None] | None = None

    def prime(self) -> None:
        """Record the repository as it is now (call before the first load, so no change is missed)."""
        self._last = snapshot(self.host.repository)

    def start(self) -> None:
        """Start polling on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sluice-watch")

    async def stop(self) -> None:
        """Stop polling (a reload in progress is cancelled between steps)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll(self) -> None:
        """Compare the repository with the last poll and apply what changed."""
        current = await asyncio.to_thread(snapshot, self.host.repository)
        to_load, to_unload = changed_models(self._last, current)
        self._last = current
        for name in to_unload:
            log.info("model '%s' left the repository; unloading it", name)
            await self._apply(self.host.unload, name)
        for name in to_load:
            log.info("model '%s' changed in the repository; reloading it", name)
            await self._apply(self.host.load, name)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.poll()

    @staticmethod
    async def _apply(action: _Action, name: str) -> None:
        try:
            await action(name)
        except SluiceError as exc:
            log.error("model '%s' kept what it was serving; the change failed: %s", name, exc)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _version_stats(directory: Path) -> tuple[tuple[int, int], ...]:
    stats = [(int(p.name), p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return tuple(sorted(stats))
