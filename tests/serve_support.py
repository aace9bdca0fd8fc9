"""Helpers of the batching tests: an injected clock that the event loop reads too, a gate that
holds a model's calls, and policies taught known latencies."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from sluice.serve.batcher import Batcher
from sluice.serve.policy import AdaptivePolicy

T = TypeVar("T")

GUARD_S = 60.0  # real seconds after which a stuck test fails instead of hanging the suite


class ManualClock:
    """Seconds that pass only when :meth:`advance` says so (from any thread)."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


class ClockedLoop(asyncio.SelectorEventLoop):
    """An event loop whose timers run on ``clock`` instead of the monotonic clock."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self._manual_clock = clock

    def time(self) -> float:
        return self._manual_clock()


def run(main: Coroutine[Any, Any, T], clock: ManualClock) -> T:
    """Run ``main`` on a :class:`ClockedLoop`; cancelled after ``GUARD_S`` real seconds."""
    with asyncio.Runner(loop_factory=lambda: ClockedLoop(clock)) as runner:
        loop = runner.get_loop()
        task = loop.create_task(main)
        guard = threading.Timer(GUARD_S, lambda: loop.call_soon_threadsafe(task.cancel))
        guard.start()
        try:
            return runner.run(_wait(task))
        finally:
            guard.cancel()


async def _wait(task: asyncio.Task[T]) -> T:
    return await task


class Gate:
    """Holds predict calls in the worker thread while closed, telling the loop one is held."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._open = threading.Event()
        self._open.set()
        self.held = asyncio.Event()

    def close(self) -> None:
        self._open.clear()
        self.held.clear()

    def open(self) -> None:
        self._open.set()

    def pass_through(self) -> None:
        if not self._open.is_set():
            self._loop.call_soon_threadsafe(self.held.set)
            assert self._open.wait(GUARD_S), "the gate was never opened"


def teach(batcher: Batcher[str], sizes_and_seconds: list[tuple[int, float]], now: float = 0.0) -> float:
    """Run one batch of each size for its seconds through ``batcher``; returns the time after."""
    for rows, seconds in sizes_and_seconds:
        batcher.add("warm", rows, now)
        batch = batcher.next_batch(now, drain=True)
        assert batch is not None
        now += seconds
        batcher.batch_done(batch, seconds)
    return now


def taught_adaptive(target_ms: float = 100.0) -> AdaptivePolicy:
    """An adaptive policy that has seen batches of 5 ms + 0.2 ms a row."""
    policy = AdaptivePolicy(target_p99_ms=target_ms, max_batch_size=64)
    for rows, seconds in [(1, 0.0052), (8, 0.0066), (32, 0.0114), (64, 0.0178)] * 4:
        policy.observe_batch(rows, seconds)  # 5 ms + 0.2 ms/row
    return policy
