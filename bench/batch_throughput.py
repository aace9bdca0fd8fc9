"""Batch throughput: raw ONNX Runtime vs ``sluice.predict`` vs a naive pandas loop vs a per-row loop.

Two models (the demo logistic regression and a 32→256→256→2 MLP) predict the same Parquet data
four ways; rows/s and the ratio to raw ONNX Runtime are printed, then the CPU-work limit of a
64→512→512→16 MLP next to ``sluice predict`` (cpu_limit.py), then the peak RSS of
``sluice.predict`` on N and 4N rows, each in a fresh process. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
from cpu_limit import measure as measure_limit
from cpu_limit import print_limit

from sluice.batch import predict
from sluice.bench.models import write_mlp_onnx
from sluice.demo import feature_names, make_demo_data, make_demo_model
from sluice.models.repository import ModelRepository

DATA_DIR = Path(__file__).resolve().parent / ".data"
FEATURES = feature_names()
FILES = 8
CORES = os.cpu_count() or 1
BATCH_SIZES = (1024, 4096, 16384)
NAIVE_BATCH_ROWS = 256
PER_ROW_SAMPLE = 20_000
SWEEP_ROWS = 1 << 18  # rows per pass of (a): passes repeat until MIN_MEASURE_S has passed
MIN_MEASURE_S = 0.3
MLP_SEED = 20260101
MLP_WIDTHS = (len(FEATURES), 256, 256, 2)
MIB = 1 << 20


@dataclass(frozen=True)
class Measurement:
    method: str
    rows_per_s: float
    note: str = ""


@dataclass(frozen=True)
class ModelReport:
    name: str
    measurements: list[Measurement]
    sweep: dict[str, float]
    summary: dict[str, Any]


# -- inputs ----------------------------------------------------------------------------------


def demo_data(rows: int) -> Path:
    """The demo Parquet data set of ``rows`` rows (kept between runs)."""
    directory = DATA_DIR / f"rows-{rows}"
    make_demo_data(directory, rows=rows, files=FILES)
    return directory


def demo_model() -> Path:
    repository = DATA_DIR / "models"
    make_demo_model(repository)
    return Path(ModelRepository(repository).resolve("demo").location)


def mlp_model() -> Path:
    """A 32 → Gemm+Relu 256 → Gemm+Relu 256 → Gemm 2 → Softmax model with seeded random weights."""
    return write_mlp_onnx(DATA_DIR / "mlp.onnx", MLP_WIDTHS, MLP_SEED)


def load_features(directory: Path) -> np.ndarray:
    table = pq.read_table(directory, columns=FEATURES)
    return np.column_stack([table.column(f).to_numpy() for f in FEATURES]).astype(np.float32, copy=False)


def session(model: Path, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


# -- the four ways ---------------------------------------------------------------------------


def raw_rate(model: Path, x: np.ndarray, batch_rows: int, callers: int) -> float:
    """(a) rows/s of ``callers`` threads sharing one session, passing over in-memory batches for
    at least ``MIN_MEASURE_S`` after a warm-up."""
    sess = session(model, max(1, CORES // callers))
    feed = sess.get_inputs()[0].name
    sample = x[:SWEEP_ROWS]
    batches = [sample[i : i + batch_rows] for i in range(0, len(sample), batch_rows)]
    for b in batches[:3]:
        sess.run(None, {feed: b})

    def work(part: list[np.ndarray]) -> None:
        for b in part:
            sess.run(None, {feed: b})

    rows, start = 0, time.perf_counter()
    while rows == 0 or time.perf_counter() - start < MIN_MEASURE_S:
        threads = [threading.Thread(target=work, args=(batches[c::callers],)) for c in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows += len(sample)
    return rows / (time.perf_counter() - start)


def sweep_raw(model: Path, x: np.ndarray, repeats: int) -> dict[str, float]:
    setups = {f"1 session × {CORES} threads": 1, f"{CORES} callers × 1 thread": CORES}
    return {
        f"batch {size}, {label}": median(raw_rate(model, x, size, callers) for _ in range(repeats))
        for size in BATCH_SIZES
        for label, callers in setups.items()
    }


def sluice_in_child(model: Path, input_dir: Path, output: Path) -> dict[str, Any]:
    """(b) in a fresh process, so that its peak RSS is that run's own; returns its summary."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", str(model), str(input_dir), str(output)]
    stdout = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def sluice_run(model: str, input_dir: str, output: str) -> None:
    """The body of ``--rss-child``: one default ``sluice.predict``, its summary printed as JSON."""
    start = time.perf_counter()
    summary = predict(model, input_dir, output, overwrite=True, key_column="id", features=FEATURES)
    print(json.dumps({"wall_s": time.perf_counter() - start, **summary.to_dict()}))


def naive_rate(model: Path, input_dir: Path, output: Path) -> float:
    """(c) pandas read of everything, session.run per 256-row slice, outputs in a list, one write."""
    import pandas as pd  # type: ignore[import-untyped]

    start = time.perf_counter()
    df = pd.read_parquet(input_dir)
    sess = session(model)
    feed = sess.get_inputs()[0].name
    wanted = [o.name for o in sess.get_outputs()].index("probabilities")
    outputs = []
    for i in range(0, len(df), NAIVE_BATCH_ROWS):
        batch = df.iloc[i : i + NAIVE_BATCH_ROWS][FEATURES].to_numpy(dtype=np.float32)
        outputs.append(sess.run(None, {feed: batch})[wanted])
    probs = np.concatenate(outputs)
    columns = {f"p{j}": probs[:, j] for j in range(probs.shape[1])}
    pd.DataFrame({"id": df["id"].to_numpy(), **columns}).to_parquet(output)
    return len(df) / (time.perf_counter() - start)


def per_row_rate(model: Path, x: np.ndarray) -> float:
    """(d) session.run per single in-memory row over a sample; rows/s extrapolates to any size."""
    sess = session(model, 1)
    feed = sess.get_inputs()[0].name
    sample = x[:PER_ROW_SAMPLE]
    for i in range(100):
        sess.run(None, {feed: sample[i : i + 1]})
    start = time.perf_counter()
    for i in range(len(sample)):
        sess.run(None, {feed: sample[i : i + 1]})
    return len(sample) / (time.perf_counter() - start)


def bench_model(name: str, model: Path, input_dir: Path, x: np.ndarray, repeats: int) -> ModelReport:
    print(f"[{name}] (a) sweep …", flush=True)
    sweep = sweep_raw(model, x, repeats)
    best = max(sweep, key=sweep.__getitem__)
    out = DATA_DIR / "out" / name
    print(f"[{name}] (b) sluice.predict …", flush=True)
    runs = sorted((sluice_in_child(model, input_dir, out / "sluice") for _ in range(repeats)), key=wall_rate)
    summary = runs[len(runs) // 2]
    print(f"[{name}] (c) naive pandas loop …", flush=True)
    naive = median(naive_rate(model, input_dir, out / "naive.parquet") for _ in range(repeats))
    print(f"[{name}] (d) per-row loop …", flush=True)
    per_row = median(per_row_rate(model, x) for _ in range(repeats))
    measurements = [
        Measurement("(a) raw ONNX Runtime, in memory", sweep[best], f"best of sweep: {best}"),
        Measurement("(b) sluice.predict Parquet→Parquet", wall_rate(summary), "defaults, the whole call"),
        Measurement(
            "    … its engine (_summary.json)", float(summary["rows_per_second"]), "rows_per_second: after model load"
        ),
        Measurement("(c) naive pandas, 256-row batches", naive, "read all → loop → write"),
        Measurement("(d) per-row session.run", per_row, f"extrapolated from {min(len(x), PER_ROW_SAMPLE):,} rows"),
    ]
    return ModelReport(name, measurements, sweep, summary)


def wall_rate(run: dict[str, Any]) -> float:
    return float(run["rows"] / run["wall_s"])


# -- report ----------------------------------------------------------------------------------


def print_report(reports: list[ModelReport], rows: int, repeats: int) -> None:
    print(
        f"\nThroughput, {rows:,} rows × {len(FEATURES)} float32 features in {FILES} Parquet files, "
        f"{CORES} cores; median of {repeats}"
    )
    print(f"{'model':<6} {'method':<38} {'rows/s':>12} {'vs (a)':>7}  note\n{'-' * 120}")
    for report in reports:
        raw = report.measurements[0].rows_per_s
        for m in report.measurements:
            ratio = m.rows_per_s / raw
            shown = f"{ratio:.2f}" if ratio >= 0.01 else f"{ratio:.1e}"
            print(f"{report.name:<6} {m.method:<38} {m.rows_per_s:>12,.0f} {shown:>7}  {m.note}")
    for report in reports:
        s = report.summary
        print(f"\n[{report.name}] (a) sweep, rows/s:")
        for label, rate in report.sweep.items():
            print(f"    {label:<36} {rate:>12,.0f}")
        same = report.sweep.get(f"batch {s['batch_size']}, {s['workers']} callers × 1 thread")
        if same:
            print(
                f"[{report.name}] (b) engine vs (a) at (b)'s own set-up (batch {s['batch_size']}, "
                f"{s['workers']} callers × 1 thread): {s['rows_per_second'] / same:.2f}"
            )
        print(
            f"[{report.name}] (b) summary: rows/s {s['rows_per_second']:,.0f} (engine only; table uses wall "
            f"{s['wall_s']:.2f} s incl. model load), workers {s['workers']}, batch {s['batch_size']}, "
            f"stage_busy_fraction {s['stage_busy_fraction']}, cpu_utilization {s['cpu_utilization']}, "
            f"peak_rss_bytes {s['peak_rss_bytes'] / MIB:,.0f} MiB"
        )


def rss_check(model: Path, rows: int, base: dict[str, Any]) -> None:
    """Peak RSS of (b) on ``rows`` and on 4 × ``rows`` rows, each in its own fresh process."""
    big_rows = 4 * rows
    print(f"\n[rss] generating/using {big_rows:,}-row data and running (b) on it …", flush=True)
    big = sluice_in_child(model, demo_data(big_rows), DATA_DIR / "out" / "rss-big")
    print("Peak RSS of (b) (summary's peak_rss_bytes), demo model, each run in a fresh process:")
    for n, run in ((rows, base), (big_rows, big)):
        print(f"    {n:>10,} rows  {run['peak_rss_bytes'] / MIB:>6,.0f} MiB  {wall_rate(run):>10,.0f} rows/s")
    ratio = big["peak_rss_bytes"] / max(1, base["peak_rss_bytes"])
    print(f"    ratio {ratio:.2f} (target ≤ 1.25)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows of input data (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="200,000 rows (unless --rows) and no RSS check")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure, median shown (default 3, quick 1)")
    parser.add_argument("--skip-rss", action="store_true", help="skip the N vs 4N rows peak-RSS check")
    parser.add_argument("--mlp-only", action="store_true", help="only the CPU-work limit of the 64→512→512→16 MLP")
    parser.add_argument("--skip-limit", action="store_true", help="skip the CPU-work limit of the 64→512→512→16 MLP")
    parser.add_argument("--rss-child", nargs=3, metavar=("MODEL", "INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rss_child:
        sluice_run(*args.rss_child)
        return
    started = time.perf_counter()
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    repeats = max(1, args.repeats or (1 if args.quick else 3))
    if args.mlp_only:
        print_limit(measure_limit(DATA_DIR, rows, repeats))
        print(f"\nTotal wall time {time.perf_counter() - started:.1f} s")
        return
    input_dir = demo_data(rows)
    models = {"demo": demo_model(), "mlp": mlp_model()}
    x = load_features(input_dir)
    reports = [bench_model(name, path, input_dir, x, repeats) for name, path in models.items()]
    print_report(reports, rows, repeats)
    demo = reports[0].measurements
    print(f"\n[demo] (b) sluice.predict ÷ (c) the serial read → predict → write loop: "
          f"{demo[1].rows_per_s / demo[3].rows_per_s:.2f} (target ≥ 2)")  # fmt: skip
    if not args.skip_limit:
        print_limit(measure_limit(DATA_DIR, rows, repeats))
    if not (args.quick or args.skip_rss):
        rss_check(models["demo"], rows, reports[0].summary)
    print(f"\nTotal wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
