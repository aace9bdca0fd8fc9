"""Does a shadow cost the caller anything? Latency and throughput of the primary with shadow traffic.

One ``sluice serve`` process (its own process, so the load generator does not share its GIL)
serves model ``ab`` with three Python versions that each run the same ONNX MLP (32 → 256 → 256
→ 2) in ONNX Runtime: version 1 is the primary, version 2 a healthy shadow, version 3 a shadow
that sleeps 50 ms per batch before answering. The routing is switched live between
configurations with :class:`sluice.serve.control.ControlClient` (as ``sluice routes set`` does):

* ``version in URL``   — ``/v2/models/ab/versions/1/infer``: routing bypassed (the baseline);
* ``routed, no shadow`` — ``weights {1: 100}``;
* ``shadow 20% healthy`` — ``shadow {2: 0.2}``;
* ``shadow 20% slow``  — ``shadow {3: 0.2}`` (50 ms per shadow batch).

Each configuration is measured at concurrency 1 (latency) and 16 (throughput), closed loop,
for ``--duration`` seconds, in ``--rounds`` interleaved rounds (each starting with a different
configuration, so drift on the shared machine does not favour one); the table shows the median over
rounds of req/s, p50 and p99 of the primary's 200 answers as the clients saw them, the answers
that were not 200 (503: shed by the primary's batcher), and how many shadow copies ran or were
dropped. Data go to bench/.data/ab-routing (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml

from sluice.bench.loadgen import HttpRequest, closed_loop
from sluice.bench.models import write_mlp_onnx
from sluice.serve.control import ControlClient

WORK = Path(__file__).resolve().parent / ".data" / "ab-routing"
TOKEN = "bench-token"
MLP_WIDTHS = (32, 256, 256, 2)
SEED = 20260101
CONFIGS = ("version in URL", "routed, no shadow", "shadow 20% healthy", "shadow 20% slow")
SHADOWS = {"routed, no shadow": {}, "shadow 20% healthy": {"2": 0.2}, "shadow 20% slow": {"3": 0.2}}

VERSION_CODE = """\
import time
from pathlib import Path

import onnxruntime as ort

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_session = ort.InferenceSession(str(Path(__file__).with_name("mlp.onnx")), _options, providers=["CPUExecutionProvider"])
SLEEP_S = {sleep_s}


def predict(x):
    if SLEEP_S and x.any():  # the warm-up sends zeros
        time.sleep(SLEEP_S)
    return {{"probabilities": _session.run(None, {{"input": x}})[0]}}
"""


def build_repository() -> Path:
    root = WORK / "repo"
    mlp = write_mlp_onnx(WORK / "mlp.onnx", MLP_WIDTHS, SEED)
    for version, sleep_s in ((1, 0.0), (2, 0.0), (3, 0.05)):
        directory = root / "ab" / str(version)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "mlp.onnx").write_bytes(mlp.read_bytes())
        (directory / "version_code.py").write_text(VERSION_CODE.format(sleep_s=sleep_s))
    config = {
        "callable": "version_code:predict",
        "concurrency": "threads",
        "inputs": [{"name": "input", "dtype": "float32", "shape": [-1, MLP_WIDTHS[0]]}],
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, MLP_WIDTHS[-1]]}],
        "versions": "all",
        "routing": {"weights": {"1": 100}},
    }
    (root / "ab" / "model.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "sluice", "serve", "--repository", str(root), "--port", str(port), "--no-grpc"]
    command += ["--auth-token", TOKEN, "--log-level", "warning"]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not become ready")
        time.sleep(0.2)


def request_for(url: str, config: str) -> HttpRequest:
    x = np.random.default_rng(SEED).normal(size=(1, MLP_WIDTHS[0])).astype(np.float32)
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    path = "/v2/models/ab/versions/1/infer" if config == "version in URL" else "/v2/models/ab/infer"
    return HttpRequest.post(url + path, body, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})


def shadow_counts(client: ControlClient) -> tuple[int, int]:
    shadows = client.experiment("ab")["shadows"].values()
    return sum(s["copies"] for s in shadows), sum(s["dropped"] for s in shadows)


def measure(client: ControlClient, url: str, config: str, concurrency: int, duration_s: float) -> dict[str, float]:
    client.set_routes("ab", weights={"1": 100}, shadow=SHADOWS.get(config, {}))
    copies0, dropped0 = shadow_counts(client)
    result = asyncio.run(closed_loop(request_for(url, config), concurrency, duration_s))
    time.sleep(0.3)  # let the last shadow copies finish before counting them
    copies, dropped = shadow_counts(client)
    latency = result.latency.percentiles_ms((50, 99))
    return {
        "rps": result.throughput_per_s,
        "p50": latency["p50"] or 0.0,
        "p99": latency["p99"] or 0.0,
        "copies": copies - copies0,
        "dropped": dropped - dropped0,
        "requests": result.requests,
        "failed": result.requests - result.ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are shown (default 3)")
    args = parser.parse_args()
    process, url = start_server(build_repository())
    client = ControlClient(url, token=TOKEN)
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        for concurrency in (1, 16):
            measure(client, url, "routed, no shadow", concurrency, 1.0)  # warm up
            for round_ in range(args.rounds):
                for config in CONFIGS[round_ % 4 :] + CONFIGS[: round_ % 4]:  # each round starts elsewhere
                    runs.setdefault((config, concurrency), []).append(
                        measure(client, url, config, concurrency, args.duration)
                    )
    finally:
        process.terminate()
        process.wait(30)
    print(f"ab model: ONNX MLP {'→'.join(map(str, MLP_WIDTHS))} in Python versions; 1-row JSON requests; ", end="")
    print(f"median of {args.rounds} rounds × {args.duration:g} s; shadow figures summed over the rounds")
    columns = "clients | req/s | p50 ms | p99 ms | requests | not 200 | shadow copies | shadow dropped"
    print(f"| {'configuration':<20} | {columns} |")
    print(f"| {'-' * 20} | ------: | ----: | -----: | -----: | -------: | ------: | ------------: | -------------: |")
    for (config, concurrency), results in runs.items():
        med = {k: statistics.median(r[k] for r in results) for k in ("rps", "p50", "p99")}
        total = {k: int(sum(r[k] for r in results)) for k in ("requests", "failed", "copies", "dropped")}
        print(
            f"| {config:<20} | {concurrency:>7} | {med['rps']:>5.0f} | {med['p50']:>6.2f} | {med['p99']:>6.2f} "
            f"| {total['requests']:>8} | {total['failed']:>7} | {total['copies']:>13} | {total['dropped']:>14} |"
        )


if __name__ == "__main__":
    main()
