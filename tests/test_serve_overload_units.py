"""Admission counts the time a request already spent on the server (pure batcher and dispatcher,
fake clock): its timeout and the latency target are budgets of its whole stay."""

from __future__ import annotations

import numpy as np
import pytest

from serve_support import ManualClock, run, taught_adaptive, teach
from sluice.errors import Overloaded, RequestTimeout
from sluice.serve.batcher import Batcher
from sluice.serve.dispatch import Dispatcher
from sluice.serve.policy import FixedPolicy


def _fixed_batcher() -> tuple[Batcher[str], float]:
    batcher: Batcher[str] = Batcher(FixedPolicy(8, 1000))
    return batcher, teach(batcher, [(1, 0.010), (8, 0.024)] * 3)  # latency = 8 ms + 2 ms/row


def test_the_time_waited_before_the_queue_is_taken_from_the_timeout() -> None:
    batcher, now = _fixed_batcher()
    assert batcher.estimate_completion_s(now, 1, key=()) == pytest.approx(0.010)
    with pytest.raises(Overloaded) as info:
        batcher.add("late", rows=1, now=now, timeout_s=0.030, waited_s=0.025)  # 25 + 10 > 30 ms
    assert str(info.value) == (
        "cannot meet the deadline: estimated 10.0 ms with 0 rows queued after 25.0 ms waited, budget 30.0 ms"
    )
    assert len(batcher) == 0
    request = batcher.add("in time", rows=1, now=now, timeout_s=0.030, waited_s=0.015)  # 15 + 10 ≤ 30 ms
    assert request.arrival_s == pytest.approx(now - 0.015)  # when it reached the server
    assert request.queued_s == now
    assert request.deadline_s == pytest.approx(now + 0.015)  # its timeout counts from its arrival


def test_a_request_whose_timeout_passed_before_the_queue_is_refused_504() -> None:
    batcher, now = _fixed_batcher()
    with pytest.raises(RequestTimeout) as info:
        batcher.add("gone", rows=1, now=now, timeout_s=0.030, waited_s=0.0305)
    assert str(info.value) == "the request's timeout of 30 ms passed before it could be queued (30 ms after it arrived)"
    assert info.value.http_status == 504
    assert len(batcher) == 0


def test_the_time_waited_is_taken_from_the_latency_target() -> None:
    batcher: Batcher[str] = Batcher(taught_adaptive(target_ms=100.0))  # plans for 90 ms
    now = 1.0
    batcher.add("ahead", rows=1, now=now)  # not idle: the target applies
    estimate_s = batcher.estimate_completion_s(now, 1, key=())
    room_s = 0.090 - estimate_s
    assert room_s > 0.002
    with pytest.raises(Overloaded, match=r"^cannot meet the deadline: estimated .* ms waited, budget 90\.0 ms$"):
        batcher.check_admission(1, now, key=(), waited_s=room_s + 0.001)
    batcher.check_admission(1, now, key=(), waited_s=room_s - 0.001)  # admitted
    batcher.check_admission(1, now, key=())


def test_an_idle_server_runs_a_request_that_waited_past_the_target() -> None:
    batcher: Batcher[str] = Batcher(taught_adaptive(target_ms=100.0))
    request = batcher.add("slow body", rows=1, now=1.0, waited_s=0.5)  # shedding it would help nobody
    assert request.arrival_s == pytest.approx(0.5)


def test_the_dispatcher_counts_a_timeout_refusal_as_timed_out_not_shed() -> None:
    clock = ManualClock()

    def double(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * 2}

    async def main() -> tuple[int, int]:
        dispatcher = Dispatcher(double, FixedPolicy(4, 0), clock=clock)
        with pytest.raises(RequestTimeout):
            dispatcher.refuse_early(0.010, waited_s=0.020)
        with pytest.raises(RequestTimeout):
            await dispatcher.submit({"x": np.ones((1, 2))}, rows=1, timeout_s=0.010, waited_s=0.010)
        answer = await dispatcher.submit({"x": np.ones((1, 2))}, rows=1, timeout_s=0.010, waited_s=0.005)
        assert answer["y"].tolist() == [[2.0, 2.0]]
        await dispatcher.close()
        return dispatcher.metrics.timed_out, dispatcher.metrics.shed

    assert run(main(), clock) == (2, 0)
