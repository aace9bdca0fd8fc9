"""Making sure an engine's processes end with it."""

from __future__ import annotations

import psutil

__all__ = ["ChildProcesses"]


class ChildProcesses:
    """The processes this one starts between :meth:`mark` and :meth:`reap` (JVM, raylet, workers)."""

    def __init__(self) -> None:
        self._before: set[int] = set()

    def mark(self) -> None:
        self._before = {p.pid for p in psutil.Process().children(recursive=True)}

    def started(self) -> list[psutil.Process]:
        return [p for p in psutil.Process().children(recursive=True) if p.pid not in self._before]

    @staticmethod
    def reap(processes: list[psutil.Process], timeout_s: float = 15.0) -> None:
        """Wait for ``processes`` to exit after their engine shut down; kill any that linger."""
        _, alive = psutil.wait_procs(processes, timeout=timeout_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(alive, timeout=5)
