"""Tuner quality: does ``tune``'s search choose as well as the exhaustive sweep, with far fewer measurements?

For the demo logistic regression and the 32→256→256→2 MLP, with no budget and with a latency budget
that binds, runs ``tune(...)`` (the search) and ``tune(..., sweep=True)`` (every thread set-up × every
power-of-two batch size) under the same constraints, and compares the search's choice with the
sweep's best. Because one measurement is noisy, both set-ups are then re-measured back to back.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from batch_throughput import DATA_DIR, demo_data, demo_model, mlp_model

from sluice.models.base import Model
from sluice.models.loader import load_model
from sluice.tune import Profile, Setup, load_sample, tune
from sluice.tune.measure import ModelBench
from sluice.tune.plot import write_plot

KEY = "id"
SAMPLE_ROWS = 1 << 16
REMEASURE_S = 0.5  # per re-measurement: twice the tuner's 0.25 s, for steadier medians


@dataclass(frozen=True)
class Run:
    """One search and one sweep of a model under one budget, and the back-to-back re-measurement."""

    model: str
    budget_ms: float | None
    search: Profile
    sweep: Profile
    search_s: float
    sweep_s: float
    remeasured: tuple[float, float]  # median rows/s of the search's choice, of the sweep's best

    @property
    def ratio(self) -> float:
        return _rate(self.search) / _rate(self.sweep) if _rate(self.sweep) else float("nan")

    @property
    def remeasured_ratio(self) -> float:
        return self.remeasured[0] / self.remeasured[1] if self.remeasured[1] else float("nan")

    @property
    def measurement_ratio(self) -> float:
        return len(self.search.measurements) / len(self.sweep.measurements)


def _rate(p: Profile) -> float:
    return p.chosen.rows_per_second if p.chosen else 0.0


def _short(p: Profile) -> str:
    s = p.chosen.setup if p.chosen else None
    return f"{s.batch_size}×{s.workers}×{s.intra_op_threads}" if s else "none"


def timed_tune(model: Model, data: Path, budget_ms: float | None, sweep: bool) -> tuple[Profile, float]:
    started = time.perf_counter()
    profile = tune(model, str(data), key_column=KEY, max_latency_ms=budget_ms, sample_rows=SAMPLE_ROWS, sweep=sweep)
    return profile, time.perf_counter() - started


def remeasure(model: Model, data: Path, setups: tuple[Setup, Setup], repeats: int) -> tuple[float, float]:
    """Median rows/s of both set-ups, measured alternately so drift in the machine hits both alike."""
    if setups[0] == setups[1]:
        return (1.0, 1.0)  # the same set-up: the ratio is 1 by definition, no need to measure
    sample = load_sample(model, str(data), rows=SAMPLE_ROWS, not_features=[KEY])
    bench = ModelBench(model.source, sample, min_seconds=REMEASURE_S)
    rates: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for rate, setup in zip(rates, setups, strict=True):
            rate.append(bench(setup).rows_per_second)
    return median(rates[0]), median(rates[1])


def binding_budget(unconstrained_sweep: Profile) -> tuple[float, str]:
    """Half the p99 of the unconstrained sweep's best: that set-up is then out, so the budget binds."""
    best = unconstrained_sweep.chosen
    if best is None or best.latency_p99_ms is None:
        raise SystemExit(f"the unconstrained sweep chose nothing: {unconstrained_sweep.reason}")
    budget = float(f"{best.latency_p99_ms / 2:.2g}")
    why = (
        f"{budget:g} ms = half the p99 ({best.latency_p99_ms:.2f} ms) of the unconstrained sweep's best "
        f"({_short(unconstrained_sweep)}), which it therefore excludes"
    )
    return budget, why


def compare(model: Model, name: str, data: Path, budget_ms: float | None, repeats: int) -> Run:
    search, search_s = timed_tune(model, data, budget_ms, sweep=False)
    sweep, sweep_s = timed_tune(model, data, budget_ms, sweep=True)
    chosen = (search.chosen, sweep.chosen)
    rates = (0.0, 0.0)
    if chosen[0] and chosen[1]:
        rates = remeasure(model, data, (chosen[0].setup, chosen[1].setup), repeats)
    return Run(name, budget_ms, search, sweep, search_s, sweep_s, rates)


def bench_model(name: str, model: Model, data: Path, runs: int, repeats: int, budget_ms: float | None) -> list[Run]:
    out = [compare(model, name, data, None, repeats)]
    why = "given with --max-latency-ms"
    if budget_ms is None:
        budget_ms, why = binding_budget(out[0].sweep)
    print(f"[{name}] latency budget {why}", flush=True)
    out.append(compare(model, name, data, budget_ms, repeats))
    for _ in range(runs - 1):
        out += [compare(model, name, data, b, repeats) for b in (None, budget_ms)]
    return out


HEADER = (
    f"{'model':<5} {'budget':>7} │ {'search':>11} {'rows/s':>10} {'meas':>4} {'wall s':>6} │ "
    f"{'sweep best':>11} {'rows/s':>10} {'meas':>4} {'wall s':>6} │ {'ratio':>5} {'meas':>5} {'re-meas':>7}"
)


def row(r: Run) -> str:
    budget = f"{r.budget_ms:g} ms" if r.budget_ms is not None else "none"
    remeasured = "same" if _short(r.search) == _short(r.sweep) else f"{r.remeasured_ratio:.2f}"
    return (
        f"{r.model:<5} {budget:>7} │ {_short(r.search):>11} {_rate(r.search):>10,.0f} {len(r.search.measurements):>4} "
        f"{r.search_s:>6.1f} │ {_short(r.sweep):>11} {_rate(r.sweep):>10,.0f} {len(r.sweep.measurements):>4} "
        f"{r.sweep_s:>6.1f} │ {r.ratio:>5.2f} {r.measurement_ratio:>5.2f} {remeasured:>7}"
    )


def print_report(runs: list[Run], rows: int, repeats: int) -> None:
    print(
        f"\nSearch vs exhaustive sweep: sample = first {SAMPLE_ROWS:,} of {rows:,} rows, {os.cpu_count()} cores. "
        f"Set-ups are batch×workers×threads; ratio = search choice ÷ sweep best rows/s as each run measured "
        f"it (target ≥ 0.95); meas = measurements search ÷ sweep (target ≤ 0.3); re-meas = the same ratio "
        f"re-measured back to back, alternating, median of {repeats} × {REMEASURE_S} s each.\n"
    )
    print(HEADER + "\n" + "─" * len(HEADER))
    for r in runs:
        print(row(r))
    print("\nWhy each choice (budgeted runs):")
    for r in runs:
        if r.budget_ms is not None:
            print(f"  {r.model} @ {r.budget_ms:g} ms  search: {r.search.reason}")
            print(f"  {r.model} @ {r.budget_ms:g} ms  sweep:  {r.sweep.reason}")
    remeasured = [r.remeasured_ratio for r in runs]
    search_n, sweep_n = (sum(len(getattr(r, k).measurements) for r in runs) for k in ("search", "sweep"))
    print(
        f"\nmedian ratio {median(r.ratio for r in runs):.2f}, re-measured {median(remeasured):.2f} "
        f"(worst {min(remeasured):.2f}); measurements {search_n} vs {sweep_n}; "
        f"tuning wall {sum(r.search_s for r in runs):.1f} s vs {sum(r.sweep_s for r in runs):.1f} s"
    )


def write_plots(runs: list[Run], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(runs, 1):
        budget = f"{r.budget_ms:g}ms" if r.budget_ms is not None else "none"
        for kind, profile in (("search", r.search), ("sweep", r.sweep)):
            write_plot(profile, folder / f"{i:02d}-{r.model}-{budget}-{kind}.html")
    print(f"Plots: {folder}/*.html")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows of demo data (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="200,000 rows, one run, re-measure 3 times")
    parser.add_argument("--runs", type=int, default=None, help="search+sweep runs per model and budget (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="re-measurements per set-up (default 5, quick 3)")
    parser.add_argument("--plots", type=Path, default=None, help="write each profile's HTML plot to this folder")
    parser.add_argument(
        "--max-latency-ms",
        action="append",
        default=[],
        metavar="MODEL=MS",
        help="a fixed budget, e.g. mlp=2 (default: half the p99 of the unconstrained sweep's best)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    runs = max(1, args.runs or (1 if args.quick else 2))
    repeats = max(1, args.repeats or (3 if args.quick else 5))
    budgets = {k: float(v) for k, v in (item.split("=", 1) for item in args.max_latency_ms)}
    data = demo_data(rows)
    demo_model()  # makes the repository the demo model is loaded from
    models = {"demo": load_model("demo", DATA_DIR / "models"), "mlp": load_model(str(mlp_model()))}
    results: list[Run] = []
    for name, model in models.items():
        try:
            results += bench_model(name, model, data, runs, repeats, budgets.get(name))
        finally:
            model.close()
    print_report(results, rows, repeats)
    if args.plots:
        write_plots(results, args.plots)
    print(f"\nTotal wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
