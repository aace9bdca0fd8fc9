"""Environment variables for the engines Sluice starts itself, set only while they need them.

Sluice owns the local Spark and Ray instances it starts, so it keeps them on loopback and
quiet. A cluster the user joins is theirs: its settings, and this process's environment, are
left as they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["ScopedEnviron"]


class ScopedEnviron:
    """Variables set in ``os.environ`` from :meth:`apply` until :meth:`restore`.

    A variable the environment already sets is left alone: the user's own value wins, and
    :meth:`restore` removes only what :meth:`apply` added.
    """

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self._added: list[str] = []

    def apply(self) -> None:
        self._added = [name for name in self.values if name not in os.environ]
        for name in self._added:
            os.environ[name] = self.values[name]

    def restore(self) -> None:
        for name in self._added:
            os.environ.pop(name, None)
        self._added = []

    def __enter__(self) -> ScopedEnviron:
        self.apply()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
