"""The tuner's search and choice against synthetic throughput curves: pure logic, no model, no clock.

Each curve is a plain function of the set-up. The search is judged against the brute-force answer
(``choose`` over ``exhaustive``) on the same grid, and by how few set-ups it had to measure.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from sluice.tune.profile import Choice, Measurement, Setup
from sluice.tune.search import Constraints, SearchSpace, choose, exhaustive, search

MIB = 1 << 20
ONE = SearchSpace()  # one thread set-up, batch sizes 1..65536: 17 grid points
TUNE = SearchSpace(((8, 1), (1, 8), (4, 2)))  # what tune() tries on 8 cores: 51 grid points

Curve = Callable[[Setup], float]


def _latency_ms(s: Setup) -> float:
    return 1.0 + s.batch_size / 1000


def _memory_bytes(s: Setup) -> int:
    return 64 * MIB + s.batch_size * 4096


def _ok(s: Setup) -> str:
    return "ok"


def synthetic(
    rows_per_second: Curve,
    *,
    latency_ms: Curve = _latency_ms,
    memory_bytes: Callable[[Setup], int] = _memory_bytes,
    status: Callable[[Setup], str] = _ok,
) -> Callable[[Setup], Measurement]:
    """A measure function computed from formulas: the same set-up always gives the same figures."""

    def measure(s: Setup) -> Measurement:
        st = status(s)
        if st != "ok":
            return Measurement(s, st)  # type: ignore[arg-type]
        p99 = latency_ms(s)
        return Measurement(
            s,
            "ok",
            rows_per_second=rows_per_second(s),
            latency_p50_ms=p99 / 2,
            latency_p99_ms=p99,
            peak_memory_bytes=memory_bytes(s),
            batches=10,
        )

    return measure


class Recorder:
    """Wraps a measure function and remembers every call, in order."""

    def __init__(self, measure: Callable[[Setup], Measurement]) -> None:
        self.measure = measure
        self.calls: list[Setup] = []

    def __call__(self, s: Setup) -> Measurement:
        self.calls.append(s)
        return self.measure(s)


def run_and_compare(
    measure: Callable[[Setup], Measurement], space: SearchSpace, constraints: Constraints | None = None
) -> tuple[Choice, list[Setup], Choice]:
    """Search, check it found the brute-force optimum without repeating a set-up; (choice, visited, truth)."""
    recorder = Recorder(measure)
    measured = search(recorder, space, constraints)
    assert [m.setup for m in measured] == recorder.calls, "search returns what it measured, in order"
    assert len(set(recorder.calls)) == len(recorder.calls), "a set-up was measured twice"
    choice = choose(measured, constraints)
    truth = choose(exhaustive(measure, space), constraints)
    assert choice.measurement == truth.measurement
    return choice, recorder.calls, truth


def batches(setups: list[Setup]) -> list[int]:
    return [s.batch_size for s in setups]


def bell(peak_batch: int, width: float = 3.0, height: float = 1e5) -> Callable[[int], float]:
    """Unimodal in log2(batch): a cache effect with its best batch size at ``peak_batch``."""
    centre = math.log2(peak_batch)
    return lambda b: height * math.exp(-(((math.log2(b) - centre) / width) ** 2))


def rising(b: int) -> float:
    """Diminishing returns: the fixed cost per call is amortised, the curve flattens."""
    return 1e5 * b / (b + 256)


def rising_then_sagging(b: int) -> float:
    """Diminishing returns with a slight decline at very large batches (memory traffic)."""
    return rising(b) - 0.2 * b


def dip_then_peak(b: int) -> float:
    """A dip at 256 below the start batch's throughput, and a higher peak at 4096."""
    return bell(4096, width=4.0)(b) * (0.25 if b == 256 else 1.0)


def on_batch(curve: Callable[[int], float]) -> Curve:
    return lambda s: curve(s.batch_size)


# --- shapes, one thread set-up: exact visits ---------------------------------------------------


def test_diminishing_returns_climbs_to_the_top() -> None:
    choice, visited, _ = run_and_compare(synthetic(on_batch(rising)), ONE)
    assert choice.measurement is not None and choice.measurement.setup == Setup(65536)
    assert batches(visited) == [64, 256, 1024, 4096, 16384, 65536, 32768]
    assert "no budget bound the choice" in choice.reason


def test_diminishing_returns_with_a_sag_finds_the_knee() -> None:
    choice, visited, _ = run_and_compare(synthetic(on_batch(rising_then_sagging)), ONE)
    assert choice.measurement is not None and choice.measurement.setup == Setup(8192)
    assert batches(visited) == [64, 256, 1024, 4096, 16384, 65536, 8192]


def test_unimodal_peak_at_1024() -> None:
    choice, visited, _ = run_and_compare(synthetic(on_batch(bell(1024))), ONE)
    assert choice.measurement is not None and choice.measurement.setup == Setup(1024)
    assert batches(visited) == [64, 256, 1024, 4096, 16384, 512, 2048]


def test_one_dip_does_not_end_the_ladder() -> None:
    measure = synthetic(on_batch(dip_then_peak))
    assert measure(Setup(256)).rows_per_second < measure(Setup(64)).rows_per_second  # a real dip
    choice, visited, _ = run_and_compare(measure, ONE)
    assert choice.measurement is not None and choice.measurement.setup == Setup(4096)
    assert batches(visited) == [64, 256, 1024, 4096, 16384, 65536, 2048, 8192]


@pytest.mark.parametrize(
    ("peak", "visits"),
    [
        (128, [64, 256, 1024, 32, 128]),
        (2048, [64, 256, 1024, 4096, 16384, 512, 2048]),
    ],
)
def test_peak_between_ladder_points_is_found_by_the_climb(peak: int, visits: list[int]) -> None:
    choice, visited, _ = run_and_compare(synthetic(on_batch(bell(peak))), ONE)
    assert choice.measurement is not None and choice.measurement.setup == Setup(peak)
    assert batches(visited) == visits
    ladder = {64 * 4**i for i in range(6)}
    assert peak not in ladder


def test_out_of_memory_cliff() -> None:
    def status(s: Setup) -> str:
        return "oom" if s.batch_size > 8192 else "ok"

    choice, visited, _ = run_and_compare(synthetic(on_batch(rising), status=status), ONE)
    assert choice.measurement is not None and choice.measurement.setup == Setup(8192)
    assert batches(visited) == [64, 256, 1024, 4096, 16384, 2048, 8192]
    beyond = [b for b in batches(visited) if b > 8192]
    assert beyond == [16384], "only one step past the cliff"


def test_memory_limit_binds() -> None:
    def memory(s: Setup) -> int:
        return 50_000_000 + s.batch_size * 100_000

    limits = Constraints(memory_limit_bytes=1 << 30)  # fits up to batch 10,237
    choice, visited, _ = run_and_compare(synthetic(on_batch(rising), memory_bytes=memory), ONE, limits)
    assert choice.measurement is not None and choice.measurement.setup == Setup(8192)
    assert batches(visited) == [64, 256, 1024, 4096, 16384, 2048, 8192]
    assert choice.reason == (
        f"bound by memory: {Setup(16384).describe()} would be 2% faster "
        "but its peak memory 1,610 MiB > `memory_limit` 1,024 MiB"
    )


def test_latency_budget_binds() -> None:
    def p99(s: Setup) -> float:
        return 2.0 + s.batch_size * 0.05

    budget = Constraints(max_latency_ms=50)  # fits up to batch 960
    choice, visited, truth = run_and_compare(synthetic(on_batch(rising), latency_ms=p99), ONE, budget)
    assert choice.measurement is not None and choice.measurement.setup == Setup(512)
    assert batches(visited) == [64, 256, 1024, 128, 512]
    assert choice.reason == (
        f"bound by latency: {Setup(1024).describe()} would be 20% faster but its p99 53.20 ms > `max_latency_ms` 50"
    )
    assert truth.reason.startswith("bound by latency: ")


def test_latency_budget_below_the_start_batch_walks_down() -> None:
    def p99(s: Setup) -> float:
        return 2.0 + s.batch_size * 0.5

    budget = Constraints(max_latency_ms=10)  # fits up to batch 16; the start batch 64 takes 34 ms
    choice, visited, _ = run_and_compare(synthetic(on_batch(rising), latency_ms=p99), ONE, budget)
    assert choice.measurement is not None and choice.measurement.setup == Setup(16)
    assert batches(visited) == [64, 32, 16, 8]
    assert choice.reason.startswith("bound by latency: ")


def test_no_set_up_meets_the_latency_budget() -> None:
    def p99(s: Setup) -> float:
        return 20.0 + s.batch_size * 0.5

    budget = Constraints(max_latency_ms=10)
    choice, visited, truth = run_and_compare(synthetic(on_batch(rising), latency_ms=p99), ONE, budget)
    assert choice.measurement is None
    assert batches(visited) == [64, 32, 16, 8, 4, 2, 1]
    assert choice.reason.startswith("no set-up met the budgets: the lowest p99 was 20.50 ms")
    assert Setup(1).describe() in choice.reason
    assert truth.reason == choice.reason


def test_no_set_up_runs_at_all() -> None:
    def status(s: Setup) -> str:
        return "oom"

    choice, visited, _ = run_and_compare(synthetic(on_batch(rising), status=status), ONE)
    assert choice.measurement is None
    assert batches(visited) == [64, 32, 16, 8, 4, 2, 1]
    assert choice.reason == "no set-up ran successfully (oom)"


def test_errors_and_timeouts_are_unusable() -> None:
    base = synthetic(on_batch(bell(1024)))

    def measure(s: Setup) -> Measurement:
        if s.batch_size == 2048:  # a failed run must not count, whatever figures it carries
            return Measurement(s, "error", rows_per_second=1e9, latency_p99_ms=0.1, peak_memory_bytes=1)
        if s.batch_size >= 16384:
            return Measurement(s, "timeout", note="one batch took 30.0 s")
        return base(s)

    choice, visited, _ = run_and_compare(measure, ONE)
    assert choice.measurement is not None and choice.measurement.setup == Setup(1024)
    assert batches(visited) == [64, 256, 1024, 4096, 16384, 512, 2048]
    assert choice.reason.endswith("no budget bound the choice")
    only_failures = choose([measure(Setup(2048)), measure(Setup(16384))])
    assert only_failures == Choice(None, "no set-up ran successfully (error, timeout)")


# --- thread set-ups ----------------------------------------------------------------------------


def test_second_thread_set_up_wins_and_is_refined() -> None:
    curves = {(1, 1): bell(1024), (1, 2): bell(2048, height=1.5e5), (2, 1): bell(1024, height=1.2e5)}

    def rows_per_second(s: Setup) -> float:
        return curves[s.workers, s.intra_op_threads](s.batch_size)

    space = SearchSpace(((1, 1), (1, 2), (2, 1)))
    choice, visited, _ = run_and_compare(synthetic(rows_per_second), space)
    assert choice.measurement is not None and choice.measurement.setup == Setup(2048, 1, 2)
    assert visited == [
        *(Setup(b) for b in (64, 256, 1024, 4096, 16384, 512, 2048)),
        *(Setup(b, 1, 2) for b in (1024, 512, 2048, 4096)),  # wins at 1024, climbs to 2048
        Setup(2048, 2, 1),  # the last set-up is tried at the new best batch size only
    ]
    assert len(visited) <= 0.3 * len(exhaustive(synthetic(rows_per_second), space))


def test_other_thread_set_ups_are_tried_when_the_first_fits_nowhere() -> None:
    # (1, 1) misses a 10 ms budget even at batch 1; (1, 4) is faster per call and meets it up to 256.
    def rows_per_second(s: Setup) -> float:
        return rising(s.batch_size) * s.intra_op_threads

    def p99(s: Setup) -> float:
        return (20.0 + s.batch_size * 0.5) / s.intra_op_threads**2

    space = SearchSpace(((1, 1), (1, 4)))
    choice, _, truth = run_and_compare(synthetic(rows_per_second, latency_ms=p99), space, Constraints(10))
    assert truth.measurement is not None and truth.measurement.setup == Setup(256, 1, 4)
    assert choice.measurement == truth.measurement


# --- realistic shapes in tune()'s space: far fewer measurements than the grid ------------------

_SPEED = {(8, 1): 1.0, (1, 8): 0.7, (4, 2): 0.9}


def _threaded(curve: Callable[[int], float]) -> Curve:
    return lambda s: curve(s.batch_size) * _SPEED[s.workers, s.intra_op_threads]


def _oom_above_8192(s: Setup) -> str:
    return "oom" if s.batch_size > 8192 else "ok"


def _memory_linear(s: Setup) -> int:
    return 50_000_000 + s.batch_size * 100_000


def _latency_linear(s: Setup) -> float:
    return 2.0 + s.batch_size * 0.05


REALISTIC = {
    "diminishing returns": (synthetic(_threaded(rising_then_sagging)), None, 8192),
    "peak at 1024": (synthetic(_threaded(bell(1024))), None, 1024),
    "dip then peak at 4096": (synthetic(_threaded(dip_then_peak)), None, 4096),
    "peak at 128": (synthetic(_threaded(bell(128))), None, 128),
    "peak at 2048": (synthetic(_threaded(bell(2048))), None, 2048),
    "oom cliff": (synthetic(_threaded(rising), status=_oom_above_8192), None, 8192),
    "memory binds": (synthetic(_threaded(rising), memory_bytes=_memory_linear), Constraints(None, 1 << 30), 8192),
    "latency binds": (synthetic(_threaded(rising), latency_ms=_latency_linear), Constraints(50), 512),
}


@pytest.mark.parametrize("name", list(REALISTIC))
def test_realistic_shapes_need_under_a_third_of_the_grid(name: str) -> None:
    measure, constraints, best_batch = REALISTIC[name]
    choice, visited, _ = run_and_compare(measure, TUNE, constraints)
    assert choice.measurement is not None and choice.measurement.setup == Setup(best_batch, 8, 1)
    grid = len(exhaustive(measure, TUNE))
    assert grid == 51
    assert len(visited) <= 0.3 * grid


# --- bookkeeping -------------------------------------------------------------------------------


def test_overlapping_ladder_and_climb_never_measure_twice() -> None:
    # With a factor-2 ladder every climb step lands on a set-up the ladder already measured.
    space = SearchSpace(ladder_factor=2)
    choice, visited, _ = run_and_compare(synthetic(on_batch(bell(1024))), space)
    assert choice.measurement is not None and choice.measurement.setup == Setup(1024)
    assert batches(visited) == [64, 128, 256, 512, 1024, 2048, 4096]


def test_results_are_deterministic() -> None:
    measure = synthetic(_threaded(dip_then_peak))
    limits = Constraints(max_latency_ms=500)
    first, second = search(measure, TUNE, limits), search(measure, TUNE, limits)
    assert first == second
    assert choose(first, limits) == choose(second, limits)


def test_search_respects_the_batch_bounds() -> None:
    space = SearchSpace(min_batch=16, max_batch=512)
    choice, visited, _ = run_and_compare(synthetic(on_batch(rising)), space)
    assert choice.measurement is not None and choice.measurement.setup == Setup(512)
    assert all(16 <= b <= 512 for b in batches(visited))
    assert batches(visited) == [64, 256, 128, 512]


# --- Constraints.violation and SearchSpace.grid ------------------------------------------------


def _m(status: str = "ok", p99: float | None = 10.0, memory: int | None = 100) -> Measurement:
    return Measurement(Setup(64), status, rows_per_second=1.0, latency_p99_ms=p99, peak_memory_bytes=memory)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("constraints", "measurement", "expected"),
    [
        (Constraints(), _m(), None),
        (Constraints(), _m(p99=1e9, memory=1 << 40), None),
        (Constraints(10.0, 100), _m(), None),  # at the budget is within it
        (Constraints(9.99, None), _m(), "latency"),
        (Constraints(None, 99), _m(), "memory"),
        (Constraints(9.99, 99), _m(), "latency"),  # latency is reported first
        (Constraints(10.0, 100), _m(p99=None, memory=None), None),  # unknown figures do not count against
        (Constraints(), _m("oom"), "oom"),
        (Constraints(), _m("error"), "error"),
        (Constraints(), _m("timeout"), "timeout"),
        (Constraints(1e9, 1 << 40), _m("over_memory"), "over_memory"),
    ],
)
def test_constraints_violation(constraints: Constraints, measurement: Measurement, expected: str | None) -> None:
    assert constraints.violation(measurement) == expected


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (SearchSpace(), [1 << i for i in range(17)]),
        (SearchSpace(min_batch=16, max_batch=512), [16, 32, 64, 128, 256, 512]),
        (SearchSpace(min_batch=3, max_batch=100), [4, 8, 16, 32, 64]),
        (SearchSpace(min_batch=64, max_batch=64), [64]),
        (SearchSpace(min_batch=1, max_batch=1), [1]),
        (SearchSpace(min_batch=128, max_batch=64), []),
    ],
)
def test_search_space_grid(space: SearchSpace, expected: list[int]) -> None:
    assert space.grid() == expected


def test_exhaustive_measures_every_thread_set_up_at_every_grid_size() -> None:
    space = SearchSpace(((1, 1), (2, 1)), min_batch=4, max_batch=16)
    recorder = Recorder(synthetic(on_batch(rising)))
    measured = exhaustive(recorder, space)
    assert recorder.calls == [Setup(4), Setup(8), Setup(16), Setup(4, 2, 1), Setup(8, 2, 1), Setup(16, 2, 1)]
    assert [m.setup for m in measured] == recorder.calls


def test_a_thread_set_up_with_a_lower_latency_floor_climbs_past_a_binding_budget() -> None:
    """(2, 1) is faster per row but has a 0.2 ms p99 floor; under a tight budget (1, 2) fits
    four times larger batches and wins, although it loses at (2, 1)'s best batch size."""

    def fake(s: Setup) -> Measurement:
        fast = (s.workers, s.intra_op_threads) == (2, 1)
        rate = (1.0e6 if fast else 0.9e6) * min(s.batch_size, 512) / 512
        p99 = (0.2 if fast else 0.01) + s.batch_size / (1000 if fast else 2000)
        return Measurement(s, "ok", rate, p99 / 2, p99)

    space = SearchSpace(thread_setups=((2, 1), (1, 2)))
    constraints = Constraints(max_latency_ms=0.25)
    visited = search(fake, space, constraints)
    chosen = choose(visited, constraints).measurement
    assert chosen is not None and chosen.setup == Setup(256, 1, 2)
    assert chosen == choose(exhaustive(fake, space), constraints).measurement
    assert len(visited) == 9
