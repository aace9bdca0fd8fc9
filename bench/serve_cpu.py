"""CPU per request of the server, robust to a busy machine: what wall-clock req/s cannot show.

Two drivers over the demo model, for each batching mode (``off``: max_batch_size 1, ``fixed``:
a 1 ms window, ``adaptive``: the default):

- ``http`` (default): ``sluice serve`` in its own process (uvicorn, uvloop, httptools, as users
  run it) under a closed loop of ``--concurrency`` clients from this process. The table gives
  the server's CPU µs per answered request (its main thread, i.e. the event loop, and every
  other thread), requests per batch, and the wall-clock req/s for reference only.
- ``asgi``: the ASGI app called in-process on a plain asyncio loop (no sockets), so the loop's
  own work can be counted: CPU µs per request, event-loop iterations and callbacks
  (handles run) per request, and requests per batch.

The script imports whichever ``sluice`` is on ``PYTHONPATH``, so one command measures two
trees in turn::

    PYTHONPATH=/abs/old/src python bench/serve_cpu.py --label old
    PYTHONPATH=src          python bench/serve_cpu.py --label new

CPU time counts what the server spent, not what it got; on a machine shared with other work,
req/s moves with the neighbours while CPU per request stays within a few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sluice.bench.loadgen import closed_loop
from sluice.bench.oip import infer_request, model_metadata
from sluice.demo import make_demo_model
from sluice.models.repository import ModelRepository

DATA_DIR = Path(__file__).resolve().parent / ".data"
WORK = DATA_DIR / "serve-cpu"
MODES = {"off": {"max_batch_size": 1}, "fixed": {"max_queue_delay_us": 1000}, "adaptive": {}}
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    label: str
    driver: str
    mode: str
    concurrency: int
    requests: int
    cpu_us: float  # per request, the whole server
    loop_cpu_us: float  # per request, the event loop's thread (http) or the process (asgi)
    per_batch: float  # requests per batch
    req_per_s: float
    iterations: float = 0.0  # asgi: event-loop iterations per request
    handles: float = 0.0  # asgi: callbacks run per request
    shed: int = 0  # answered 503 (batching off sheds past 16 queued rows)
    calls: dict[str, int] | None = None  # http: calls of the dispatcher's steps


def repository(mode: str) -> Path:
    """A repository holding the demo model with ``batching:`` set for ``mode``."""
    models = DATA_DIR / "models"
    make_demo_model(models)
    artifact = Path(ModelRepository(models).resolve("demo").location)
    repo = WORK / f"repo-{mode}"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "demo" / "1").mkdir(parents=True)
    shutil.copy2(artifact, repo / "demo" / "1" / "model.onnx")
    config = yaml.safe_load((artifact.parent.parent / "model.yaml").read_text()) or {}
    config.pop("labels", None)
    if MODES[mode]:
        config["batching"] = MODES[mode]
    (repo / "demo" / "model.yaml").write_text(yaml.safe_dump(config))
    return repo


# -- http: a real server process --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _thread_ticks(pid: int) -> dict[int, int]:
    ticks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        ticks[int(task.name)] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def _batches(url: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(int(float(line.split()[-1])) for line in text.splitlines() if line.startswith("sluice_batch_size_count"))


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


COUNTED = ("Dispatcher._sleep_until", "Dispatcher._execute", "Batcher.next_batch", "Dispatcher._chain")


def _counts(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/_counts", timeout=5) as response:
        counts: dict[str, int] = json.loads(response.read())
    return counts


def serve_counted(repo: Path, port: int) -> None:
    """``sluice serve`` with calls of the dispatcher's steps counted, answered on ``/_counts``."""
    from sluice.serve import batcher, dispatch, server

    counts = dict.fromkeys(COUNTED, 0)
    for qualified in COUNTED:
        owner_name, method = qualified.split(".")
        owner = getattr(dispatch if owner_name == "Dispatcher" else batcher, owner_name)
        setattr(owner, method, _counting(getattr(owner, method), qualified, counts))

    async def counts_app(scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps(counts).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    settings = server.ServeSettings(repository=repo, port=port, log_level="warning")
    server.run(settings, mounts={"/_counts": counts_app})


def _counting(function: Any, name: str, counts: dict[str, int]) -> Any:
    def counted(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return function(*args, **kwargs)

    return counted


def measure_http(label: str, mode: str, levels: list[int], duration_s: float) -> list[Row]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, __file__, "--serve-counted", str(repository(mode)), "--port", str(port)]
    proc = subprocess.Popen(cmd)
    rows = []
    try:
        _wait_ready(url, proc)
        request = infer_request(url, "demo", model_metadata(url, "demo"))
        asyncio.run(closed_loop(request, max(levels), 1.0))  # warm: the latency model, the caches
        for concurrency in levels:
            before, batches, counted = _thread_ticks(proc.pid), _batches(url), _counts(url)
            result = asyncio.run(closed_loop(request, concurrency, duration_s))
            after, batches = _thread_ticks(proc.pid), _batches(url) - batches
            counted = {k: v - counted[k] for k, v in _counts(url).items()}
            total = sum(after.values()) - sum(before.get(t, 0) for t in after)
            loop = after[proc.pid] - before[proc.pid]
            n = max(1, result.ok)
            rows.append(
                Row(label, "http", mode, concurrency, result.ok, total * TICK_S / n * 1e6,
                    loop * TICK_S / n * 1e6, n / max(1, batches), result.throughput_per_s,
                    shed=result.requests - result.ok, calls=counted)
            )  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


# -- asgi: the app in-process, the loop counted -----------------------------------------------


class CountingLoop(asyncio.SelectorEventLoop):
    """An asyncio loop that counts its iterations and the callbacks it runs."""

    iterations = 0
    handles = 0

    def _run_once(self) -> None:
        self.iterations += 1
        self.handles += len(self._ready)  # type: ignore[attr-defined]
        super()._run_once()  # type: ignore[misc]


async def _drive(app: Any, body: bytes, concurrency: int, duration_s: float) -> tuple[int, int]:
    scope = {
        "type": "http", "method": "POST", "path": "/v2/models/demo/infer", "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    done = refused = 0
    deadline = time.perf_counter() + duration_s

    async def client() -> None:
        nonlocal done, refused
        status: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        while time.perf_counter() < deadline:
            status.clear()

            await app(dict(scope), receive, send)
            if status == [200]:
                done += 1
            elif status == [503]:
                refused += 1
            else:
                raise RuntimeError(f"answered {status}")

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return done, refused


async def _lifespan(app: Any) -> tuple[asyncio.Queue[dict[str, str]], asyncio.Task[None]]:
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    task = asyncio.get_running_loop().create_task(app({"type": "lifespan"}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    await outbox.get()
    while not app.host.ready:
        await asyncio.sleep(0.05)
    return inbox, task


async def _asgi_levels(label: str, mode: str, levels: list[int], duration_s: float) -> list[Row]:
    from sluice.serve.server import ServeSettings, build_app

    app = build_app(ServeSettings(repository=repository(mode), log_level="warning"))
    inbox, lifespan = await _lifespan(app)
    served = app.host.get("demo", None)
    inputs = served.signature.inputs
    metadata = {"inputs": [{"name": s.name, "datatype": "FP32", "shape": list(s.shape)} for s in inputs]}
    request = infer_request("http://127.0.0.1:1", "demo", metadata)
    body = request.payload.split(b"\r\n\r\n", 1)[1]
    loop = asyncio.get_running_loop()
    assert isinstance(loop, CountingLoop)
    await _drive(app, body, max(levels), 1.0)
    rows = []
    for concurrency in levels:
        metrics = served.dispatcher.metrics
        batches, iterations, handles = metrics.batch_rows.count, loop.iterations, loop.handles
        cpu, wall = time.process_time(), time.perf_counter()
        n, shed = await _drive(app, body, concurrency, duration_s)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        per_batch = n / max(1, metrics.batch_rows.count - batches)
        rows.append(
            Row(label, "asgi", mode, concurrency, n, cpu / n * 1e6, cpu / n * 1e6, per_batch, n / wall,
                (loop.iterations - iterations) / n, (loop.handles - handles) / n, shed)
        )  # fmt: skip
    policy = served.dispatcher.batcher.policy
    latency, cpu = policy.latency, policy.cpu
    print(
        f"# {label} {mode}: latency a={latency.a_s * 1e6:.1f} µs c={latency.c_s_per_row * 1e6:.2f} µs/row, "
        f"cpu a={cpu.a_s * 1e6:.1f} c={cpu.c_s_per_row * 1e6:.2f}, overhead {policy.overhead_s * 1e6:.1f} µs"
    )
    await inbox.put({"type": "lifespan.shutdown"})
    await lifespan
    return rows


def measure_asgi(label: str, mode: str, levels: list[int], duration_s: float) -> list[Row]:
    loop = CountingLoop()
    try:
        return loop.run_until_complete(_asgi_levels(label, mode, levels, duration_s))
    finally:
        loop.close()


def print_rows(rows: list[Row]) -> None:
    print(
        "| tree | driver | mode | clients | requests | not 200 | CPU µs/req | loop µs/req | req/batch | "
        "loop iterations/req | callbacks/req | dispatcher sleeps/req | next_batch calls/req | req/s |"
    )
    print("|" + " --- |" * 14)
    for r in rows:
        calls = {k: v / max(1, r.requests) for k, v in (r.calls or {}).items()}
        sleeps, polls = calls.get("Dispatcher._sleep_until"), calls.get("Batcher.next_batch")
        print(
            f"| {r.label} | {r.driver} | {r.mode} | {r.concurrency} | {r.requests} | {r.shed} | {r.cpu_us:.1f} | "
            f"{r.loop_cpu_us:.1f} | {r.per_batch:.2f} | {_cell(r.iterations)} | {_cell(r.handles)} | "
            f"{_cell(sleeps)} | {_cell(polls)} | {r.req_per_s:,.0f} |"
        )


def _cell(value: float | None) -> str:
    return "–" if not value else f"{value:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--label", default="tree", help="name of the measured tree in the table")
    parser.add_argument("--driver", choices=("http", "asgi"), default="http")
    parser.add_argument("--modes", default="off,fixed,adaptive")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated closed-loop client counts")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per level")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--serve-counted", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_counted is not None:
        serve_counted(args.serve_counted, args.port)
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    measure = measure_http if args.driver == "http" else measure_asgi
    rows = [row for mode in args.modes.split(",") for row in measure(args.label, mode, levels, args.duration)]
    print_rows(rows)
    if args.json is not None:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"load generator CPU: {usage.ru_utime + usage.ru_stime:.1f} s")


if __name__ == "__main__":
    main()
