"""The CPU-work limit of batch prediction with a compute-heavy MLP, next to ``sluice predict``.

Each stage of a Parquet → model → Parquet job is measured alone, in CPU seconds per row of this
process (``time.process_time``, the least of ``repeats`` measurements): reading the Parquet files
into the feature matrix, the model at its least CPU-hungry in-memory set-up (a sweep of batch
sizes and thread set-ups), and writing the output table. On a CPU-only machine the stages share
the cores, so no engine can beat ``cores / (sum of the three)`` rows/s; ``sluice predict`` is run
in a child process and compared with that limit, in rows/s and in CPU seconds per row. Used by
batch_throughput.py.
"""

from __future__ import annotations

import compileall
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq

import sluice
from sluice.bench.models import write_mlp_onnx
from sluice.demo import feature_names, make_demo_data

CORES = os.cpu_count() or 1
WIDTHS = (64, 512, 512, 16)
SEED = 20260102
FILES = 8
READ_ROWS = 1 << 16
WRITE_ROWS = 1 << 17  # one row group, as the engine writes them
SWEEP_ROWS = 1 << 16
SWEEP_BATCHES = (1024, 4096, 16384)
MIN_MEASURE_S = 1.0
US = 1e6


@dataclass(frozen=True)
class Stage:
    name: str
    cpu_s_per_row: float
    rows_per_s: float  # wall, for reference
    note: str = ""


@dataclass(frozen=True)
class SluiceRun:
    wall_rows_per_s: float  # the whole command, Python start and model load included
    engine_rows_per_s: float  # _summary.json rows_per_second
    cpu_s_per_row: float  # the whole command
    engine_cpu_s_per_row: float  # summary cpu_utilization × seconds × cores
    summary: dict[str, Any]


@dataclass(frozen=True)
class LimitReport:
    rows: int
    stages: list[Stage]
    sweep: dict[str, tuple[float, float]]  # set-up → (CPU s/row, wall rows/s)
    runs: list[SluiceRun]
    repeats: int

    @property
    def cpu_s_per_row(self) -> float:
        return sum(s.cpu_s_per_row for s in self.stages)

    @property
    def limit_rows_per_s(self) -> float:
        return CORES / self.cpu_s_per_row


def data(root: Path, rows: int) -> Path:
    directory = root / f"mlp64-rows-{rows}"
    make_demo_data(directory, rows=rows, files=FILES, features=WIDTHS[0])
    return directory


def model(root: Path) -> Path:
    return write_mlp_onnx(root / "mlp-64-512-512-16.onnx", WIDTHS, SEED)


def cpu_timed(work: Callable[[], int]) -> tuple[float, float, int]:
    """(CPU seconds of this process, wall seconds, rows) of one call of ``work``."""
    cpu, wall = time.process_time(), time.perf_counter()
    rows = work()
    return time.process_time() - cpu, time.perf_counter() - wall, rows


# -- the stages alone --------------------------------------------------------------------------


def best_stage(measure: Callable[[], Stage], repeats: int) -> Stage:
    return min((measure() for _ in range(repeats)), key=lambda s: s.cpu_s_per_row)


def read_stage(directory: Path) -> Stage:
    """Every file's ``id`` and features, decoded one thread per file, stacked into float32 matrices."""
    names = feature_names(WIDTHS[0])

    def work() -> int:
        rows = 0
        for path in sorted(directory.glob("*.parquet")):
            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=READ_ROWS, columns=["id", *names], use_threads=False):
                matrix = np.stack([batch.column(n).to_numpy() for n in names], axis=1)
                rows += matrix.shape[0]
        return rows

    cpu, wall, rows = cpu_timed(work)
    return Stage("read Parquet → feature matrix", cpu / rows, rows / wall, f"{FILES} files, {READ_ROWS:,}-row batches")


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def model_setup(path: Path, x: np.ndarray, batch_rows: int, callers: int) -> tuple[float, float]:
    """(CPU s/row, wall rows/s) of ``callers`` threads sharing one session of ``CORES // callers``
    intra-op threads, over in-memory batches for at least ``MIN_MEASURE_S`` after a warm-up."""
    sess = session(path, max(1, CORES // callers))
    batches = [x[i : i + batch_rows] for i in range(0, len(x), batch_rows)]
    for b in batches[:2]:
        sess.run(None, {"input": b})

    def one_pass(part: list[np.ndarray]) -> None:
        for b in part:
            sess.run(None, {"input": b})

    def work() -> int:
        rows, start = 0, time.perf_counter()
        while rows == 0 or time.perf_counter() - start < MIN_MEASURE_S:
            threads = [threading.Thread(target=one_pass, args=(batches[c::callers],)) for c in range(callers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rows += len(x)
        return rows

    cpu, wall, rows = cpu_timed(work)
    return cpu / rows, rows / wall


def least_cpu(measurements: list[tuple[float, float]]) -> tuple[float, float]:
    """The measurement with the least CPU per row: other load on the machine only ever adds."""
    return min(measurements, key=lambda m: m[0])


def model_stage(path: Path, x: np.ndarray, repeats: int) -> tuple[Stage, dict[str, tuple[float, float]]]:
    setups = {f"1 caller × {CORES} threads": 1, f"{CORES} callers × 1 thread": CORES}
    sweep = {
        f"batch {size}, {label}": least_cpu([model_setup(path, x, size, callers) for _ in range(repeats)])
        for size in SWEEP_BATCHES
        for label, callers in setups.items()
    }
    best = min(sweep, key=lambda k: sweep[k][0])
    cpu, rate = sweep[best]
    return Stage("model, in memory", cpu, rate, f"least CPU of the sweep: {best}"), sweep


def write_stage(path: Path, x: np.ndarray, rows: int, directory: Path) -> Stage:
    """The output table (``id`` and the model's 16 probabilities) written as the engine writes it."""
    probabilities = session(path, CORES).run(None, {"input": x})[0]
    reps = -(-rows // len(probabilities))
    values = np.ascontiguousarray(np.tile(probabilities, (reps, 1))[:rows]).reshape(-1)
    table = pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(values), WIDTHS[-1]),
        }
    )

    def work() -> int:
        per_file = -(-rows // FILES)
        for i in range(FILES):
            with pq.ParquetWriter(directory / f"part-{i:05d}.parquet", table.schema, use_dictionary=[]) as writer:
                writer.write_table(table.slice(i * per_file, per_file), row_group_size=WRITE_ROWS)
        return rows

    cpu, wall, _ = cpu_timed(work)
    return Stage("write output table", cpu / rows, rows / wall, f"{FILES} Parquet files, {WRITE_ROWS:,}-row groups")


# -- sluice predict ----------------------------------------------------------------------------


def sluice_predict(path: Path, input_dir: Path, output: Path, cache: Path) -> SluiceRun:
    """``sluice predict`` as a user types it, in a child process; its wall and CPU time per row."""
    cmd = [sys.executable, "-m", "sluice", "predict", "-m", str(path), "-i", str(input_dir), "-o", str(output),
           "--key-column", "id", "--overwrite", "-q"]  # fmt: skip
    env = {**os.environ, "SLUICE_CACHE_DIR": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = _summary(output)
    rows = summary["rows"] + summary["rows_failed"]
    engine_cpu = summary["cpu_utilization"] * summary["seconds"] * CORES
    return SluiceRun(rows / wall, float(summary["rows_per_second"]), cpu / rows, engine_cpu / rows, summary)


def _summary(output: Path) -> dict[str, Any]:
    for name in ("_summary.json", "summary.json", "_sluice/summary.json"):
        if (output / name).exists():
            return dict(json.loads((output / name).read_text()))
    raise FileNotFoundError(f"no run summary in {output}")


def measure(root: Path, rows: int, repeats: int) -> LimitReport:
    input_dir, path = data(root, rows), model(root)
    print(f"[mlp64] stages alone on {rows:,} rows …", flush=True)
    read = best_stage(lambda: read_stage(input_dir), repeats)
    x = pq.read_table(sorted(input_dir.glob("*.parquet"))[0], columns=feature_names(WIDTHS[0]))
    sample = np.stack([c.to_numpy() for c in x.columns], axis=1)[:SWEEP_ROWS]
    compute, sweep = model_stage(path, sample, repeats)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        write = best_stage(lambda: write_stage(path, sample, rows, Path(tmp)), repeats)
    print(f"[mlp64] sluice predict × {repeats} …", flush=True)
    # the child imports sluice from byte code, as from an installed wheel: an editable install
    # under PYTHONDONTWRITEBYTECODE=1 compiles every module it imports again in each run
    compileall.compile_dir(Path(sluice.__file__).parent, quiet=1)
    cache = root / "cache"
    runs = [sluice_predict(path, input_dir, root / "out" / "mlp64", cache) for _ in range(repeats)]
    return LimitReport(rows, [read, compute, write], sweep, runs, repeats)


def print_limit(report: LimitReport) -> None:
    print(f"\nCPU-work limit, MLP {'→'.join(map(str, WIDTHS))}, {report.rows:,} rows in {FILES} Parquet files, "
          f"{CORES} cores (CPU time of this process, least of {report.repeats})")  # fmt: skip
    print(f"{'stage alone':<32} {'CPU µs/row':>11} {'rows/s wall':>12}  note\n{'-' * 100}")
    for s in report.stages:
        print(f"{s.name:<32} {s.cpu_s_per_row * US:>11.2f} {s.rows_per_s:>12,.0f}  {s.note}")
    limit = report.limit_rows_per_s
    print(f"{'sum':<32} {report.cpu_s_per_row * US:>11.2f}   limit = {CORES} cores / sum = {limit:,.0f} rows/s")
    print("\n[mlp64] model sweep (CPU µs/row, wall rows/s):")
    for label, (cpu, rate) in report.sweep.items():
        print(f"    {label:<36} {cpu * US:>8.2f} {rate:>12,.0f}")
    print(f"\n{'sluice predict':<34} {'rows/s':>10} {'vs limit':>9} {'CPU µs/row':>11} {'stages/CPU':>11}")
    stages = report.cpu_s_per_row
    for i, run in enumerate(report.runs, 1):
        s = run.summary
        for label, rate, cpu in (
            (f"run {i}: whole command", run.wall_rows_per_s, run.cpu_s_per_row),
            (f"run {i}: engine (_summary.json)", run.engine_rows_per_s, run.engine_cpu_s_per_row),
        ):
            print(f"{label:<34} {rate:>10,.0f} {rate / limit:>9.2f} {cpu * US:>11.2f} {stages / cpu:>11.2f}")
        print(f"    batch {s['batch_size']} ({s['batch_size_source']}), workers {s['workers']}, "
              f"stage_busy_fraction {s['stage_busy_fraction']}, cpu_utilization {s['cpu_utilization']}")  # fmt: skip
    print("'stages/CPU' is the stages' CPU per row over sluice's own: 1.00 means no CPU spent beyond the stages.")
