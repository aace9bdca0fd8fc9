"""Gradient-boosted trees: ``sluice predict`` on native XGBoost/LightGBM files vs their ONNX conversions.

One XGBoost and one LightGBM binary classifier predict the same Parquet files three ways:
``sluice predict`` on the native model file, ``sluice predict`` on its onnxmltools conversion,
and the library's own predict loop (read a file, ``predict_proba``, write a file). Prints rows/s
and the ratio to the library's loop, and checks the outputs against the library's. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb

DATA_DIR = Path(__file__).resolve().parent / ".data" / "gbm"
NUM_FEATURES = 16
FEATURES = [f"f{i}" for i in range(NUM_FEATURES)]  # XGBoost's own naming, which onnxmltools expects
TRAIN_ROWS = 20_000
SEED = 20260301


@dataclass(frozen=True)
class Way:
    library: str  # XGBoost or LightGBM
    method: str  # sluice native, sluice ONNX, library loop
    process_rows_per_s: float  # rows / wall time of the whole command (interpreter start included)
    engine_rows_per_s: float  # the engine's own figure (_summary.json), or the loop's rows / loop time
    note: str = ""


# -- inputs ------------------------------------------------------------------------------------


def _features(rng: np.random.Generator, rows: int) -> np.ndarray:
    return rng.normal(size=(rows, NUM_FEATURES)).astype(np.float32)


def _labels(x: np.ndarray) -> np.ndarray:
    score = x[:, 0] * x[:, 1] + np.sin(3 * x[:, 2]) - 0.5 * x[:, 3] ** 2 + x[:, 4:8].sum(axis=1) * 0.3
    return (score > np.median(score)).astype(np.int64)


def make_data(rows: int, files: int) -> Path:
    """``files`` Parquet files holding ``rows`` rows of ``id`` + f0..f15 (generated once, then reused)."""
    directory = DATA_DIR / f"rows-{rows}-files-{files}"
    if (directory / "_done").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for i, part in enumerate(np.array_split(np.arange(rows), files)):
        x = _features(rng, len(part))
        columns = {"id": pa.array(part.astype(np.int64)), **{f: pa.array(x[:, j]) for j, f in enumerate(FEATURES)}}
        pq.write_table(pa.table(columns), directory / f"part-{i:03d}.parquet")
    (directory / "_done").touch()
    return directory


def train_models(trees: int) -> dict[str, tuple[Any, Path, Path]]:
    """Both classifiers, trained on generated rows: (estimator, native file, ONNX file) per library."""
    from onnxmltools import convert_lightgbm, convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + 1)
    x = pd.DataFrame(_features(rng, TRAIN_ROWS), columns=FEATURES)
    y = _labels(x.to_numpy())
    types = [("input", FloatTensorType([None, NUM_FEATURES]))]
    xgb_clf = xgb.XGBClassifier(n_estimators=trees, max_depth=6, learning_rate=0.1).fit(x, y)
    xgb_clf.save_model(DATA_DIR / "model.json")
    (DATA_DIR / "xgb.onnx").write_bytes(convert_xgboost(xgb_clf, initial_types=types).SerializeToString())
    lgb_clf = lgb.LGBMClassifier(n_estimators=trees, num_leaves=63, learning_rate=0.1, verbose=-1).fit(x, y)
    lgb_clf.booster_.save_model(str(DATA_DIR / "model.txt"))
    onnx_lgb = convert_lightgbm(lgb_clf, initial_types=types, zipmap=False)
    (DATA_DIR / "lgb.onnx").write_bytes(onnx_lgb.SerializeToString())
    return {
        "XGBoost": (xgb_clf, DATA_DIR / "model.json", DATA_DIR / "xgb.onnx"),
        "LightGBM": (lgb_clf, DATA_DIR / "model.txt", DATA_DIR / "lgb.onnx"),
    }


# -- the three ways ------------------------------------------------------------------------------


def sluice_predict(
    model: Path, input_dir: Path, output: Path, features: bool, batch_size: str
) -> tuple[float, dict[str, Any]]:
    """``sluice predict`` as a user runs it, in a fresh process; returns its wall time and summary."""
    cmd = [sys.executable, "-m", "sluice", "predict", "-m", str(model), "-i", str(input_dir), "-o", str(output)]
    cmd += ["--key-column", "id", "--batch-size", batch_size, "--overwrite", "-q"]
    if features:  # an ONNX model does not name its features; the native files do
        cmd += ["--features", ",".join(FEATURES)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    start = time.perf_counter()
    # stderr kept back: ONNX Runtime warns on every batch that onnxmltools declared label's shape as [1]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return wall_s, dict(json.loads((output / "_summary.json").read_text()))


def library_loop(estimator: Any, input_dir: Path, output: Path) -> float:
    """Per file: pandas read, the estimator's ``predict_proba``, label = argmax, one Parquet write."""
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    start = time.perf_counter()
    for i, path in enumerate(sorted(input_dir.glob("*.parquet"))):
        frame = pd.read_parquet(path)
        proba = estimator.predict_proba(frame[FEATURES])
        table = pa.table(
            {
                "id": pa.array(frame["id"].to_numpy()),
                "label": pa.array(proba.argmax(axis=1).astype(np.int64)),
                "probabilities": pa.FixedSizeListArray.from_arrays(pa.array(proba.ravel()), proba.shape[1]),
            }
        )
        pq.write_table(table, output / f"part-{i:05d}.parquet")
    return time.perf_counter() - start


def _read(output: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pa.concat_tables(pq.read_table(p) for p in sorted(output.glob("part-*.parquet")))
    proba = np.array(table.column("probabilities").to_pylist())
    return table.column("label").to_numpy(), proba


def agreement(output: Path, reference: Path) -> str:
    """How an output agrees with the library loop's: exactly, or label mismatches and max |Δp|."""
    labels, proba = _read(output)
    ref_labels, ref_proba = _read(reference)
    if np.array_equal(labels, ref_labels) and np.array_equal(proba, ref_proba):
        return "outputs equal the library's exactly"
    mismatched = int((labels != ref_labels).sum())
    return f"{mismatched} labels differ, max |Δp| {np.abs(proba - ref_proba).max():.1e}"


def bench_library(
    library: str, models: tuple[Any, Path, Path], input_dir: Path, rows: int, batch_size: str
) -> list[Way]:
    estimator, native, onnx_file = models
    out = DATA_DIR / "out" / library
    loop_s = library_loop(estimator, input_dir, out / "loop")
    ways = [Way(library, "library loop", rows / loop_s, rows / loop_s, "predict_proba per file (in-process)")]
    for method, model, features in (("sluice native", native, False), ("sluice ONNX", onnx_file, True)):
        wall_s, summary = sluice_predict(model, input_dir, out / method.replace(" ", "-"), features, batch_size)
        note = f"{summary['workers']} workers, batch {summary['batch_size']}; " + agreement(
            out / method.replace(" ", "-"), out / "loop"
        )
        ways.append(Way(library, method, rows / wall_s, float(summary["rows_per_second"]), note))
    return ways


# -- report ------------------------------------------------------------------------------------


def print_report(ways: list[Way], rows: int, trees: int) -> None:
    print(f"\n{rows:,} rows × {NUM_FEATURES} float32 features, {trees} trees per model, {os.cpu_count()} cores")
    header = f"{'library':<9} {'way':<14} {'rows/s':>11} {'vs loop':>8} {'engine rows/s':>14} {'vs loop':>8}  note"
    print(header)
    print("-" * len(header))
    for way in ways:
        loop = next(w for w in ways if w.library == way.library and w.method == "library loop")
        print(
            f"{way.library:<9} {way.method:<14} {way.process_rows_per_s:>11,.0f} "
            f"{way.process_rows_per_s / loop.process_rows_per_s:>7.2f}x {way.engine_rows_per_s:>14,.0f} "
            f"{way.engine_rows_per_s / loop.engine_rows_per_s:>7.2f}x  {way.note}"
        )
    print(
        "\nrows/s: input rows per second of wall time (for sluice: the whole `sluice predict` process, Python "
        "start-up and model load included); engine rows/s: _summary.json's rows_per_second for sluice, the "
        "loop's own time for the library loop. One run; the machine is shared and noisy."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000, help="rows to predict (default 400,000)")
    parser.add_argument("--files", type=int, default=4, help="Parquet files they are split into (default 4)")
    parser.add_argument("--trees", type=int, default=100, help="boosting rounds per model (default 100)")
    parser.add_argument(
        "--batch-size",
        default="4096",
        help="sluice predict's --batch-size (default 4096; 'auto' tunes it first, and the tuning is in the wall time)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    input_dir = make_data(args.rows, args.files)
    models = train_models(args.trees)
    ways = [
        w for library, m in models.items() for w in bench_library(library, m, input_dir, args.rows, args.batch_size)
    ]
    print_report(ways, args.rows, args.trees)


if __name__ == "__main__":
    main()
