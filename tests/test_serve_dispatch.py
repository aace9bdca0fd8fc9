"""The asyncio driver with a tiny real model: real loop, real worker thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping

import numpy as np
import pytest

from sluice.errors import DataError, Overloaded, PredictError, RequestTimeout
from sluice.serve.dispatch import Dispatcher, PredictFn
from sluice.serve.policy import AdaptivePolicy, FixedPolicy


class Doubler:
    """y = 2·x; records the batch sizes it saw."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batch_rows: list[int] = []
        self.threads: set[str] = set()
        self.on_loop = 0  # batches run on the calling (event loop) thread

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        self.on_loop += threading.current_thread() is threading.main_thread()
        self.batch_rows.append(len(inputs["x"]))
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"y": inputs["x"] * 2.0, "id": inputs["x"][:, :1].copy()}


def test_concurrent_requests_are_batched_and_scattered_correctly() -> None:
    model = Doubler(delay_s=0.002)

    async def main() -> list[dict[str, np.ndarray]]:
        dispatcher = Dispatcher(model, AdaptivePolicy(target_p99_ms=200, max_batch_size=16))
        requests = [np.full((1 + i % 3, 2), float(i)) for i in range(60)]
        results = await asyncio.gather(*(dispatcher.submit({"x": x}, rows=len(x)) for x in requests))
        await dispatcher.close()
        assert dispatcher.metrics.total.count == 60 and dispatcher.metrics.batch_rows.count == len(model.batch_rows)
        return results

    results = asyncio.run(main())
    for i, out in enumerate(results):
        assert out["y"].shape == (1 + i % 3, 2)
        np.testing.assert_array_equal(out["y"], np.full((1 + i % 3, 2), 2.0 * i))
    assert sum(model.batch_rows) == sum(1 + i % 3 for i in range(60))
    assert len(model.batch_rows) < 60 and max(model.batch_rows) <= 16 + 2
    assert model.on_loop <= 1  # a sleeping model is tried on the loop once at most, then kept off it


def _three_in_one_batch(predict: PredictFn) -> list[BaseException | dict[str, np.ndarray]]:
    async def main() -> list[BaseException | dict[str, np.ndarray]]:
        dispatcher = Dispatcher(predict, FixedPolicy(max_batch_size=3, max_queue_delay_us=200_000))
        calls = [dispatcher.submit({"x": np.ones((1, 2))}, rows=1) for _ in range(3)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await dispatcher.close()
        return results

    return asyncio.run(main())


def _good(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": inputs["x"]}


def test_wrong_row_count_fails_every_waiter_with_the_same_error() -> None:
    results = _three_in_one_batch(lambda inputs: {"y": inputs["x"][:-1]})
    assert all(isinstance(r, PredictError) for r in results)
    assert results[0] is results[1] is results[2]
    assert "returned 2 rows for output 'y' but the batch had 3 input rows from 3 requests" in str(results[0])
    assert isinstance(results[0], PredictError) and results[0].http_status == 500


def test_predict_exception_fails_every_waiter_and_the_server_goes_on() -> None:
    calls = {"n": 0}

    def flaky(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory")
        return {"y": inputs["x"]}

    async def main() -> None:
        dispatcher = Dispatcher(flaky, FixedPolicy(max_batch_size=2, max_queue_delay_us=200_000))
        failed = await asyncio.gather(
            *(dispatcher.submit({"x": np.ones((1, 1))}, rows=1) for _ in range(2)), return_exceptions=True
        )
        assert failed[0] is failed[1] and isinstance(failed[0], PredictError)
        assert "RuntimeError: CUDA out of memory" in str(failed[0])
        assert isinstance(failed[0].__cause__, RuntimeError)
        ok = await dispatcher.submit({"x": np.ones((2, 1))}, rows=2)
        assert ok["y"].shape == (2, 1) and dispatcher.metrics.failed_batches == 1
        await dispatcher.close()

    asyncio.run(main())


def test_good_model_answers_everyone() -> None:
    results = _three_in_one_batch(_good)
    assert all(isinstance(r, dict) and r["y"].shape == (1, 2) for r in results)


def test_timeout_answers_504_without_waiting_for_the_model() -> None:
    async def main() -> None:
        dispatcher = Dispatcher(Doubler(delay_s=0.3), FixedPolicy(max_batch_size=4, max_queue_delay_us=0))
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="timeout of 50 ms") as info:
            await dispatcher.submit({"x": np.ones((1, 1))}, rows=1, timeout_s=0.05)
        assert time.monotonic() - started < 0.25 and info.value.http_status == 504
        assert dispatcher.metrics.timed_out == 1
        await dispatcher.close()

    asyncio.run(main())


def test_overload_answers_503_at_once() -> None:
    async def main() -> None:
        dispatcher = Dispatcher(
            Doubler(delay_s=0.2), FixedPolicy(max_batch_size=2, max_queue_delay_us=0), max_queue_rows=2
        )
        first = asyncio.ensure_future(dispatcher.submit({"x": np.ones((2, 1))}, rows=2))
        await asyncio.sleep(0.05)  # first batch is now in flight
        queued = asyncio.ensure_future(dispatcher.submit({"x": np.ones((2, 1))}, rows=2))
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(Overloaded, match="queue full") as info:
            await dispatcher.submit({"x": np.ones((1, 1))}, rows=1)
        assert time.monotonic() - started < 0.05
        assert info.value.http_status == 503 and info.value.retry_after_s > 0
        assert (await first)["y"].shape == (2, 1) and (await queued)["y"].shape == (2, 1)
        assert dispatcher.metrics.shed == 1
        await dispatcher.close()
        with pytest.raises(Overloaded, match="shutting down"):
            await dispatcher.submit({"x": np.ones((1, 1))}, rows=1)

    asyncio.run(main())


def test_close_drains_the_queue_without_waiting_for_the_delay() -> None:
    async def main() -> None:
        dispatcher = Dispatcher(Doubler(), FixedPolicy(max_batch_size=64, max_queue_delay_us=10_000_000))
        pending = [asyncio.ensure_future(dispatcher.submit({"x": np.ones((1, 1))}, rows=1)) for _ in range(5)]
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await dispatcher.close()
        assert time.monotonic() - started < 1.0
        assert all(p.done() and p.result()["y"].shape == (1, 1) for p in pending)

    asyncio.run(main())


def test_inputs_that_cannot_be_concatenated_are_refused_per_request() -> None:
    async def main() -> None:
        dispatcher = Dispatcher(Doubler(), FixedPolicy(4, 0))
        with pytest.raises(DataError, match="expected 2 rows"):
            await dispatcher.submit({"x": np.ones((3, 1))}, rows=2)
        await dispatcher.submit({"x": np.ones((1, 2))}, rows=1)
        with pytest.raises(DataError, match="row shapes"):
            await dispatcher.submit({"x": np.ones((1, 3))}, rows=1)
        await dispatcher.close()

    asyncio.run(main())


def test_a_version_that_would_shed_one_row_refuses_before_any_work() -> None:
    model = Doubler(delay_s=0.03)

    async def main() -> None:
        dispatcher = Dispatcher(model, AdaptivePolicy(target_p99_ms=20, max_batch_size=4))
        for _ in range(2):  # teaches it: ~30 ms a batch, too long for the event loop (tried once)
            await dispatcher.submit({"x": np.ones((1, 2))}, rows=1)
        dispatcher.refuse_early()  # idle: always admitted
        running = asyncio.ensure_future(dispatcher.submit({"x": np.ones((1, 2))}, rows=1))
        await asyncio.sleep(0.005)  # in flight now: one more row would finish after ~60 ms
        with pytest.raises(Overloaded, match=r"^cannot meet the deadline: estimated \d+\.\d ms"):
            dispatcher.refuse_early()
        assert dispatcher.metrics.shed == 1
        await running
        await dispatcher.close()

    asyncio.run(main())
    assert model.batch_rows == [1, 1, 1]


def test_batches_that_compute_in_microseconds_run_on_the_loop_and_slow_ones_in_the_worker() -> None:
    fast, slow = Doubler(), Doubler(delay_s=0.003)

    async def run(model: Doubler) -> list[str]:
        dispatcher = Dispatcher(model, AdaptivePolicy(target_p99_ms=200, max_batch_size=16))
        names = []
        for i in range(5):  # one at a time: each is its own batch
            await dispatcher.submit({"x": np.full((1, 2), float(i))}, rows=1)
            names.append(model.threads.pop())
        await dispatcher.close()
        return names

    loop_thread = threading.current_thread().name
    # the first batch teaches the latency model; it runs in the worker since nothing is known
    names = asyncio.run(run(fast))
    assert names[0].startswith("sluice-predict") and names[1:] == [loop_thread] * 4
    # a sleeping model spends no CPU: it is tried on the loop once, and its wall time there
    # sends it back to the worker for good
    names = asyncio.run(run(slow))
    assert names[1] == loop_thread
    assert all(name.startswith("sluice-predict") for name in names[:1] + names[2:])


def test_a_dispatcher_that_must_not_block_the_loop_never_runs_there() -> None:
    model = Doubler()

    async def main() -> None:
        dispatcher = Dispatcher(model, AdaptivePolicy(target_p99_ms=200, max_batch_size=16), allow_inline=False)
        for i in range(5):
            await dispatcher.submit({"x": np.full((1, 2), float(i))}, rows=1)
        await dispatcher.close()

    asyncio.run(main())
    assert model.on_loop == 0 and all(name.startswith("sluice-predict") for name in model.threads)


def test_the_worker_runs_queued_batches_back_to_back_while_the_loop_is_busy() -> None:
    """A loop busy reading requests must not leave the model idle between batches."""
    calls: list[float] = []

    def predict(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(time.monotonic())
        time.sleep(0.005)
        return {"y": inputs["x"] * 2.0}

    async def main() -> tuple[list[dict[str, np.ndarray]], float]:
        dispatcher = Dispatcher(predict, FixedPolicy(max_batch_size=1, max_queue_delay_us=0), allow_inline=False)
        waiting = [asyncio.ensure_future(dispatcher.submit({"x": np.full((1, 2), float(i))}, rows=1)) for i in range(4)]
        while not calls:  # the first batch has started in the worker
            await asyncio.sleep(0.001)
        time.sleep(0.2)  # the loop is busy: it cannot start a batch, nor hand results back
        unblocked_s = time.monotonic()
        results = await asyncio.gather(*waiting)
        await dispatcher.close()
        return results, unblocked_s

    results, unblocked_s = asyncio.run(main())
    assert [r["y"].tolist() for r in results] == [[[2.0 * i, 2.0 * i]] for i in range(4)]
    assert len(calls) == 4 and all(started < unblocked_s for started in calls)
