"""Backends: the same job locally, on Spark ``local[2]`` and on Ray (2 CPUs), plus two Spark idioms.

Same data and models as bench/batch_throughput.py (the demo logistic regression and the
32→256→256→2 MLP over ``id`` + 32 float32 features in 8 Parquet files, default 2M rows).
Parquet in → Parquet out for every way; rows/s is input rows per second of wall time once the
engine is up, and the engines' start-up is measured on its own. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from batch_throughput import DATA_DIR, FEATURES, demo_data, demo_model, mlp_model

import sluice
from sluice.backends.ray import RayEngine
from sluice.backends.spark import SparkEngine, start_session, stop_session

CORES = 2
UDF_BATCH_ROWS = 4096
ROW_UDF_SAMPLE = 100_000


@dataclass(frozen=True)
class Row:
    model: str
    way: str
    rows_per_s: float
    note: str = ""


RUNS = {"repeats": 3}  # runs per figure; main() sets it from --repeats


def timed(fn: Callable[[], Any]) -> float:
    """The median wall time of ``--repeats`` calls after one untimed warm-up call (JIT, worker
    processes, page cache); the machine is shared and noisy."""
    fn()
    times = []
    for _ in range(RUNS["repeats"]):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def out_dir(name: str) -> str:
    path = DATA_DIR / "backends-out" / name
    shutil.rmtree(path, ignore_errors=True)
    return str(path)


def sluice_way(model: Path, data: Path, backend: str, engine: Any = None) -> tuple[float, str]:
    summaries: list[sluice.RunSummary] = []

    def run() -> None:
        summaries.append(sluice.predict(
            str(model), str(data), out_dir(backend), backend=backend, engine=engine, key_column="id",
            features=FEATURES, overwrite=True, workers=CORES if backend == "local" else None,
        ))  # fmt: skip

    seconds = timed(run)
    return seconds, f"batch {summaries[-1].batch_size}, {summaries[-1].workers} workers"


def onnx_function(path: str) -> Callable[[], Callable[[Any], Any]]:
    """predict_batch_udf's make_predict_fn: an ONNX Runtime session per Python worker."""

    def make() -> Callable[[Any], Any]:
        import numpy as np
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def predict(x: Any) -> Any:
            return session.run(["probabilities"], {name: np.asarray(x, dtype=np.float32)})[0]

        return predict

    return make


def predict_batch_udf_way(spark: Any, model: Path, data: Path) -> float:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    udf = predict_batch_udf(
        onnx_function(str(model)), return_type=ArrayType(FloatType()), batch_size=UDF_BATCH_ROWS,
        input_tensor_shapes=[[len(FEATURES)]],
    )  # fmt: skip
    frame = spark.read.parquet(str(data))
    result = frame.select("id", udf(F.array(*FEATURES)).alias("probabilities"))
    return timed(lambda: result.write.mode("overwrite").parquet(out_dir("predict_batch_udf")))


_ROW_SESSIONS: dict[str, Any] = {}


def row_udf_way(spark: Any, model: Path, data: Path) -> float:
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    path = str(model)

    def one_row(*values: float) -> list[float]:
        import numpy as np
        import onnxruntime as ort

        session = _ROW_SESSIONS.get(path)
        if session is None:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            session = _ROW_SESSIONS[path] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        x = np.asarray([values], dtype=np.float32)
        return [float(v) for v in session.run(["probabilities"], {session.get_inputs()[0].name: x})[0][0]]

    udf = F.udf(one_row, ArrayType(FloatType()))
    frame = spark.read.parquet(str(data)).limit(ROW_UDF_SAMPLE)
    result = frame.select("id", udf(*FEATURES).alias("probabilities"))
    return timed(lambda: result.write.mode("overwrite").parquet(out_dir("row_udf")))


def bench(rows: int) -> tuple[list[Row], dict[str, float]]:
    data = demo_data(rows)
    models = {"demo": demo_model(), "mlp": mlp_model()}
    table: list[Row] = []
    for name, model in models.items():
        sluice.predict(str(model), str(data), out_dir("warm"), key_column="id", features=FEATURES, workers=CORES)
        seconds, setup = sluice_way(model, data, "local")  # the first call above tuned the batch size
        table.append(Row(name, "local (sluice)", rows / seconds, setup))
    starts: dict[str, float] = {}
    start = time.perf_counter()
    spark = start_session(f"local[{CORES}]")
    starts["spark"] = time.perf_counter() - start
    try:
        for name, model in models.items():
            seconds, setup = sluice_way(model, data, "spark", SparkEngine(session=spark))
            table.append(Row(name, "spark local[2] (sluice)", rows / seconds, setup))
            table.append(Row(name, "spark predict_batch_udf", rows / predict_batch_udf_way(spark, model, data)))
            sample = min(rows, ROW_UDF_SAMPLE)
            table.append(Row(name, "spark row-at-a-time UDF", sample / row_udf_way(spark, model, data),
                             f"{sample:,}-row sample"))  # fmt: skip
    finally:
        stop_session(spark)
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    start = time.perf_counter()
    ray.init(num_cpus=CORES, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    starts["ray"] = time.perf_counter() - start
    try:
        for name, model in models.items():
            seconds, setup = sluice_way(model, data, "ray", RayEngine())
            table.append(Row(name, "ray 2 CPUs (sluice)", rows / seconds, setup))
    finally:
        ray.shutdown()
    return table, starts


def print_table(table: list[Row], starts: dict[str, float], rows: int) -> None:
    local = {r.model: r.rows_per_s for r in table if r.way.startswith("local")}
    print(f"\n{rows:,} rows × {len(FEATURES)} float32 features, 8 Parquet files → Parquet, {CORES} cores\n")
    print("| model | way | rows/s | vs local | note |\n| --- | --- | ---: | ---: | --- |")
    for r in table:
        print(f"| {r.model} | {r.way} | {r.rows_per_s:,.0f} | {r.rows_per_s / local[r.model]:.2f} | {r.note} |")
    print("\nengine start-up (not in the rows/s above): " + ", ".join(f"{k} {v:.1f} s" for k, v in starts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows of input data (default 2,000,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure, median shown (default 3)")
    args = parser.parse_args()
    RUNS["repeats"] = max(1, args.repeats)
    started = time.perf_counter()
    table, starts = bench(args.rows)
    print_table(table, starts, args.rows)
    print(f"\nTotal wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
