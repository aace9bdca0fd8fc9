"""The asyncio driver with a tiny real model: real loop, real worker thread, injected clock.

Time is a ``ManualClock`` that the event loop reads too (``ClockedLoop``), so the
dispatcher's timers fire when a test moves the clock, and a model "computes" by moving it.
Nothing here sleeps or compares wall-clock durations.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import numpy as np
import pytest

from serve_support import GUARD_S, Gate, ManualClock, run
from sluice.errors import DataError, Overloaded, PredictError, ProtocolError, RequestTimeout
from sluice.models.signature import Signature, TensorSpec
from sluice.serve.dispatch import Dispatcher, PredictFn, shape_key_of
from sluice.serve.policy import AdaptivePolicy, FixedPolicy


class Doubler:
    """y = 2·x; takes ``compute_s`` (+ ``per_row_s`` a row) of the clock; records its batches."""

    def __init__(
        self, clock: ManualClock, compute_s: float = 0.0, per_row_s: float = 0.0, gate: Gate | None = None
    ) -> None:
        self.clock = clock
        self.compute_s = compute_s
        self.per_row_s = per_row_s
        self.gate = gate
        self.batch_rows: list[int] = []
        self.threads: set[str] = set()
        self.on_loop = 0  # batches run on the calling (event loop) thread
        self.finished = 0

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.add(threading.current_thread().name)
        self.on_loop += threading.current_thread() is threading.main_thread()
        self.batch_rows.append(len(inputs["x"]))
        if self.gate is not None:
            self.gate.pass_through()
        self.clock.advance(self.compute_s + self.per_row_s * len(inputs["x"]))
        self.finished += 1
        return {"y": inputs["x"] * 2.0, "id": inputs["x"][:, :1].copy()}


def test_concurrent_requests_are_batched_and_scattered_correctly() -> None:
    clock = ManualClock()
    model = Doubler(clock, per_row_s=0.0002)

    async def main() -> list[dict[str, np.ndarray]]:
        dispatcher = Dispatcher(model, AdaptivePolicy(target_p99_ms=200, max_batch_size=16), clock=clock)
        requests = [np.full((1 + i % 3, 2), float(i)) for i in range(60)]
        results = await asyncio.gather(*(dispatcher.submit({"x": x}, rows=len(x)) for x in requests))
        await dispatcher.close()
        assert dispatcher.metrics.total.count == 60 and dispatcher.metrics.batch_rows.count == len(model.batch_rows)
        return results

    results = run(main(), clock)
    for i, out in enumerate(results):
        assert out["y"].shape == (1 + i % 3, 2)
        np.testing.assert_array_equal(out["y"], np.full((1 + i % 3, 2), 2.0 * i))
    assert sum(model.batch_rows) == sum(1 + i % 3 for i in range(60))
    assert len(model.batch_rows) < 60 and max(model.batch_rows) <= 16 + 2
    assert model.on_loop <= 1  # a model that takes time is tried on the loop once at most, then kept off it


def _three_in_one_batch(predict: PredictFn) -> list[BaseException | dict[str, np.ndarray]]:
    clock = ManualClock()

    async def main() -> list[BaseException | dict[str, np.ndarray]]:
        dispatcher = Dispatcher(predict, FixedPolicy(max_batch_size=3, max_queue_delay_us=200_000), clock=clock)
        calls = [dispatcher.submit({"x": np.ones((1, 2))}, rows=1) for _ in range(3)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await dispatcher.close()
        return results

    return run(main(), clock)


def _good(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": inputs["x"]}


def test_wrong_row_count_fails_every_waiter_with_the_same_error() -> None:
    results = _three_in_one_batch(lambda inputs: {"y": inputs["x"][:-1]})
    assert all(isinstance(r, PredictError) for r in results)
    assert results[0] is results[1] is results[2]
    assert str(results[0]) == (
        "model 'model' returned 2 rows of 'y' for a batch of 3 rows from 3 requests; every request in the batch fails"
    )
    assert isinstance(results[0], PredictError) and results[0].http_status == 500


def test_output_that_is_not_a_mapping_fails_every_waiter() -> None:
    results = _three_in_one_batch(lambda inputs: [inputs["x"]])
    assert results[0] is results[1] is results[2]
    assert str(results[0]) == "model 'model' returned list, expected a mapping of output name to array"


def test_predict_exception_fails_every_waiter_and_the_server_goes_on() -> None:
    clock = ManualClock()
    calls = {"n": 0}

    def flaky(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory")
        return {"y": inputs["x"]}

    async def main() -> None:
        dispatcher = Dispatcher(flaky, FixedPolicy(max_batch_size=2, max_queue_delay_us=200_000), clock=clock)
        failed = await asyncio.gather(
            *(dispatcher.submit({"x": np.ones((1, 1))}, rows=1) for _ in range(2)), return_exceptions=True
        )
        assert failed[0] is failed[1] and isinstance(failed[0], PredictError)
        assert "RuntimeError: CUDA out of memory" in str(failed[0])
        assert isinstance(failed[0].__cause__, RuntimeError)
        ok = await dispatcher.submit({"x": np.ones((2, 1))}, rows=2)
        assert ok["y"].shape == (2, 1) and dispatcher.metrics.failed_batches == 1
        await dispatcher.close()

    run(main(), clock)


def test_good_model_answers_everyone() -> None:
    results = _three_in_one_batch(_good)
    assert all(isinstance(r, dict) and r["y"].shape == (1, 2) for r in results)


def test_timeout_answers_504_without_waiting_for_the_model() -> None:
    clock = ManualClock()

    async def main() -> None:
        gate = Gate()
        model = Doubler(clock, gate=gate)
        dispatcher = Dispatcher(model, FixedPolicy(max_batch_size=4, max_queue_delay_us=0), clock=clock)
        gate.close()
        waiting = asyncio.ensure_future(dispatcher.submit({"x": np.ones((1, 1))}, rows=1, timeout_s=0.05))
        await gate.held.wait()  # the model is computing, and goes on until the gate opens
        clock.advance(0.049)
        await asyncio.sleep(0)
        assert not waiting.done()
        clock.advance(0.001)
        with pytest.raises(RequestTimeout, match="timeout of 50 ms") as info:
            await waiting
        assert info.value.http_status == 504 and dispatcher.metrics.timed_out == 1
        assert model.batch_rows == [1] and model.finished == 0  # answered while the model still computes
        gate.open()
        await dispatcher.close()

    run(main(), clock)


def test_overload_answers_503_at_once() -> None:
    clock = ManualClock()

    async def main() -> None:
        gate = Gate()
        model = Doubler(clock, gate=gate)
        dispatcher = Dispatcher(
            model, FixedPolicy(max_batch_size=2, max_queue_delay_us=0), max_queue_rows=2, clock=clock
        )
        gate.close()
        first = asyncio.ensure_future(dispatcher.submit({"x": np.ones((2, 1))}, rows=2))
        await gate.held.wait()  # the first batch is in flight, held in the model
        queued = asyncio.ensure_future(dispatcher.submit({"x": np.ones((2, 1))}, rows=2))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue full") as info:
            await dispatcher.submit({"x": np.ones((1, 1))}, rows=1)
        # refused while the batch ahead is still computing and no time has passed: at once
        assert clock() == 0.0 and model.batch_rows == [2] and not first.done()
        assert info.value.http_status == 503 and info.value.retry_after_s > 0
        gate.open()
        assert (await first)["y"].shape == (2, 1) and (await queued)["y"].shape == (2, 1)
        assert dispatcher.metrics.shed == 1
        await dispatcher.close()
        with pytest.raises(Overloaded, match="shutting down"):
            await dispatcher.submit({"x": np.ones((1, 1))}, rows=1)

    run(main(), clock)


def test_close_drains_the_queue_without_waiting_for_the_delay() -> None:
    clock = ManualClock()
    model = Doubler(clock)

    async def main() -> None:
        dispatcher = Dispatcher(model, FixedPolicy(max_batch_size=64, max_queue_delay_us=10_000_000), clock=clock)
        pending = [asyncio.ensure_future(dispatcher.submit({"x": np.ones((1, 1))}, rows=1)) for _ in range(5)]
        await asyncio.sleep(0)
        assert len(dispatcher.batcher) == 5 and not model.batch_rows  # waiting for the 10 s delay
        await dispatcher.close()
        assert clock() == 0.0  # the delay never passed
        assert all(p.done() and p.result()["y"].shape == (1, 1) for p in pending)

    run(main(), clock)
    assert model.batch_rows == [5]


def test_the_rows_a_request_declares_are_checked() -> None:
    clock = ManualClock()

    async def main() -> None:
        dispatcher = Dispatcher(Doubler(clock), FixedPolicy(4, 0), clock=clock)
        with pytest.raises(DataError, match=r"^input 'x' has shape \(3, 1\); expected 2 rows$"):
            await dispatcher.submit({"x": np.ones((3, 1))}, rows=2)
        await dispatcher.close()

    run(main(), clock)


def test_requests_of_other_shapes_run_in_their_own_batches() -> None:
    """No shape is kept from an earlier request: each width batches with its own kind only."""
    clock = ManualClock()
    widths: list[tuple[int, int]] = []

    def row_sums(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        widths.append(inputs["x"].shape)
        return {"y": inputs["x"].sum(axis=1)}

    async def main() -> list[dict[str, np.ndarray]]:
        dispatcher = Dispatcher(row_sums, FixedPolicy(max_batch_size=3, max_queue_delay_us=0), clock=clock)
        first = await dispatcher.submit({"x": np.ones((1, 2))}, rows=1)
        requests = [np.full((1, 2 + i % 2), float(i)) for i in range(6)]
        answers = await asyncio.gather(*(dispatcher.submit({"x": x}, rows=1) for x in requests))
        await dispatcher.close()
        return [first, *answers]

    answers = run(main(), clock)
    assert [a["y"].tolist() for a in answers] == [[2.0]] + [[float(i) * (2 + i % 2)] for i in range(6)]
    assert widths == [(1, 2), (3, 2), (3, 3)]  # widths 2 and 3 never share a batch


ROW_SUM = Signature((TensorSpec("x", np.dtype(np.float32), (-1, -1)),), (TensorSpec("y", np.dtype(np.float32), (-1,)),))
FOUR_WIDE = Signature(
    (TensorSpec("x", np.dtype(np.float32), (-1, 4)),), (TensorSpec("y", np.dtype(np.float32), (-1,)),)
)


def _row_sums(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": inputs["x"].sum(axis=1)}


def test_each_request_is_checked_against_the_signature() -> None:
    clock = ManualClock()

    async def main() -> None:
        dynamic = Dispatcher(_row_sums, FixedPolicy(4, 0), clock=clock, signature=ROW_SUM, model_name="sums")
        four = await dynamic.submit({"x": np.ones((2, 4), np.float32)}, rows=2)
        seven = await dynamic.submit({"x": np.ones((1, 7), np.float32)}, rows=1)
        assert (four["y"].tolist(), seven["y"].tolist()) == ([4.0, 4.0], [7.0])
        await dynamic.close()

        fixed = Dispatcher(_row_sums, FixedPolicy(4, 0), clock=clock, signature=FOUR_WIDE, model_name="sums")
        refusals = {
            "unexpected shape for input 'x' for model 'sums'. Expected [-1,4], got [1,7]": {
                "x": np.ones((1, 7), np.float32)
            },
            "inference input 'x' data-type is 'FP64', but model 'sums' expects 'FP32'": {"x": np.ones((1, 4))},
            "unexpected inference input 'z' for model 'sums'": {"z": np.ones((1, 4), np.float32)},
        }
        for message, inputs in refusals.items():
            with pytest.raises(ProtocolError) as info:
                await fixed.submit(inputs, rows=1)
            assert str(info.value) == message and info.value.http_status == 400
        assert len(fixed.batcher) == 0 and fixed.metrics.batch_rows.count == 0
        await fixed.close()

    run(main(), clock)


def test_inputs_the_decoder_checked_are_not_checked_again() -> None:
    clock = ManualClock()

    async def main() -> None:
        fixed = Dispatcher(_row_sums, FixedPolicy(4, 0), clock=clock, signature=FOUR_WIDE, model_name="sums")
        # checked against this dispatcher's own signature: trusted as they are
        trusted = await fixed.submit({"x": np.ones((1, 7), np.float32)}, rows=1, checked_against=FOUR_WIDE)
        assert trusted["y"].tolist() == [7.0]
        # checked against another signature (a shadow copy for another version): checked here
        with pytest.raises(ProtocolError) as info:
            await fixed.submit({"x": np.ones((1, 7), np.float32)}, rows=1, checked_against=ROW_SUM)
        assert str(info.value) == "unexpected shape for input 'x' for model 'sums'. Expected [-1,4], got [1,7]"
        await fixed.close()

    run(main(), clock)


def test_the_shape_key_is_constant_when_every_row_dimension_is_fixed() -> None:
    def key(signature: Signature | None, **inputs: np.ndarray) -> object:
        return shape_key_of(signature)(inputs)

    one, two = np.ones((1, 4), np.float32), np.ones((2, 4), np.float32)
    assert key(FOUR_WIDE, x=one) == key(FOUR_WIDE, x=two) == ()
    assert key(ROW_SUM, x=one) == key(ROW_SUM, x=two) == (((4,), "<f4"),)
    assert key(ROW_SUM, x=np.ones((1, 7), np.float32)) == (((7,), "<f4"),)
    words = Signature((TensorSpec("w", np.dtype(object), (-1,)),), (TensorSpec("y", np.dtype(np.float32), (-1,)),))
    assert key(words, w=np.array(["a"], dtype=object)) != key(words, w=np.array(["a"]))
    assert key(None, x=one, b=np.ones((1,), np.int64)) == (("b", (), "<i8"), ("x", (4,), "<f4"))


def test_outputs_are_checked_against_the_signature() -> None:
    clock = ManualClock()

    def no_y(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"z": inputs["x"]}

    async def missing() -> None:
        dispatcher = Dispatcher(no_y, FixedPolicy(4, 0), clock=clock, signature=ROW_SUM, model_name="sums")
        with pytest.raises(PredictError) as info:
            await dispatcher.submit({"x": np.ones((1, 4), np.float32)}, rows=1)
        assert str(info.value) == "model 'sums' returned no output 'y' (it returned ['z'])"
        await dispatcher.close()

    run(missing(), clock)


def test_a_version_that_would_shed_one_row_refuses_before_any_work() -> None:
    clock = ManualClock()

    async def main() -> Doubler:
        gate = Gate()
        model = Doubler(clock, compute_s=0.03, gate=gate)
        dispatcher = Dispatcher(model, AdaptivePolicy(target_p99_ms=20, max_batch_size=4), clock=clock)
        for _ in range(2):  # teaches it: 30 ms a batch, too long for the event loop (tried once)
            await dispatcher.submit({"x": np.ones((1, 2))}, rows=1)
        dispatcher.refuse_early()  # idle: always admitted
        gate.close()
        running = asyncio.ensure_future(dispatcher.submit({"x": np.ones((1, 2))}, rows=1))
        await gate.held.wait()  # in flight now: one more row would finish after 60 ms
        with pytest.raises(Overloaded, match=r"^cannot meet the deadline: estimated 60\.0 ms"):
            dispatcher.refuse_early()
        assert dispatcher.metrics.shed == 1
        gate.open()
        await running
        await dispatcher.close()
        return model

    model = run(main(), clock)
    assert model.batch_rows == [1, 1, 1]


def test_batches_that_compute_in_microseconds_run_on_the_loop_and_slow_ones_in_the_worker() -> None:
    clock = ManualClock()
    fast, slow = Doubler(clock), Doubler(clock, compute_s=0.003)

    async def main(model: Doubler) -> list[str]:
        dispatcher = Dispatcher(model, AdaptivePolicy(target_p99_ms=200, max_batch_size=16), clock=clock)
        names = []
        for i in range(5):  # one at a time: each is its own batch
            await dispatcher.submit({"x": np.full((1, 2), float(i))}, rows=1)
            names.append(model.threads.pop())
        await dispatcher.close()
        return names

    loop_thread = threading.current_thread().name
    # the first batch teaches the latency model; it runs in the worker since nothing is known
    names = run(main(fast), clock)
    assert names[0].startswith("sluice-predict") and names[1:] == [loop_thread] * 4
    # a model that waits spends no CPU: it is tried on the loop once, and its wall time there
    # sends it back to the worker for good
    names = run(main(slow), clock)
    assert names[1] == loop_thread
    assert all(name.startswith("sluice-predict") for name in names[:1] + names[2:])


def test_a_dispatcher_that_must_not_block_the_loop_never_runs_there() -> None:
    clock = ManualClock()
    model = Doubler(clock)

    async def main() -> None:
        dispatcher = Dispatcher(
            model, AdaptivePolicy(target_p99_ms=200, max_batch_size=16), allow_inline=False, clock=clock
        )
        for i in range(5):
            await dispatcher.submit({"x": np.full((1, 2), float(i))}, rows=1)
        await dispatcher.close()

    run(main(), clock)
    assert model.on_loop == 0 and all(name.startswith("sluice-predict") for name in model.threads)


def test_the_worker_runs_queued_batches_back_to_back_while_the_loop_is_busy() -> None:
    """A loop busy reading requests must not leave the model idle between batches."""
    clock = ManualClock()
    calls: list[float] = []
    all_ran = threading.Event()

    async def main() -> list[dict[str, np.ndarray]]:
        loop = asyncio.get_running_loop()
        started = asyncio.Event()

        def predict(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            calls.append(clock())
            loop.call_soon_threadsafe(started.set)
            if len(calls) == 4:
                all_ran.set()
            return {"y": inputs["x"] * 2.0}

        dispatcher = Dispatcher(
            predict, FixedPolicy(max_batch_size=1, max_queue_delay_us=0), allow_inline=False, clock=clock
        )
        waiting = [asyncio.ensure_future(dispatcher.submit({"x": np.full((1, 2), float(i))}, rows=1)) for i in range(4)]
        await started.wait()  # the first batch has started in the worker
        # the loop is busy from here: it can neither start a batch nor hand results back, so
        # the other three can only run if the worker chains them itself
        assert all_ran.wait(GUARD_S), f"the worker ran {len(calls)} of 4 batches while the loop was busy"
        results = await asyncio.gather(*waiting)
        await dispatcher.close()
        return results

    results = run(main(), clock)
    assert [r["y"].tolist() for r in results] == [[[2.0 * i, 2.0 * i]] for i in range(4)]
    assert len(calls) == 4
