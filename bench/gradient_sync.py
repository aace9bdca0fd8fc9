"""Gradient synchronisation: ddp vs fp16 vs PowerSGD vs local SGD at 1, 2 and 4 processes.

The same tabular MLP (32 → 256 → 256 → 2) trains on the same deterministic Parquet data with the
same seed and global batch size under each strategy and world size (gloo, spawned on this
machine). Printed: payload bytes per step per rank (exact, from the run's metrics) beside the
analytic figure for ddp, median step time split into compute and exposed communication,
samples/s, final validation accuracy and PowerSGD's compression ratio; plotted: the curves of
each strategy at world size 2 and the bytes per step. See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sluice.train import Strategy, TrainConfig, TrainHistory, train
from sluice.train.curves import write_curves

DATA_DIR = Path(__file__).resolve().parent / ".data"
FEATURES = 32
HIDDEN = (256, 256)
FILES = 4
BATCH = 512
SEED = 7
WARMUP = 10  # powersgd_start_iter and localsgd_start_iter (the TrainConfig defaults)
STRATEGIES: tuple[Strategy, ...] = ("ddp", "fp16", "powersgd", "localsgd")
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class Run:
    strategy: Strategy
    world: int
    history: TrainHistory
    wall_s: float

    @property
    def bytes_per_step(self) -> float:
        """Mean over the run, per rank: every step's collectives plus the end-of-epoch syncs."""
        steps = sum(e.steps for e in self.history.epochs)
        return sum(e.grad_bytes for e in self.history.epochs) / steps if self.world > 1 else 0.0

    @property
    def steady_bytes(self) -> float:
        """Mean per step after the first ``WARMUP`` steps (PowerSGD compressing, local SGD local)."""
        later = [s.grad_bytes for s in self.history.steps if s.step > WARMUP]
        return float(np.mean(later)) if later and self.world > 1 else 0.0

    @property
    def counted_bytes(self) -> float:
        """What the metrics count per step, even at world size 1 (a 1-rank all-reduce sends nothing)."""
        return sum(e.grad_bytes for e in self.history.epochs) / sum(e.steps for e in self.history.epochs)

    def median_ms(self, name: str) -> float:
        return 1e3 * median(getattr(s, name) for s in self.history.steps)

    @property
    def samples_per_s(self) -> float:
        steps = self.history.steps
        return len(steps) * BATCH / sum(s.step_s for s in steps)


def make_data(rows: int) -> Path:
    """``rows`` rows of 32 float features and label = (x·w + 0.5·x0·x1 + noise > 0), kept between runs."""
    directory = DATA_DIR / f"train-{rows}"
    if directory.exists():
        return directory
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((rows, FEATURES)).astype(np.float32)
    w = rng.standard_normal(FEATURES).astype(np.float32) / np.sqrt(FEATURES)
    score = x @ w + 0.5 * x[:, 0] * x[:, 1] + 0.3 * rng.standard_normal(rows).astype(np.float32)
    columns = {f"f{i}": x[:, i] for i in range(FEATURES)} | {"label": (score > 0).astype(np.int64)}
    table = pa.table(columns)
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    step = -(-rows // FILES)
    for i in range(FILES):
        pq.write_table(table.slice(i * step, step), tmp / f"part-{i}.parquet")
    tmp.rename(directory)
    return directory


def run_one(data: Path, strategy: Strategy, world: int, epochs: int, checkpoints: Path) -> Run:
    config = TrainConfig(
        data=str(data),
        target="label",
        model_name="gradient-sync",
        nproc=world,
        strategy=strategy,
        epochs=epochs,
        global_batch_size=BATCH,
        hidden=list(HIDDEN),
        seed=SEED,
        powersgd_start_iter=WARMUP,
        localsgd_start_iter=WARMUP,
        backend="gloo",
        checkpoint_dir=str(checkpoints / f"{strategy}-{world}"),
    )
    print(f"[{strategy} × {world}] training {epochs} epoch(s) …", flush=True)
    started = time.perf_counter()
    result = train(config)
    return Run(strategy, world, result.history, time.perf_counter() - started)


def parameter_count() -> int:
    widths = (FEATURES, *HIDDEN, 2)
    return sum(a * b + b for a, b in itertools.pairwise(widths))


def print_table(runs: list[Run], rows: int, epochs: int) -> None:
    params = parameter_count()
    analytic = 4 * params
    steps = len(runs[0].history.steps)
    print(
        f"\nGradient sync, {rows:,} rows × {FEATURES} features (10% validation), MLP {FEATURES}→"
        f"{'→'.join(map(str, HIDDEN))}→2 = {params:,} parameters, global batch {BATCH}, Adam, seed {SEED}, "
        f"{epochs} epoch(s) = {steps} steps, gloo on {CORES} cores"
    )
    print(
        f"Analytic ddp payload: 4 B × {params:,} parameters = {analytic:,} B per step per rank sent into "
        f"all-reduce (a ring all-reduce puts about 2×(W-1)/W of that on the wire)."
    )
    header = (
        f"{'strategy':<9} {'W':>2} {'B/step mean':>12} {'B/step >10':>11} {'vs ddp':>7} {'step ms':>8} "
        f"{'compute':>8} {'exposed':>8} {'comm':>7} {'samples/s':>10} {'val acc':>8} {'ratio':>6} {'wall s':>7}"
    )
    print(f"{header}\n{'-' * len(header)}")
    for r in runs:
        ratio = r.history.epochs[-1].compression_ratio
        print(
            f"{r.strategy:<9} {r.world:>2} {r.bytes_per_step:>12,.0f} {r.steady_bytes:>11,.0f} "
            f"{r.steady_bytes / analytic:>7.3f} {r.median_ms('step_s'):>8.2f} {r.median_ms('compute_s'):>8.2f} "
            f"{r.median_ms('exposed_comm_s'):>8.2f} {r.median_ms('comm_s'):>7.2f} {r.samples_per_s:>10,.0f} "
            f"{r.history.epochs[-1].val_metric:>8.4f} {f'{ratio:.1f}' if ratio else '-':>6} {r.wall_s:>7.1f}"
        )
    solo = ", ".join(f"{r.counted_bytes:,.0f} B/step" for r in runs if r.world == 1) or "-"
    notes = (
        "Bytes are exact: the payload each rank put into gradient/parameter collectives, from the run's metrics.",
        f"  'B/step mean' includes the first {WARMUP} (exact all-reduce) steps and end-of-epoch syncs; "
        f"'B/step >{WARMUP}' and 'vs ddp' are the steps after those.",
        f"  World size 1 has no communication, so 0 B (the metrics count {solo}: DDP still calls its hook on "
        "a 1-rank group); only ddp runs there.",
        f"Times (per-step medians, ms) are only indicative: {CORES} cores, shared and noisy, and 4 processes "
        "oversubscribe them.",
        "  'exposed' = communication not hidden behind backward (local SGD's model averaging included); "
        "'compute' = step - exposed;",
        "  'comm' = time with any collective in flight. samples/s = all steps' rows / their summed step time. "
        "'ratio' = PowerSGD's elements before/after compression.",
    )
    print("\n" + "\n".join(notes))


def write_plot(runs: list[Run], path: Path) -> None:
    """The curves of each strategy at world size 2 (``write_curves``) above a bar chart of bytes/step."""
    curve_runs = {r.strategy: r.history for r in runs if r.world == 2}
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        curves_png = Path(tmp) / "curves.png"
        write_curves(curve_runs, curves_png, "accuracy")
        curves = plt.imread(curves_png)
    fig = plt.figure(figsize=(11, 11.5))
    top = fig.add_axes((0.0, 0.34, 1.0, 0.66))
    top.imshow(curves)
    top.set_axis_off()
    top.set_title("world size 2: training curves per strategy")
    bars = fig.add_axes((0.08, 0.05, 0.88, 0.24))
    labels = [f"{r.strategy}\nW={r.world}" for r in runs]
    x = np.arange(len(runs))
    bars.bar(x - 0.2, [r.bytes_per_step for r in runs], 0.4, label="mean over run")
    bars.bar(x + 0.2, [r.steady_bytes for r in runs], 0.4, label=f"after step {WARMUP}")
    bars.axhline(4 * parameter_count(), color="grey", linestyle="--", linewidth=1, label="analytic ddp")
    bars.set_xticks(x, labels)
    bars.set_ylabel("bytes / step / rank")
    bars.set_title("payload per step per rank (exact)")
    bars.legend()
    bars.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows of data (default 60,000; quick 20,000)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default 5; quick 1)")
    parser.add_argument("--quick", action="store_true", help="fewer rows and epochs, world sizes 1 and 2")
    parser.add_argument("--plot", type=Path, default=DATA_DIR / "gradient_sync.png", help="PNG to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    rows = args.rows or (20_000 if args.quick else 60_000)
    epochs = args.epochs or (1 if args.quick else 5)
    worlds = (1, 2) if args.quick else (1, 2, 4)
    data = make_data(rows)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="gradient-sync-") as checkpoints:
        for world in worlds:
            for strategy in STRATEGIES if world > 1 else ("ddp",):
                runs.append(run_one(data, strategy, world, epochs, Path(checkpoints)))
    print_table(runs, rows, epochs)
    write_plot(runs, args.plot)
    print(f"\nPlot: {args.plot}\nTotal wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
