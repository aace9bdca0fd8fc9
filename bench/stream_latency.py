"""End-to-end latency and throughput of `sluice stream`: Redis into Redis by rate and group size, and a
directory source side by side with Spark Structured Streaming.

Redis: a producer process appends entries (an ``id`` and 32 float features as fields) to a Redis
stream at a fixed rate; a stream in this process predicts them with the demo model or a
compute-heavy MLP and commits them to an output stream. Each cell runs the producer for
``--seconds`` and waits until every entry is committed. Latency is the stream's own figure: an
entry ID's time (arrival) to the commit of its group. redis-server is started on 127.0.0.1 on a
free port and stopped. A first, unreported 1 s cell at 1k/s takes the process's one-time costs
(lazy imports, the first calls of the runtime) out of the first reported cell.

Directory (``--directory``): a producer process lands a Parquet file (written under a hidden
name, then renamed) every ``--file-ms`` with the rate's share of records; the same records go
through `sluice stream` (directory source → directory sink) and then through Spark Structured
Streaming in local mode (file source → ``mapInArrow`` with the same model through Sluice's
``predict_batches`` → ``foreachBatch`` writing one Parquet file per micro-batch), one after the
other. Latency for both: a file's modification time to the commit of the records' group (for
Spark, the end of its ``foreachBatch`` write; the offset log's commit after it is not counted).

    .venv/bin/python bench/stream_latency.py                       # 1k/10k/50k per s × adaptive/1/16, ~2 min
    .venv/bin/python bench/stream_latency.py --quick               # 1k/10k per s, 2 s each
    .venv/bin/python bench/stream_latency.py --directory --rates 1000,10000 --seconds 8
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from sluice.bench.models import write_mlp_onnx
from sluice.demo import FEATURES, feature_names, make_demo_model
from sluice.stream import StreamRunner, StreamSpec

DATA = Path(__file__).resolve().parent / ".data"
TICK_S = 0.005


def produce(port: int, stream: str, rate: int, seconds: float, out: multiprocessing.Queue) -> None:
    """Append ``rate`` entries a second for ``seconds``, in one pipeline per 5 ms tick; report the count sent."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    rng = np.random.default_rng(0)
    rows = [{f"f{j}": repr(float(v)) for j, v in enumerate(x)} for x in rng.normal(size=(4096, FEATURES))]
    per_tick = rate * TICK_S
    sent, owed = 0, 0.0
    started_at = time.time()  # wall clock: the parent compares it with its own
    start = time.perf_counter()
    next_tick = start
    while (now := time.perf_counter()) - start < seconds:
        owed += per_tick
        batch = int(owed)
        owed -= batch
        pipe = client.pipeline(transaction=False)
        for _ in range(batch):
            pipe.xadd(stream, {"id": str(sent), **rows[sent % len(rows)]})
            sent += 1
        pipe.execute()
        next_tick += TICK_S
        if next_tick > now:
            time.sleep(next_tick - now)
    out.put((sent, time.perf_counter() - start, started_at))


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*args, "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def committed(port: int, stream: str) -> int:
    import redis

    value = redis.Redis(host="127.0.0.1", port=port).get(f"{stream}:sluice-progress")
    if value is None:
        return 0
    state = json.loads(value)
    return int(state["records"]) + int(state["records_failed"])


def run_cell(port: int, model: str, rate: int, group: str, seconds: float, name: str) -> dict[str, object]:
    """One rate and group setting: produce, stream, wait for the last commit; the stream's figures."""
    fixed = {} if group == "adaptive" else {"min_group": int(group), "max_group": int(group)}
    spec = StreamSpec.build(
        model=model,
        source=f"redis://127.0.0.1:{port}/in-{name}",
        sink=f"redis://127.0.0.1:{port}/out-{name}",
        key_column="id",
        features=feature_names(),
        batch_size=256,
        batch_delay_ms=2,
        poll_interval_ms=5,
        target_latency_ms=100,
        intra_op_threads=1,  # small batches: a second spinning ONNX thread only takes the producer's and Redis's core
        **fixed,
    )
    stop = threading.Event()
    result: dict[str, object] = {}
    runner = StreamRunner(spec, stop=stop)
    thread = threading.Thread(target=lambda: result.update(summary=runner.run()), daemon=True)
    thread.start()
    time.sleep(1.0)  # the model is loaded and the consumer group made before the clock starts
    queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    producer = multiprocessing.get_context("spawn").Process(
        target=produce, args=(port, f"in-{name}", rate, seconds, queue)
    )
    producer.start()
    sent, produce_s, began = queue.get(timeout=seconds + 60)
    producer.join()
    deadline = time.perf_counter() + 60
    while committed(port, f"out-{name}") < sent and time.perf_counter() < deadline:
        time.sleep(0.01)
    drained_s = time.time() - began
    stop.set()
    thread.join(timeout=30)
    summary = result["summary"]
    return {
        "sent": sent,
        "offered_per_s": sent / produce_s,
        "done_per_s": committed(port, f"out-{name}") / drained_s,
        "p50": summary.latency_ms["p50"],
        "p99": summary.latency_ms["p99"],
        "group": summary.group_size,
        "batch_ms": summary.batch_ms,
        "commit_ms": summary.commit_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--directory", action="store_true", help="directory source: sluice stream beside Spark")
    parser.add_argument("--file-ms", type=float, default=100.0, help="--directory: a file lands this often")
    parser.add_argument("--no-spark", action="store_true", help="--directory: sluice stream only")
    parser.add_argument("--rates", default="1000,10000,50000")
    parser.add_argument("--groups", default="adaptive,1,16", help="adaptive, or fixed micro-batches per group")
    parser.add_argument("--models", default="demo,mlp")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="1k and 10k per s, 2 s each")
    args = parser.parse_args()
    rates = [1000, 10000] if args.quick else [int(r) for r in args.rates.split(",")]
    seconds = 2.0 if args.quick else args.seconds
    repository = DATA / "models"
    make_demo_model(repository)
    paths = {
        "demo": str(sorted((repository / "demo").glob("*/model.onnx"))[-1]),
        "mlp": str(write_mlp_onnx(DATA / "stream-mlp-32-256-256-2.onnx", [FEATURES, 256, 256, 2], seed=0)),
    }
    if args.directory:
        from stream_spark import compare_directory

        compare_directory(paths, args.models.split(","), rates, seconds, args.file_ms, spark=not args.no_spark)
        return
    with tempfile.TemporaryDirectory() as scratch:
        proc, port = start_redis(Path(scratch))
        try:
            print(f"{'model':6} {'rate/s':>7} {'group':>9} {'sent':>7} {'offered/s':>10} {'done/s':>9} "
                  f"{'p50 ms':>8} {'p99 ms':>8} {'size':>5} {'batch ms':>9} {'commit ms':>10}")  # fmt: skip
            first = args.models.split(",")[0]
            run_cell(port, paths[first], 1000, "adaptive", 1.0, "warm-up")  # one-time costs, not reported
            cells = 0
            for model in args.models.split(","):
                for rate in rates:
                    for group in args.groups.split(","):
                        cells += 1  # a stream of its own per cell, even when a setting repeats
                        cell = run_cell(port, paths[model], rate, group, seconds, f"{cells}-{model}-{rate}-{group}")
                        print(
                            f"{model:6} {rate:>7} {group:>9} {cell['sent']:>7} {cell['offered_per_s']:>10,.0f} "
                            f"{cell['done_per_s']:>9,.0f} {cell['p50']:>8} {cell['p99']:>8} {cell['group']:>5} "
                            f"{cell['batch_ms']:>9} {cell['commit_ms']:>10}",
                            flush=True,
                        )
        finally:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
