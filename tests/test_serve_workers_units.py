"""The pure parts of ``sluice serve --workers N``: merging /metrics, the restart backoff, the control link."""

from __future__ import annotations

import asyncio
import signal
import socket

import pytest

from sluice.errors import ModelNotFound
from sluice.serve.fleet_link import Link, LinkClosed, ModelChange, WorkerSpec, read_spec, write_spec
from sluice.serve.fleet_metrics import Retired, WorkerFigures, fleet_metrics_text, merge_metrics, render_families
from sluice.serve.processes import RestartBackoff, describe_exit

WORKER_0 = """\
# HELP sluice_requests_total Inference requests per model version.
# TYPE sluice_requests_total counter
sluice_requests_total{model="demo",version="1"} 7
# HELP sluice_queue_depth_requests Requests waiting in the batch queue.
# TYPE sluice_queue_depth_requests gauge
sluice_queue_depth_requests{model="demo",version="1"} 2
# HELP sluice_request_seconds Seconds from admission to result, per request.
# TYPE sluice_request_seconds histogram
sluice_request_seconds_bucket{model="demo",version="1",le="0.001"} 5
sluice_request_seconds_bucket{model="demo",version="1",le="+Inf"} 7
sluice_request_seconds_sum{model="demo",version="1"} 0.0125
sluice_request_seconds_count{model="demo",version="1"} 7
# HELP sluice_route_weight Current weight of each routed variant.
# TYPE sluice_route_weight gauge
sluice_route_weight{model="demo",version="1"} 90
"""

WORKER_1 = """\
# HELP sluice_requests_total Inference requests per model version.
# TYPE sluice_requests_total counter
sluice_requests_total{model="demo",version="1"} 5
sluice_requests_total{model="demo",version="2"} 1
# HELP sluice_queue_depth_requests Requests waiting in the batch queue.
# TYPE sluice_queue_depth_requests gauge
sluice_queue_depth_requests{model="demo",version="1"} 1
# HELP sluice_request_seconds Seconds from admission to result, per request.
# TYPE sluice_request_seconds histogram
sluice_request_seconds_bucket{model="demo",version="1",le="0.001"} 1
sluice_request_seconds_bucket{model="demo",version="1",le="+Inf"} 5
sluice_request_seconds_sum{model="demo",version="1"} 0.5
sluice_request_seconds_count{model="demo",version="1"} 5
# HELP sluice_route_weight Current weight of each routed variant.
# TYPE sluice_route_weight gauge
sluice_route_weight{model="demo",version="1"} 90
"""


def test_counters_histograms_and_queue_depths_add_up_other_gauges_stay_per_worker() -> None:
    text = render_families(merge_metrics({0: WORKER_0, 1: WORKER_1}).values())
    assert text == (
        "# HELP sluice_requests_total Inference requests per model version.\n"
        "# TYPE sluice_requests_total counter\n"
        'sluice_requests_total{model="demo",version="1"} 12\n'
        'sluice_requests_total{model="demo",version="2"} 1\n'
        "# HELP sluice_queue_depth_requests Requests waiting in the batch queue.\n"
        "# TYPE sluice_queue_depth_requests gauge\n"
        'sluice_queue_depth_requests{model="demo",version="1"} 3\n'
        "# HELP sluice_request_seconds Seconds from admission to result, per request.\n"
        "# TYPE sluice_request_seconds histogram\n"
        'sluice_request_seconds_bucket{model="demo",version="1",le="0.001"} 6\n'
        'sluice_request_seconds_bucket{model="demo",version="1",le="+Inf"} 12\n'
        'sluice_request_seconds_sum{model="demo",version="1"} 0.5125\n'
        'sluice_request_seconds_count{model="demo",version="1"} 12\n'
        "# HELP sluice_route_weight Current weight of each routed variant.\n"
        "# TYPE sluice_route_weight gauge\n"
        'sluice_route_weight{model="demo",version="1",worker="0"} 90\n'
        'sluice_route_weight{model="demo",version="1",worker="1"} 90\n'
    )


def test_a_retired_workers_counts_stay_in_the_fleet_counters() -> None:
    retired = Retired()
    retired.add(WORKER_0)  # worker 0 died; its replacement starts from zero
    restarted = '# TYPE sluice_requests_total counter\nsluice_requests_total{model="demo",version="1"} 2\n'
    merged = merge_metrics({0: restarted, 1: WORKER_1}, retired=retired)
    assert merged["sluice_requests_total"].samples[("sluice_requests_total", '{model="demo",version="1"}')] == 14
    assert (
        merged["sluice_request_seconds"].samples[("sluice_request_seconds_count", '{model="demo",version="1"}')] == 12
    )
    assert "sluice_queue_depth_requests" not in retired.families  # a dead worker's queue is no one's queue
    assert "sluice_route_weight" not in retired.families


def test_fleet_metrics_add_the_supervisors_figures_per_worker() -> None:
    workers = [WorkerFigures(0, 101, True, True, 2, WORKER_0), WorkerFigures(1, 102, False, False, 0, "")]
    text = fleet_metrics_text(workers)
    assert "sluice_workers 2\n" in text
    assert 'sluice_worker_up{worker="0",pid="101"} 1\nsluice_worker_up{worker="1",pid="102"} 0\n' in text
    assert 'sluice_worker_restarts_total{worker="0"} 2\n' in text
    assert 'sluice_worker_requests_total{worker="0",pid="101"} 7\n' in text
    assert 'sluice_requests_total{model="demo",version="1"} 7\n' in text  # worker 1 is down: its text is not summed


def test_quick_exits_double_the_pause_and_become_a_crash_loop() -> None:
    backoff = RestartBackoff(stable_after_s=30.0, first_delay_s=0.5, max_delay_s=4.0, crash_loop_exits=3)
    pauses = [backoff.next_delay_s(uptime_s=1.0) for _ in range(5)]
    assert pauses == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.crash_looping
    assert backoff.next_delay_s(uptime_s=45.0) == 0.0  # it ran long enough: at once, and the count starts over
    assert not backoff.crash_looping
    assert backoff.next_delay_s(uptime_s=1.0) == 0.5


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"


def test_the_spec_is_the_first_frame() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        write_spec(ours, WorkerSpec(slot=3, settings={"port": 8000}, unloaded=frozenset({"old"})))
        spec = read_spec(theirs)
    assert (spec.slot, spec.settings, spec.unloaded) == (3, {"port": 8000}, frozenset({"old"}))


def test_calls_answer_errors_cross_and_a_closed_link_fails_calls_in_flight() -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        told: list[object] = []
        hold = asyncio.Event()

        async def worker(message: object) -> object:
            if isinstance(message, ModelChange) and message.model == "missing":
                raise ModelNotFound("failed to load 'missing': no model of that name")
            if isinstance(message, ModelChange) and message.model == "slow":
                await hold.wait()
            told.append(message)
            return f"done {message}"

        async def supervisor(message: object) -> object:
            return None

        near = await Link.open(ours, supervisor, name="near")
        far = await Link.open(theirs, worker, name="far")
        readers = [asyncio.create_task(near.serve()), asyncio.create_task(far.serve())]
        assert await near.call(ModelChange("load", "demo")) == "done ModelChange(action='load', model='demo')"
        with pytest.raises(ModelNotFound, match="failed to load 'missing'"):
            await near.call(ModelChange("load", "missing"))
        near.tell(ModelChange("unload", "demo"))
        slow = asyncio.create_task(near.call(ModelChange("load", "slow")))
        await asyncio.sleep(0.05)
        far.close()
        with pytest.raises(LinkClosed, match="near closed before it answered"):
            await slow
        with pytest.raises(LinkClosed):
            await near.call(ModelChange("load", "demo"))
        assert ModelChange("unload", "demo") in told
        hold.set()
        near.close()
        await asyncio.gather(*readers)

    asyncio.run(main())
